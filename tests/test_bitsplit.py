"""Bit splitting: INT4 parts, ~INT8 reconstruction error, unbiased, and one int8 GEMM = two INT4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import quantizers as qz
from int4jax.kernels import int_gemm

RANGES = [qz.SYMMETRIC, qz.FULL]


@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("axes", [None, 0, 1])
def test_parts_are_int4_and_error_is_int8_level(qrange, axes):
  g = jax.random.normal(jax.random.key(0), (64, 48)) ** 3  # heavy-tailed, like gradients
  split = qz.bit_split(g, qrange, axes)
  for part in (split.hi, split.lo):
    assert part.dtype == jnp.int8
    assert qrange[0] <= int(part.min()) and int(part.max()) <= qrange[1]
  err = jnp.abs(split.dequantize() - g)
  # Round to nearest on a grid of step max|g| / V (V = 112 or 119): error <= step / 2, i.e.
  # 8-bit precision; a plain INT4 quantizer's step is max|g| / 7.
  assert bool(jnp.all(err <= split.scale_lo / 2 * (1 + 1e-6)))
  amax = qz.absmax_scale(g, 1.0, axes)
  assert bool(jnp.all(split.scale_lo <= amax / 110))


@pytest.mark.parametrize("qrange", RANGES)
def test_combined_operand_gemm_is_bit_identical_to_two_int4_gemms(qrange):
  g = jax.random.normal(jax.random.key(1), (128, 96))
  b = jax.random.randint(jax.random.key(2), (96, 80), qrange[0], qrange[1] + 1).astype(jnp.int8)
  split = qz.bit_split(g, qrange, 1, jax.random.key(3))
  contract = ((1,), (0,))
  two = (split.radix * int_gemm.int_gemm_xla(split.hi, b, contract)
         + int_gemm.int_gemm_xla(split.lo, b, contract))
  one = int_gemm.int_gemm_xla(split.combined(), b, contract)
  np.testing.assert_array_equal(one, two)
  assert int(jnp.abs(split.combined().astype(jnp.int32)).max()) <= qz.combined_max(qrange)


def test_stochastic_bit_split_is_unbiased():
  g = jax.random.normal(jax.random.key(4), (512,))
  n = 2000
  keys = jax.random.split(jax.random.key(5), n)
  deq = jax.vmap(lambda k: qz.bit_split(g, qz.SYMMETRIC, None, k).dequantize())(keys)
  step = float(qz.bit_split(g, qz.SYMMETRIC).scale_lo)
  assert float(jnp.max(jnp.abs(deq.mean(0) - g))) < 5 * step / (2 * np.sqrt(n))


def test_zero_and_nan_gradients():
  zero = qz.bit_split(jnp.zeros((4, 4)), qz.FULL, 1)
  np.testing.assert_array_equal(zero.dequantize(), 0)
  bad = qz.bit_split(jnp.ones((2, 4)).at[0, 0].set(jnp.nan), qz.FULL, 1)
  deq = bad.dequantize()
  assert bool(jnp.all(jnp.isnan(deq[0]))) and bool(jnp.all(jnp.isfinite(deq[1])))


@pytest.mark.parametrize("qrange", [(-7, 7), (-8, 7)])
@pytest.mark.parametrize("axes", [None, 0, 1])
@pytest.mark.parametrize("stochastic", [False, True])
def test_combined_split_is_the_abs_max_quantizer_with_v_levels(qrange, axes, stochastic):
  """R*hi + lo equals abs-max quantization to [-V, V] with the same key, bit for bit, so the
  fused path (and the fused quantizer kernel) can produce it in one pass."""
  g = jax.random.normal(jax.random.key(5), (33, 20)) * jnp.exp(
      jax.random.normal(jax.random.key(6), (1, 20)))
  key = jax.random.key(7) if stochastic else None
  split = qz.bit_split(g, qrange, axes, key)
  v_max = qz.bitsplit.combined_max(qrange)
  v, scale = qz.int4_quant.quantize_absmax(g, -v_max, v_max, axes, key)
  np.testing.assert_array_equal(split.combined(), v)
  np.testing.assert_array_equal(split.scale_lo, scale)
