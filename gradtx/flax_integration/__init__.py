"""What the optimizers read from a Flax model beyond its parameters: the
records of a forward pass (dense layers' inputs and output gradients for
K-FAC, attention logits for QK-clip)."""

from gradtx.flax_integration.model_records import DenseRecord, Records

__all__ = ["DenseRecord", "Records"]
