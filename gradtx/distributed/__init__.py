"""Optimizer state on device meshes: the shardings of a transform's state
for sharded parameters (``state_shardings``)."""

from gradtx.distributed.state_sharding import state_shardings

__all__ = ["state_shardings"]
