"""Bad input: clear errors, or documented behaviour that is never silent garbage."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import Int4Config, int4_linear
from tests.helpers import make_xw

KEY = jax.random.key(0)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.bool_])
@pytest.mark.parametrize("arg", ["x", "kernel"])
def test_integer_or_bool_inputs_raise_type_error_naming_the_argument(dtype, arg):
  x, w = make_xw(4, 32, 8)
  args = {"x": x, "kernel": w}
  args[arg] = args[arg].astype(dtype)
  with pytest.raises(TypeError, match=f"int4_linear: {arg} must be a floating-point"):
    int4_linear(args["x"], args["kernel"])


@pytest.mark.parametrize("shape", [(32,), (), (32, 4, 2)])
def test_kernel_must_be_rank_two(shape):
  with pytest.raises(ValueError, match="kernel must have rank 2"):
    int4_linear(jnp.ones((4, 32)), jnp.ones(shape))


def test_mismatched_shapes_and_bias():
  with pytest.raises(ValueError, match="last dim must equal"):
    int4_linear(jnp.ones((4, 31)), jnp.ones((32, 8)))
  with pytest.raises(ValueError, match="bias must have shape"):
    int4_linear(jnp.ones((4, 32)), jnp.ones((32, 8)), jnp.ones(7))


def test_missing_key_says_how_to_pass_one():
  x, w = make_xw(4, 32, 8)
  y = int4_linear(x, w)  # forward alone needs no key
  assert y.shape == (4, 8)
  with pytest.raises(ValueError, match=r"key=jax.random.key\(seed\).*rngs=\{'quant': key\}"):
    jax.grad(lambda w: jnp.sum(int4_linear(x, w)))(w)
  deterministic = Int4Config(stochastic_rounding=False)
  chex.assert_tree_all_finite(jax.grad(lambda w: jnp.sum(int4_linear(x, w, config=deterministic)))(w))
  with pytest.raises(ValueError, match="lss='bernoulli'"):
    jax.grad(lambda w: jnp.sum(int4_linear(
        x, w, config=deterministic.replace(lss="bernoulli"))))(w)


def test_bad_key_and_config_types():
  x, w = make_xw(4, 32, 8)
  with pytest.raises(TypeError, match="PRNG key"):
    int4_linear(x, w, key=0)
  with pytest.raises(TypeError, match="Int4Config"):
    int4_linear(x, w, config={"hadamard_block": 32})
  with pytest.raises(ValueError, match="power of two"):
    Int4Config(hadamard_block=24)
  with pytest.raises(ValueError, match="lss_budget"):
    Int4Config(lss_budget=0.0)
  with pytest.raises(ValueError, match="grad_mode"):
    Int4Config(grad_mode="fp8")
  with pytest.raises(TypeError):
    Int4Config(32)  # keyword-only
  with pytest.raises(ValueError, match="scales=\\(x_scale, kernel_scale\\)"):
    int4_linear(x, w, config=Int4Config.paper())
  with pytest.raises(ValueError, match="only used with scale_mode='lsq'"):
    int4_linear(x, w, scales=(1.0, 1.0))


@pytest.mark.parametrize("lss", ["bernoulli", "systematic"])
def test_sampling_blocks_must_be_positive_and_divide_the_tokens(lss):
  with pytest.raises(ValueError, match="lss_blocks must be an int >= 1"):
    Int4Config(lss=lss, lss_blocks=0)
  for bad in (2.0, True):
    with pytest.raises(TypeError, match="lss_blocks must be an int"):
      Int4Config(lss=lss, lss_blocks=bad)
  x, w = make_xw(6, 32, 8)
  config = Int4Config(lss=lss, lss_blocks=4)
  with pytest.raises(ValueError, match="set lss_blocks to a divisor of the token count"):
    jax.grad(lambda w: jnp.sum(int4_linear(x, w, key=jax.random.key(0), config=config)))(w)


@pytest.mark.parametrize("k_in", [1, 17, 137, 200])
def test_contraction_not_divisible_by_block_is_zero_padded(k_in):
  """Documented: `in` is zero-padded to a multiple of the block; the result is the same as
  quantizing the padded problem, whose product equals the unpadded one."""
  x, w = make_xw(16, k_in, 8, seed=k_in)
  y = int4_linear(x, w)
  x_pad = jnp.pad(x, ((0, 0), (0, -k_in % 32)))
  w_pad = jnp.pad(w, ((0, -k_in % 32), (0, 0)))
  np.testing.assert_array_equal(y, int4_linear(x_pad, w_pad))
  assert float(jnp.linalg.norm(y - x @ w) / jnp.linalg.norm(x @ w)) < 0.3
  dx, dw = jax.grad(lambda x, w: jnp.sum(int4_linear(x, w, key=KEY)), argnums=(0, 1))(x, w)
  assert dx.shape == x.shape and dw.shape == w.shape


@pytest.mark.parametrize("config", [Int4Config(), Int4Config(scale_mode="tensor"),
                                    Int4Config(lss="bernoulli"), Int4Config(lss="systematic")])
def test_all_zero_inputs_give_zeros_and_finite_grads(config):
  x, w = jnp.zeros((8, 64)), jnp.zeros((64, 16))
  np.testing.assert_array_equal(int4_linear(x, w), 0)
  grads = jax.grad(lambda x, w: jnp.sum(int4_linear(x, w, key=KEY, config=config) ** 2),
                   argnums=(0, 1))(x, w)
  chex.assert_tree_all_finite(grads)
  g = jax.grad(lambda w: jnp.sum(int4_linear(jnp.ones((8, 64)), w, key=KEY, config=config)))(w)
  chex.assert_tree_all_finite(g)  # zero kernel, non-zero x


def test_empty_batch():
  y = int4_linear(jnp.zeros((0, 64)), jnp.ones((64, 4)))
  assert y.shape == (0, 4)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("config", [Int4Config(), Int4Config(scale_mode="tensor"),
                                    Int4Config(lss="bernoulli"), Int4Config(lss="systematic"),
                                    Int4Config.paper()])
def test_nonfinite_values_propagate_as_nan(bad, config):
  x, w = make_xw(16, 64, 8)
  scales = (jnp.float32(0.5), jnp.float32(0.05)) if config.scale_mode == "lsq" else None
  run = lambda x, w: int4_linear(x, w, key=KEY, config=config, scales=scales)
  cot = jnp.ones((16, 8))
  # NaN/Inf in x: every output of that row is NaN (all outputs for per-tensor scales); dW is NaN.
  y = run(x.at[3, 5].set(bad), w)
  assert bool(jnp.all(jnp.isnan(y[3])))
  dw = jax.vjp(lambda w: run(x.at[3, 5].set(bad), w), w)[1](cot)[0]
  assert bool(jnp.all(jnp.isnan(dw)))
  # In the kernel: that output column is NaN; dX is NaN.
  y = run(x, w.at[5, 2].set(bad))
  assert bool(jnp.all(jnp.isnan(y[:, 2])))
  dx = jax.vjp(lambda x: run(x, w.at[5, 2].set(bad)), x)[1](cot)[0]
  assert bool(jnp.all(jnp.isnan(dx)))
  # In dY: that row of dX and the touched columns of dW are NaN.
  dx, dw = jax.vjp(run, x, w)[1](cot.at[4, 1].set(bad))
  assert bool(jnp.all(jnp.isnan(dx[4]))) and bool(jnp.all(jnp.isfinite(dx[:4])))
  assert bool(jnp.all(jnp.isnan(dw[:, 1])))


def test_contraction_longer_than_int32_can_hold_raises():
  from int4jax.linear import _check_length
  from int4jax.kernels.int_gemm import max_exact_contraction
  limit = max_exact_contraction(119, 8)
  _check_length(limit, 119, 8, "dW")  # the limit itself is fine
  with pytest.raises(ValueError, match="int32 accumulation could overflow"):
    _check_length(limit + 1, 119, 8, "dW")


@pytest.mark.parametrize("config", [Int4Config(), Int4Config(grad_mode="float"),
                                    Int4Config(lss="bernoulli")])
def test_a_second_derivative_raises_instead_of_being_wrong(config):
  x, w = make_xw(8, 32, 16)
  inner = lambda w: jnp.sum(int4_linear(x, w, key=KEY, config=config) ** 2)
  penalty = lambda w: jnp.sum(jax.grad(inner)(w) ** 2)  # a gradient penalty
  with pytest.raises(ValueError, match="second derivative"):
    jax.grad(penalty)(w)
  with pytest.raises(ValueError, match="second derivative"):
    jax.jit(jax.grad(penalty))(w)
  with pytest.raises((ValueError, TypeError)):  # forward mode: JAX's own custom_vjp error
    jax.hessian(inner)(w)
  chex.assert_tree_all_finite(jax.jit(jax.grad(inner))(w))  # first derivatives are unaffected


@pytest.mark.parametrize("field, value, want", [
    ("scale_levels", 2.5, "an int"), ("stochastic_rounding", "no", "a bool"),
    ("hadamard_block", True, "an int"), ("lss_budget", "0.5", "a number"),
    ("fuse_bitsplit", 1, "a bool"), ("scale_group", 16.0, "an int"),
    ("scale_clip", "3", "a number or None"), ("fsdp_axis", 0, "a str"),
    ("forward_bits", 4.0, "an int"), ("lss_blocks", False, "an int")])
def test_config_fields_of_the_wrong_type_raise_naming_the_field(field, value, want):
  with pytest.raises(TypeError, match=f"Int4Config.{field} must be {want}"):
    Int4Config(**{field: value})


def test_config_takes_numpy_integers_and_int_budgets():
  config = Int4Config(scale_group=np.int64(16), lss_budget=1)
  assert config.scale_group == 16 and config.lss_budget == 1


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # no float32 overflow in the norm
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("config", [Int4Config(), Int4Config(scale_mode="tensor"),
                                    Int4Config(scale_levels=1)])
def test_huge_finite_inputs_give_finite_outputs_where_float_does(config):
  from int4jax import int4_linear_reference
  x, w = make_xw(6, 64, 8)
  x = x * (3e36 / float(jnp.max(jnp.abs(x))))
  y, y_float = int4_linear(x, w, config=config), x @ w
  assert bool(jnp.all(jnp.isfinite(y_float)))
  assert bool(jnp.all(jnp.isfinite(y)))
  assert _rel(y, y_float) < 0.25
  assert _rel(y, int4_linear_reference(x, w, config=config)) < 1e-5


@pytest.mark.parametrize("config", [Int4Config(), Int4Config(scale_mode="tensor")])
def test_tiny_weights_are_not_flushed_to_zero(config):
  x, w = make_xw(6, 64, 8)
  w = w * (1e-36 / float(jnp.max(jnp.abs(w))))
  y, y_float = int4_linear(x, w, config=config), x @ w
  assert bool(jnp.all(jnp.isfinite(y))) and float(jnp.max(jnp.abs(y))) > 0
  assert _rel(y, y_float) < 0.6  # a coarser grid below ~1e-36 (README: extreme magnitudes)


def test_the_scaled_gemm_epilogue_applies_the_smaller_scale_first():
  """Huge row scales with tiny column scales (and the reverse): finite where the product is, the
  same bits from the XLA backend, the Pallas kernel and its reference, NaN scales propagate."""
  from int4jax.backends.xla import with_scales
  from int4jax.kernels import int_gemm, pallas_gemm
  keys = jax.random.split(KEY, 2)
  a = jax.random.randint(keys[0], (16, 64), -112, 113).astype(jnp.int8)
  b = jax.random.randint(keys[1], (64, 8), -112, 113).astype(jnp.int8)
  row = jnp.full((16,), 3e35, jnp.float32).at[3].set(jnp.nan).at[5].set(1e-30)
  col = jnp.full((8,), 1e-3, jnp.float32).at[2].set(1e30)
  xla = with_scales(int_gemm.int_gemm_xla)(a, b, ((1,), (0,)), row[:, None], col[None, :])
  ref = pallas_gemm.scaled_gemm_reference(a, b, row, col)
  kernel = pallas_gemm.scaled_gemm_pallas(a, b, row, col, interpret=True)
  np.testing.assert_array_equal(xla, ref)
  np.testing.assert_array_equal(kernel, ref)
  exact = (np.asarray(a, np.float64) @ np.asarray(b, np.float64)) * np.asarray(
      row, np.float64)[:, None] * np.asarray(col, np.float64)[None, :]
  finite = np.isfinite(exact) & (np.abs(exact) < np.finfo(np.float32).max)
  assert np.all(np.isfinite(np.asarray(ref))[finite])
  np.testing.assert_allclose(np.asarray(ref)[finite], exact[finite], rtol=1e-6)
  assert np.all(np.isnan(np.asarray(ref)[3]))


def test_the_forward_length_limit_names_in_features_not_the_batch():
  k = 171_201  # over the default limit (171,196) before padding
  with pytest.raises(ValueError, match="in_features") as err:
    int4_linear(jnp.ones((1, k)), jnp.ones((k, 1)))
  assert "split the batch" not in str(err.value)
  with pytest.raises(ValueError, match="in_features"):  # padded to 171,200: also over
    int4_linear(jnp.ones((1, 171_169)), jnp.ones((171_169, 1)))
  y = jax.jit(int4_linear)(jnp.ones((1, 171_168)), jnp.ones((171_168, 1)))  # the README's limit
  assert float(y[0, 0]) == pytest.approx(171_168, rel=1e-3)


def test_the_readme_states_the_limits_this_code_enforces():
  from pathlib import Path
  from int4jax.kernels.int_gemm import max_exact_contraction
  from int4jax.quantizers import bitsplit
  readme = Path(__file__).parent.parent.joinpath("README.md").read_text()
  config = Int4Config()
  a = 7 * config.scale_levels
  v = bitsplit.combined_max(config.qrange)
  multiple = config.contraction_multiple
  stated = {
      "in_features ≤": max_exact_contraction(a, a) // multiple * multiple,
      "the padded K ≤": max_exact_contraction(a, a),
      "(dW) ≤": max_exact_contraction(v, a),
      "(": max_exact_contraction(v, 7),  # the backward at L = 1
  }
  for text, value in stated.items():
    assert f"{text} {value:,}" in readme or f"{text}{value:,}" in readme, (text, value)
  assert v == 112
