"""How optimizer state is stored: block-wise 8-bit quantization
(``quantize``) and the state formats a transform's ``*_dtype`` argument
takes (``state_format``: ``Int8Blocks``, ``StochasticBfloat16``)."""

from gradtx.storage.quantize import (
    QuantizedArray,
    dequantize_blockwise,
    dynamic_code_map,
    quantize_blockwise,
    register_with_flax,
    stochastic_round,
)
from gradtx.storage.state_format import Int8Blocks, StochasticBfloat16

__all__ = [
    "Int8Blocks",
    "QuantizedArray",
    "StochasticBfloat16",
    "dequantize_blockwise",
    "dynamic_code_map",
    "quantize_blockwise",
    "register_with_flax",
    "stochastic_round",
]
