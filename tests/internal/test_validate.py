"""Unit tests of the shared argument validation in gradtx/_internal/validate.py."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import optimizers as go
from gradtx._internal import validate as _validate

NAN = float("nan")
INF = float("inf")


# --- is_static_zero ---------------------------------------------------------


@pytest.mark.parametrize(
    "value", [0, 0.0, -0.0, np.float32(0), np.int64(0), np.array(0.0)],
    ids=repr,
)
def test_is_static_zero_true(value):
  assert _validate.is_static_zero(value)


@pytest.mark.parametrize(
    "value",
    [1e-30, -1e-30, 1, NAN, jnp.asarray(0.0), np.zeros(1), "0", None, lambda c: 0],
    ids=[
        "tiny", "-tiny", "one", "nan", "jax_array", "1d_numpy", "str", "none",
        "callable",
    ],
)
def test_is_static_zero_false(value):
  # Arrays (what inject_hyperparams feeds back) are never "static".
  assert not _validate.is_static_zero(value)


def test_is_static_zero_of_a_tracer():
  seen = []

  @jax.jit
  def f(x):
    seen.append(_validate.is_static_zero(x))
    return x

  f(0.0)
  assert seen == [False]


# --- check_in_range ---------------------------------------------------------


def test_check_in_range_default_is_half_open():
  _validate.check_in_range("b1", 0.0, 0.0, 1.0)
  _validate.check_in_range("b1", 0.999, 0.0, 1.0)
  with pytest.raises(ValueError, match=r"^b1 must be in \[0, 1\), got 1\.0$"):
    _validate.check_in_range("b1", 1.0, 0.0, 1.0)
  with pytest.raises(ValueError, match=r"^b1 must be in \[0, 1\), got -0\.5$"):
    _validate.check_in_range("b1", -0.5, 0.0, 1.0)


def test_check_in_range_bound_flags():
  kwargs = dict(low_inclusive=False, high_inclusive=True)
  _validate.check_in_range("p", 1.0, 0.0, 1.0, **kwargs)
  with pytest.raises(ValueError, match=r"p must be in \(0, 1\], got 0"):
    _validate.check_in_range("p", 0, 0.0, 1.0, **kwargs)
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    _validate.check_in_range("p", 1.5, 0.0, 1.0, **kwargs)


@pytest.mark.parametrize("value", [NAN, np.float32(NAN), np.array(NAN)], ids=repr)
def test_check_in_range_rejects_nan(value):
  with pytest.raises(ValueError, match="x must be in"):
    _validate.check_in_range("x", value, -INF, INF, high_inclusive=True)


@pytest.mark.parametrize(
    "value", [np.float32(1.5), np.int64(2), np.array(1.5), True], ids=repr
)
def test_check_in_range_checks_numpy_scalars_and_bools(value):
  with pytest.raises(ValueError, match="x must be (in|a number, got True)"):
    _validate.check_in_range("x", value, 0.0, 1.0)


@pytest.mark.parametrize("value", [True, False, np.bool_(True)], ids=repr)
def test_a_bool_is_no_number_even_inside_the_range(value):
  """eps=True passed as 1.0 (and False as 0): refused wherever a number is."""
  with pytest.raises(ValueError, match="x must be a number, got"):
    _validate.check_in_range("x", value, 0.0, INF, high_inclusive=True)


@pytest.mark.parametrize(
    "value", [jnp.asarray(1.5), np.array([1.5])], ids=["jax_array", "1d_numpy"])
def test_check_in_range_leaves_arrays_alone(value):
  _validate.check_in_range("x", value, 0.0, 1.0)


def test_check_in_range_refuses_a_callable_and_check_decay_allows_a_documented_schedule():
  with pytest.raises(ValueError, match="^x must be a number, got the callable"):
    _validate.check_in_range("x", lambda count: 0.5, 0.0, 1.0)
  _validate.check_decay("b3", lambda count: 0.5, schedule=True)
  with pytest.raises(ValueError, match="^b1 must be a number"):
    _validate.check_decay("b1", lambda count: 0.5)


def test_check_in_range_leaves_tracers_alone():
  @jax.jit
  def f(b1):
    _validate.check_in_range("b1", b1, 0.0, 1.0)
    _validate.check_decay("b1", b1)
    _validate.check_non_negative("eps", b1)
    _validate.check_scalar_or_schedule("learning_rate", b1)
    return b1 * 2

  assert float(f(1.5)) == 3.0
  assert float(f(-1.0)) == -2.0


# --- check_non_negative / check_decay ---------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 1e-30, 3], ids=repr)
def test_check_non_negative_accepts(value):
  _validate.check_non_negative("eps", value)
  _validate.check_non_negative("eps", value, infinite=True)


@pytest.mark.parametrize("value", [-1e-30, -1, NAN, -INF, INF], ids=repr)
def test_check_non_negative_rejects(value):
  """inf too (an eps or a damping of inf froze or NaN'd every update), unless
  the argument is a bound that may be absent (``infinite=True``)."""
  with pytest.raises(ValueError, match=r"^eps must be in \[0, inf\), got "):
    _validate.check_non_negative("eps", value)
  if value != INF:
    with pytest.raises(ValueError, match=r"^eps must be in \[0, inf\], got "):
      _validate.check_non_negative("eps", value, infinite=True)
  else:
    _validate.check_non_negative("eps", value, infinite=True)


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999999, np.float32(0.9)], ids=repr)
def test_check_decay_accepts(value):
  _validate.check_decay("b2", value)


@pytest.mark.parametrize("value", [1.0, 1, -0.1, 2.0, NAN, INF], ids=repr)
def test_check_decay_rejects(value):
  with pytest.raises(ValueError, match=r"^b2 must be in \[0, 1\), got "):
    _validate.check_decay("b2", value)


# --- check_scalar_or_schedule -----------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        1e-3,
        7,
        np.float32(0.1),
        np.array(0.1),
        jnp.asarray(0.1),
        optax.constant_schedule(0.1),
        lambda count: 0.1,
    ],
    ids=[
        "zero", "float", "int", "np_scalar", "np_0d", "jax_array", "schedule",
        "lambda",
    ],
)
def test_check_scalar_or_schedule_accepts(value):
  _validate.check_scalar_or_schedule("learning_rate", value)


@pytest.mark.parametrize("value", [-1e-3, NAN, np.array(-0.1), float("inf")], ids=repr)
def test_check_scalar_or_schedule_rejects_negative_nan_and_infinite_numbers(value):
  with pytest.raises(ValueError, match=r"^learning_rate must be in \[0, inf\)"):
    _validate.check_scalar_or_schedule("learning_rate", value)


@pytest.mark.parametrize(
    "value,type_name",
    [("0.1", "str"), (None, "NoneType"), ([0.1], "list"), ({"lr": 0.1}, "dict")],
    ids=["str", "none", "list", "dict"],
)
def test_check_scalar_or_schedule_rejects_non_numbers(value, type_name):
  with pytest.raises(ValueError) as error:
    _validate.check_scalar_or_schedule("learning_rate", value)
  message = str(error.value)
  assert message.startswith("learning_rate must be a non-negative number or a schedule")
  assert repr(value) in message and type_name in message


def test_warnings_point_at_the_users_line_however_deep_the_library_calls():
  """They reported a line inside gradtx (the argument-checking decorator, a
  routing helper) or optax's chain, depending on how the optimizer was built."""
  params = {"stack": jnp.ones((5, 6, 4)), "h": {"w": jnp.zeros((8, 8))}}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tx = optax.chain(go.muon(0.02))
    state = tx.init(params)
    jax.jit(tx.update)(params, state, params)
    go.muonh(0.02).init(params)
  kinds = {w.category.__name__ for w in caught}
  assert {"AmbiguousMatrixViewWarning", "UserWarning"} <= kinds, kinds
  assert {w.filename for w in caught} == {__file__}
