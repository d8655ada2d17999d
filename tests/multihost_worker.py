"""One process of the multi-host test (tests/test_distributed.py), or its 1-process reference.

  python tests/multihost_worker.py OUT PROCESS_ID NUM_PROCESSES PORT [stacks]

Each process brings its local CPU devices (XLA_FLAGS sets how many) into one
global mesh of all processes' devices through ``jax.distributed.initialize``
(gloo CPU collectives on 127.0.0.1), places the parameters FSDP-style, runs
five jitted steps of each optimizer and, on process 0, writes the full final
parameters of each to OUT (an .npz). With NUM_PROCESSES = 1 it is the
single-process run on all local devices. With ``stacks``: PSGD Kron alone,
fitting every step, on a scanned stack split below its layer axis and two
same-shape matrices (its triangular solve vmapped over their entries).
"""

import os
import sys

if os.environ.get("GRADTX_TEST_CPUS"):  # pinned before jax sizes its thread pool
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(os.environ["GRADTX_TEST_CPUS"])])

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradtx import optimizers as go
from gradtx import transforms as gt

OPTIMIZERS = {
    "adamw": lambda: go.adamw(1e-2),
    "muon": lambda: go.muon(1e-2, adam_learning_rate=1e-2),
    "shampoo": lambda: go.shampoo(1e-2, precondition_every=2, block_size=16, damping=1e-4),
    "soap": lambda: go.soap(1e-2, precondition_every=2),
    "adamw_8bit": lambda: go.adamw_8bit(1e-2),
}
SHAPES = {"a": (32, 48), "b": (32, 48), "c": (64, 32), "bias": (32,), "big": (128, 64)}
STACKS_OPTIMIZERS = {
    "psgd_kron": lambda: go.psgd_kron(1e-2, precond_update_probability=1.0,
                                      matrix_view=gt.stacked_matrix_view()),
}
STACKS_SHAPES = {"layers": (2, 64, 64), "a": (64, 64), "b": (64, 64)}


def main(out, process_id, num_processes, port, case=""):
  optimizers, shapes = ((STACKS_OPTIMIZERS, STACKS_SHAPES) if case == "stacks"
                        else (OPTIMIZERS, SHAPES))
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
  mesh = jax.make_mesh((jax.device_count(),), ("d",))
  rng = np.random.default_rng(0)
  host = {k: 0.1 * rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  targets = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  # A stack (layers first) is split below its layer axis.
  shardings = {k: NamedSharding(mesh, P(None, "d", None) if len(s) == 3
                                else P("d", *[None] * (len(s) - 1)))
               for k, s in shapes.items()}

  def put(tree):
    return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda i, v=v: v[i])
            for k, v in tree.items()}

  results = {}
  with jax.set_mesh(mesh):
    params0, target = put(host), put(targets)
    for name, make in optimizers.items():
      tx = make()
      state = jax.jit(tx.init, out_shardings=gt.state_shardings(tx, params0))(params0)

      @jax.jit
      def step(params, state, target, tx=tx):
        grads = jax.grad(lambda p: sum(
            jnp.sum(jnp.sin(p[k] - target[k]) ** 2) for k in p))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

      params = params0
      for _ in range(5):
        params, state = step(params, state, target)
      for k, v in multihost_utils.process_allgather(params, tiled=True).items():
        results[f"{name}/{k}"] = np.asarray(v)
  if process_id == 0:
    np.savez(out, **results)
  if num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1], *(int(a) for a in sys.argv[2:5]), *sys.argv[5:])
