"""Integer GEMMs: bit-exact against numpy int64; the int32 overflow limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax.kernels import int_gemm

IMPLS = [int_gemm.int_gemm_xla, int_gemm.int_gemm_reference]
SHAPES = [(1, 1, 1), (1, 137, 3), (137, 64, 1), (33, 100, 70), (128, 256, 96)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_bit_exact_vs_numpy_int64(impl, m, k, n):
  ka, kb = jax.random.split(jax.random.key(m * k + n))
  a = jax.random.randint(ka, (m, k), -128, 128).astype(jnp.int8)
  b = jax.random.randint(kb, (k, n), -8, 8).astype(jnp.int8)
  want = np.asarray(a, np.int64) @ np.asarray(b, np.int64)
  out = impl(a, b, ((1,), (0,)))
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out, np.int64), want)
  out_t = impl(a.T, b, ((0,), (0,)))
  np.testing.assert_array_equal(np.asarray(out_t, np.int64), want)


def test_empty_operands_give_zeros():
  """The dW layout (lhs contracting dim 0) with no tokens, and with no output rows."""
  for a, b in [(jnp.zeros((0, 3), jnp.int8), jnp.zeros((0, 4), jnp.int8)),
               (jnp.zeros((5, 0), jnp.int8), jnp.zeros((5, 4), jnp.int8))]:
    out = int_gemm.int_gemm_xla(a, b, ((0,), (0,)))
    assert out.shape == (a.shape[1], 4) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out, 0)


def test_extreme_values_accumulate_exactly():
  k = 4096
  a = jnp.full((2, k), -128, jnp.int8)
  b = jnp.full((k, 2), -8, jnp.int8)
  np.testing.assert_array_equal(int_gemm.int_gemm_xla(a, b, ((1,), (0,))), 128 * 8 * k)


def test_overflow_limit_is_the_largest_safe_length():
  limit = int_gemm.max_exact_contraction(119, 8)
  assert limit == 2_255_760
  assert limit * 119 * 8 <= 2**31 - 1 < (limit + 1) * 119 * 8
  assert int_gemm.max_exact_contraction(8, 8) == 33_554_431


def test_rejects_non_int8():
  with pytest.raises(TypeError, match="int8"):
    int_gemm.int_gemm_xla(jnp.zeros((2, 2)), jnp.zeros((2, 2), jnp.int8), ((1,), (0,)))
