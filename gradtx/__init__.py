"""gradtx: composable, pure-function gradient transformations for JAX.

>>> import gradtx
>>> from gradtx import transforms as gt, optimizers as go

``gradtx.transforms`` holds the building blocks, ``gradtx.optimizers`` the
optimizers chained from them, ``gradtx.contrib`` experimental recipes tuned on
one benchmark (not defaults); ``gradtx._internal`` is shared by them and not
part of the public API.
"""

__version__ = "0.2.0"

from gradtx import contrib, optimizers, transforms

__all__ = ["contrib", "optimizers", "transforms", "__version__"]
