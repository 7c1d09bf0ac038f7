"""INT4 quantize: RTN error <= s/2, range respected, SR unbiased, edge values, LSQ gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import quantizers as qz

RANGES = [qz.SYMMETRIC, qz.FULL]


@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("axes", [None, 0, 1])
def test_rtn_error_at_most_half_step_and_in_range(qrange, axes):
  qmin, qmax = qrange
  x = jax.random.normal(jax.random.key(0), (37, 64)) * jnp.linspace(0.1, 10, 64)[None, :]
  q, s = qz.quantize_absmax(x, qmin, qmax, axes)
  assert q.dtype == jnp.int8
  assert int(q.min()) >= qmin and int(q.max()) <= qmax
  err = jnp.abs(qz.dequantize(q, s) - x)
  assert bool(jnp.all(err <= s / 2 * (1 + 1e-6))), float(jnp.max(err / s))


@pytest.mark.parametrize("qrange", RANGES)
def test_stochastic_rounding_is_unbiased(qrange):
  qmin, qmax = qrange
  x = jax.random.uniform(jax.random.key(1), (256,), minval=-1, maxval=1)
  scale = qz.absmax_scale(x, qmax)
  n = 4000
  keys = jax.random.split(jax.random.key(2), n)
  deq = jax.vmap(lambda k: qz.dequantize(qz.quantize(x, scale, qmin, qmax, k), scale))(keys)
  mean = deq.mean(0)
  # Each draw is x rounded down or up by < s: per-element std <= s/2, so the mean of n draws
  # has std <= s / (2 sqrt(n)). Allow 5 standard deviations.
  bound = 5 * float(scale) / (2 * np.sqrt(n))
  assert float(jnp.max(jnp.abs(mean - x))) < bound
  rtn = qz.dequantize(qz.quantize(x, scale, qmin, qmax), scale)
  assert float(jnp.max(jnp.abs(rtn - x))) > 10 * bound  # the test can tell biased rounding


def test_stochastic_rounding_uses_the_key():
  x = jnp.linspace(-1, 1, 512)
  s = qz.absmax_scale(x, 7)
  a = qz.quantize(x, s, -7, 7, jax.random.key(0))
  b = qz.quantize(x, s, -7, 7, jax.random.key(0))
  c = qz.quantize(x, s, -7, 7, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert bool(jnp.any(a != c))


def test_all_zero_gives_zeros_and_unit_scale():
  q, s = qz.quantize_absmax(jnp.zeros((4, 8)), -7, 7, 1)
  np.testing.assert_array_equal(q, 0)
  np.testing.assert_array_equal(s, 1.0)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_nonfinite_group_gets_nan_scale_only_there(bad):
  x = jnp.ones((3, 8)).at[1, 2].set(bad)
  q, s = qz.quantize_absmax(x, -7, 7, 1)
  assert bool(jnp.isnan(s[1, 0])) and bool(jnp.all(jnp.isfinite(s[jnp.array([0, 2])])))
  assert bool(jnp.all(jnp.isnan(qz.dequantize(q, s)[1])))
  _, s_tensor = qz.quantize_absmax(x, -7, 7, None)
  assert bool(jnp.isnan(s_tensor))


def test_lsq_gradients_match_the_lsq_formula():
  qmin, qmax = -8, 7
  x = jax.random.normal(jax.random.key(3), (16, 32)) * 2
  s = jnp.float32(0.3)
  cot = jax.random.normal(jax.random.key(4), x.shape)
  dx, ds = jax.grad(lambda x, s: jnp.sum(qz.lsq_fake_quant(x, s, qmin, qmax) * cot),
                    argnums=(0, 1))(x, s)
  v = np.asarray(x / s, np.float64)
  inside = (v >= qmin) & (v <= qmax)
  np.testing.assert_allclose(dx, np.where(inside, cot, 0), atol=1e-6)
  dq = np.where(inside, np.round(v) - v, np.where(v < qmin, qmin, qmax))
  want = np.sum(np.asarray(cot) * dq) / np.sqrt(x.size * qmax)
  np.testing.assert_allclose(ds, want, rtol=1e-4)
  assert 0 < (inside == 0).sum() < x.size  # both branches exercised


def test_lsq_init_scale_is_paper_formula():
  x = jnp.array([[1.0, -3.0], [0.0, 4.0]])
  np.testing.assert_allclose(qz.lsq_init_scale(x, 7), 2 * 2.0 / np.sqrt(7) + 1e-10, rtol=1e-6)
