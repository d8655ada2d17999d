"""K-FAC's and Shampoo's Kronecker approximations of one dense layer, side by side.

A tanh MLP 6 → 8 → 3 (no biases) is held fixed and shown ``steps`` batches.
For its first layer's kernel W (6 × 8, 48 entries) the comparison builds:

* the empirical Fisher block F = Σ_t w_t Σ_n g_tn g_tnᵀ of the per-row
  gradients g_tn = vec(a_tn δ_tnᵀ), which K-FAC approximates by A ⊗ G
  (A = mean aaᵀ, G = Σ δδᵀ, with the same weights w_t over the batches: the
  bias-corrected EMA of ``kfac_precondition``; its factors come from the
  layer's inputs and output gradients);
* the gradient outer-product sum H = Σ_t ḡ_t ḡ_tᵀ of the batch gradients,
  which Shampoo approximates by (L ⊗ R)^{1/2}, L = Σ G_t G_tᵀ, R = Σ G_tᵀ G_t
  (its factors come from the weight gradient alone).

It reports each approximation's relative Frobenius error to its own target
(after the best scalar factor), the error of the other method's form against
the same target, and the cosine between each method's preconditioned last
gradient (gradtx's ``kfac_precondition`` and ``kronecker_precondition``) and
the exact (F + λI)⁻¹ ḡ or (H + εI)^{-1/2} ḡ, and its own Kronecker form's,
(A ⊗ G + λI)⁻¹ ḡ (K-FAC splits λ between the factors, so not exactly) or
(L^{1/4} ⊗ R^{1/4})⁻¹ ḡ (exactly Shampoo's update).

    python -m benchmarks.kfac_vs_shampoo                 # --seed, --steps, --batch
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import transforms as gt

SIZES = (6, 8, 3)


def _layer_data(seed, steps, batch):
  rng = np.random.default_rng(seed)
  w0 = rng.normal(size=SIZES[:2]) / np.sqrt(SIZES[0])
  w1 = rng.normal(size=SIZES[1:]) / np.sqrt(SIZES[1])
  data = []
  for _ in range(steps):
    x = rng.normal(size=(batch, SIZES[0]))
    y = np.tanh(x @ rng.normal(size=(SIZES[0], SIZES[2])))

    def loss(w, tap, x=x, y=y):
      return jnp.mean(jnp.sum((jnp.tanh(x @ w + tap) @ w1 - y) ** 2, -1))

    grad, delta = jax.grad(loss, (0, 1))(jnp.asarray(w0), jnp.zeros((batch, SIZES[1])))
    data.append((x, np.asarray(delta), np.asarray(grad)))
  return w0, data


def _best_scaled_error(target, approx):
  c = np.sum(target * approx) / np.sum(approx * approx)
  return float(np.linalg.norm(target - c * approx) / np.linalg.norm(target))


def _psd_power(m, p, ridge=0.0):
  w, v = np.linalg.eigh(m)
  return (v * np.maximum(w + ridge, 0) ** p) @ v.T


def _cosine(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def compare(seed=0, steps=20, batch=64, damping=1e-3, eps=1e-8, decay=0.9):
  """The comparison's numbers, as a dict (see the module docstring)."""
  with jax.enable_x64(True):
    w0, data = _layer_data(seed, steps, batch)
    weights = decay ** np.arange(steps - 1, -1, -1) * (1 - decay) / (1 - decay**steps)
    per_row = [np.einsum("ni,no->nio", x, d).reshape(len(x), -1) for x, d, _ in data]
    fisher = sum(w * g.T @ g for w, g in zip(weights, per_row))
    a = sum(w * x.T @ x / len(x) for w, (x, _, _) in zip(weights, data))
    g_factor = sum(w * d.T @ d for w, (_, d, _) in zip(weights, data))
    kfac_form = np.kron(a, g_factor)  # vec() is row-major: W[i, o] -> i*8 + o
    batch_grads = [g for _, _, g in data]
    h = sum(np.outer(g.ravel(), g.ravel()) for g in batch_grads)
    left = sum(g @ g.T for g in batch_grads)
    right = sum(g.T @ g for g in batch_grads)
    shampoo_form = np.kron(_psd_power(left, 0.5), _psd_power(right, 0.5))

    # Each method's own preconditioned last gradient, from gradtx.
    kfac = gt.kfac_precondition(damping=damping, precondition_b2=decay)
    shampoo = gt.kronecker_precondition(precondition_b2=1.0, damping=eps, block_size=None)
    params = {"layer": {"kernel": jnp.asarray(w0)}}
    k_state, s_state = kfac.init(params), shampoo.init(params)
    for x, d, g in data:
      records = gt.Records({"layer": gt.DenseRecord(jnp.asarray(x), jnp.asarray(d))}, {})
      grads = {"layer": {"kernel": jnp.asarray(g)}}
      k_dir, k_state = kfac.update(grads, k_state, records=records)
      s_dir, s_state = shampoo.update(grads, s_state)
    k_dir, s_dir = k_dir["layer"]["kernel"], s_dir["layer"]["kernel"]
    last = batch_grads[-1].ravel()
    exact_kfac = np.linalg.solve(fisher + damping * np.eye(len(last)), last)
    exact_shampoo = _psd_power(h, -0.5, eps) @ last
    kfac_form_direction = np.linalg.solve(kfac_form + damping * np.eye(len(last)), last)
    shampoo_form_direction = np.kron(_psd_power(left, -0.25, eps),
                                     _psd_power(right, -0.25, eps)) @ last
  return {
      "kfac_error_vs_fisher": _best_scaled_error(fisher, kfac_form),
      "shampoo_error_vs_fisher": _best_scaled_error(fisher, shampoo_form),
      "shampoo_error_vs_gradient_sum": _best_scaled_error(h, shampoo_form),
      "kfac_error_vs_gradient_sum": _best_scaled_error(h, kfac_form),
      "kfac_cosine_to_exact": _cosine(k_dir, exact_kfac),
      "shampoo_cosine_to_exact": _cosine(s_dir, exact_shampoo),
      "kfac_cosine_to_its_kronecker_form": _cosine(k_dir, kfac_form_direction),
      "shampoo_cosine_to_its_kronecker_form": _cosine(s_dir, shampoo_form_direction),
      "kfac_vs_shampoo_direction_cosine": _cosine(k_dir, s_dir),
      "gradient_cosine_kfac": _cosine(k_dir, last),
      "gradient_cosine_shampoo": _cosine(s_dir, last),
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=20, help="batches shown to the layer")
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args(argv)
  result = compare(seed=args.seed, steps=args.steps, batch=args.batch)
  for key, value in result.items():
    print(f"{key:34s} {value:.4f}")
  return result


if __name__ == "__main__":
  main()
