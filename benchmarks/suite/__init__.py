"""The workload suite of issue 25: optimizers raced on models nobody tuned them on.

Eight workloads from six families, each on data that ships with Python or a
package (no download), each a module with a ``workload(steps=..., sizes...)``
returning a ``Workload`` (``workload.py``):

=============  ===================  ==================================================
name           family               model and data
=============  ===================  ==================================================
stdlib_lm      transformer          ``examples/char_lm.py``'s model, stdlib source
docs_lm        transformer          ``nnx.MultiHeadAttention`` blocks, ``pydoc_data``
linen_lm       linen transformer    Linen, automatic names, numpy's docstrings
digits_cnn     cnn                  NNX CNN, scikit-learn ``load_digits``
digits_vit     vit                  NNX ViT (2x2 patches), ``load_digits``
tabular_mlp    mlp                  NNX MLP, scikit-learn ``load_breast_cancer``
scan_lm        stacked transformer  ``nnx.vmap``-built, ``nnx.scan``-run blocks
moe_lm         mixture of experts   top-2 of 4 experts in (E, d, f) arrays
=============  ===================  ==================================================

``train.py`` trains one (workload, optimizer, lr factor, schedule, seed);
``scoring.py`` turns runs into steps to tuned AdamW's target, performance
profiles and tables; ``run.py`` is the command line (``python -m
benchmarks.suite.run``); ``step_time.py`` times every contender's training
step side by side in one process and turns a summary's steps into wall-clock.
"""

from benchmarks.suite import (
    digits_cnn,
    digits_vit,
    docs_lm,
    linen_lm,
    moe_lm,
    scan_lm,
    stdlib_lm,
    tabular_mlp,
)

# name -> workload(steps=..., sizes...) -> Workload
WORKLOADS = {
    "stdlib_lm": stdlib_lm.workload,
    "docs_lm": docs_lm.workload,
    "linen_lm": linen_lm.workload,
    "digits_cnn": digits_cnn.workload,
    "digits_vit": digits_vit.workload,
    "tabular_mlp": tabular_mlp.workload,
    "scan_lm": scan_lm.workload,
    "moe_lm": moe_lm.workload,
}
