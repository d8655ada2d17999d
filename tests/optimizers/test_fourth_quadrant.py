"""The fourth quadrant against transcriptions of their reference code or equations.

NorMuon and AdaMuon: their authors' PyTorch code (tests/oracles/
transcriptions.py), in the (out, in) layout, against gradtx's flax (in, out)
layout; SOAP-then-orthogonalize: the reference SOAP with Keller Jordan's
Newton–Schulz applied to its direction; V-Muon: its equations in numpy.
Whole 20-step trajectories of a least-squares problem in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from tests.oracles import transcriptions
from tests.support import helpers

STEPS = 20


def _problem(shape, seed=0):
  rng = np.random.default_rng(seed)
  fan_in, fan_out = shape
  a = rng.standard_normal((16, fan_in))
  b = rng.standard_normal((16, fan_out))
  w0 = rng.standard_normal((fan_in, fan_out)) * 0.3
  return w0, lambda w, t=0: a.T @ (a @ w - b)


def _gradtx_trajectory(tx, w0, gradient):
  with jax.enable_x64(True):
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    trajectory = []
    for t in range(STEPS):
      grads = {"w": jnp.asarray(gradient(np.asarray(params["w"]), t))}
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      trajectory.append(np.asarray(params["w"]))
  return trajectory


def _torch_layout(reference, w0, gradient, **kwargs):
  """A reference written for W_torch = Wᵀ, run on our problem, back in flax layout."""
  out = reference(w0.T, lambda wt: gradient(wt.T).T, steps=STEPS, **kwargs)
  return [w.T for w in out]


SHAPES = pytest.mark.parametrize("shape", [(6, 10), (12, 5)], ids=["wide", "tall"])


@SHAPES
def test_normuon_matches_the_reference_code(shape):
  w0, gradient = _problem(shape)
  ours = _gradtx_trajectory(go.normuon(0.05, weight_decay=0.1), w0, gradient)
  theirs = _torch_layout(transcriptions.normuon_reference, w0, gradient, lr=0.05,
                         weight_decay=0.1)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@SHAPES
def test_adamuon_matches_the_reference_code(shape):
  w0, gradient = _problem(shape)
  ours = _gradtx_trajectory(go.adamuon(0.01), w0, gradient)
  theirs = _torch_layout(transcriptions.adamuon_reference, w0, gradient, lr=0.01)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@SHAPES
def test_adamuon_with_the_papers_sign_matches_its_algorithm(shape):
  """arXiv 2507.11005 v2/v3, Algorithm 1: Newton–Schulz of sign(M_t); the
  default (the reference code) takes M_t itself, a different trajectory."""
  w0, gradient = _problem(shape)
  ours = _gradtx_trajectory(go.adamuon(0.01, sign_momentum=True), w0, gradient)
  theirs = _torch_layout(transcriptions.adamuon_reference, w0, gradient, lr=0.01, sign=True)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  code = _gradtx_trajectory(go.adamuon(0.01), w0, gradient)
  assert not np.allclose(code[-1], ours[-1], rtol=1e-3)


@SHAPES
def test_adamuon_can_take_the_later_reference_codes_rule(shape):
  """The repository's later gpt2/models/optimizers/adamuon.py: sign(M_t), v
  decayed by the momentum's β, no bias correction."""
  w0, gradient = _problem(shape)
  ours = _gradtx_trajectory(
      go.adamuon(0.01, sign_momentum=True, b2=0.95, debias=False), w0, gradient)
  theirs = _torch_layout(transcriptions.adamuon_reference, w0, gradient, lr=0.01, later=True)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  # The bias correction is a common factor the renormalization takes out but
  # where ε sits: 1e-8-sized, yet beyond the tolerance of the match above.
  debiased = _gradtx_trajectory(go.adamuon(0.01, sign_momentum=True, b2=0.95), w0, gradient)
  assert not all(np.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(debiased, theirs))


@SHAPES
@pytest.mark.parametrize("name", ["normuon", "adamuon"])
def test_gram_newton_schulz_follows_the_reference_code(name, shape):
  """``method="gram"`` iterates on the Gram matrix of the smaller side: the
  same msign polynomial, so the reference code's trajectory up to round-off."""
  w0, gradient = _problem(shape)
  factory, reference = {
      "normuon": (go.normuon, transcriptions.normuon_reference),
      "adamuon": (go.adamuon, transcriptions.adamuon_reference)}[name]
  ours = _gradtx_trajectory(factory(0.01, method="gram"), w0, gradient)
  theirs = _torch_layout(reference, w0, gradient, lr=0.01)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 6), (4, 12)], ids=["square", "one-sided"])
def test_soap_muon_is_the_reference_soap_direction_orthogonalized(shape):
  """As tests/optimizers/test_soap.py: a square matrix, and one whose 12
  columns exceed max_precondition_dim = 8, keep every statistic full rank, so
  the eigenbases are unique up to signs. The gradient is noisy: with a
  deterministic one the first step (zero) leaves it unchanged, the second
  rotates it into its own eigenbasis, exactly diagonal but for round-off,
  and Adam's sign-like first step on those ~1e-16 entries, amplified by
  Newton–Schulz, makes the two runs drift apart at 1e-7."""
  w0, exact = _problem(shape)
  noise = np.random.default_rng(1).standard_normal((STEPS, *shape))
  gradient = lambda w, t: exact(w) + noise[t]
  hyper = dict(precondition_every=3, max_precondition_dim=8)
  ours = _gradtx_trajectory(go.soap_muon(0.02, **hyper), w0, gradient)
  jordan = max(1.0, shape[1] / shape[0]) ** 0.5
  theirs = transcriptions.soap_reference(
      {"w": w0}, lambda p, t: {"w": gradient(p["w"], t)}, STEPS, lr=0.02, decay="adamw",
      then=lambda u: jordan * transcriptions.newton_schulz_reference(u), **hyper)
  for a, b in zip(ours, theirs[1:]):
    np.testing.assert_allclose(a, b["w"], rtol=1e-9, atol=1e-12)


@SHAPES
def test_vmuon_matches_its_equations(shape):
  w0, gradient = _problem(shape)
  ours = _gradtx_trajectory(go.vmuon(0.02), w0, gradient)
  theirs = transcriptions.vmuon_reference(w0, gradient, steps=STEPS, lr=0.02)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("factory", [go.normuon, go.adamuon, go.soap_muon, go.vmuon],
                         ids=lambda f: f.__name__)
def test_vectors_and_embeddings_get_adamw(factory):
  """The routing is Muon's: the same AdamW updates on the non-matrix leaves."""
  params = {"embed": jnp.ones((7, 4)), "w": jnp.linspace(-1, 1, 24).reshape(4, 6),
            "b": jnp.linspace(0, 1, 6)}
  grads = jax.tree.map(lambda p: jnp.cos(2 * p + 1), params)
  adamw = go.adamw(0.01, weight_decay=0.0)
  expected, _ = adamw.update(grads, adamw.init(params), params)
  tx = factory(0.01, weight_decay=0.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  for key in ("embed", "b"):
    np.testing.assert_allclose(updates[key], expected[key], rtol=1e-6)
  assert not np.allclose(updates["w"], expected["w"], rtol=1e-3)


@pytest.mark.parametrize("factory", [go.normuon, go.adamuon, go.soap_muon, go.vmuon],
                         ids=lambda f: f.__name__)
def test_zero_and_rank_deficient_gradients_give_finite_steps(factory):
  params = {"w": jnp.ones((6, 8))}
  rank_one = jnp.outer(jnp.arange(6.0), jnp.ones(8))
  tx = factory(0.01)
  out = helpers.run_steps(tx, params, [{"w": jnp.zeros((6, 8))}, {"w": rank_one}] * 3)
  assert helpers.all_finite(out)


def test_bad_arguments_are_refused_by_name():
  with pytest.raises(ValueError, match="b2"):
    go.normuon(0.02, b2=1.0)
  with pytest.raises(ValueError, match="beta"):
    go.adamuon(0.02, beta=-0.1)
  with pytest.raises(ValueError, match="eps"):
    go.vmuon(0.02, eps=-1.0)
  with pytest.raises(ValueError, match="scale"):
    go.soap_muon(0.02, scale="huge")


@pytest.mark.parametrize("factory", [go.normuon, go.adamuon, go.soap_muon, go.vmuon],
                         ids=lambda f: f.__name__)
def test_cautious_weight_decay_reaches_the_matrix_side(factory):
  """Three float64 steps: the matrix leaf's direction d, read off the plain
  run's step −η(d + λp), stepped by the record's cautious rule
  (``transcriptions.nanogpt_cautious_step``) gives the cautious run's step; the
  AdamW leaf keeps plain decay."""
  lr, wd = 0.05, 3.0
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    params = {"w": jnp.asarray(rng.normal(size=(6, 8))), "b": jnp.asarray(rng.normal(size=8))}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
             for _ in range(3)]
    route = dict(is_muon_param=lambda path, leaf: leaf.ndim == 2)
    plain = factory(lr, weight_decay=wd, **route)
    cautious = factory(lr, weight_decay=wd, cautious_weight_decay=True, **route)
    s_plain, s_cautious = plain.init(params), cautious.init(params)
    disagreements = 0  # (SOAP's first step only builds its basis: d = 0)
    for g in grads:
      u_plain, s_plain = plain.update(g, s_plain, params)
      u_cautious, s_cautious = cautious.update(g, s_cautious, params)
      p = np.asarray(params["w"])
      direction = -np.asarray(u_plain["w"]) / lr - wd * p
      expected = transcriptions.nanogpt_cautious_step(p, direction, lr, wd) - p
      np.testing.assert_allclose(u_cautious["w"], expected, rtol=1e-9, atol=1e-12)
      np.testing.assert_array_equal(u_cautious["b"], u_plain["b"])
      disagreements += int(np.sum(direction * p < 0))
      params = optax.apply_updates(params, u_plain)
  assert disagreements > 0
