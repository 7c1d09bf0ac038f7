"""Hadamard matrices: orthogonal, symmetric, self-inverse; block transform = dense block-diag."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import quantizers as qz
from int4jax.reference import dense_block_hadamard


@pytest.mark.parametrize("n", [1, 2, 4, 32, 256])
def test_orthogonal_symmetric_self_inverse(n):
  h = np.asarray(qz.hadamard_matrix(n), np.float64)
  np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-6)
  np.testing.assert_array_equal(h, h.T)
  np.testing.assert_allclose(h @ h, np.eye(n), atol=1e-6)
  np.testing.assert_allclose(np.abs(h), 1 / np.sqrt(n), rtol=1e-6)


@pytest.mark.parametrize("n", [0, 3, 6, 100, -4])
def test_rejects_non_power_of_two(n):
  with pytest.raises(ValueError, match="power of two"):
    qz.hadamard_matrix(n)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_block_hadamard_matches_dense_block_diagonal(axis):
  x = jax.random.normal(jax.random.key(0), (64, 96))
  block = 32
  out = qz.block_hadamard(x, block, axis)
  h = dense_block_hadamard(x.shape[axis], block)
  want = x @ h if axis % 2 == 1 else h @ x
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_allclose(qz.block_hadamard(out, block, axis), x, atol=1e-5)


def test_block_hadamard_preserves_products():
  x = jax.random.normal(jax.random.key(1), (8, 64))
  w = jax.random.normal(jax.random.key(2), (64, 5))
  y = qz.block_hadamard(x, 16, 1) @ qz.block_hadamard(w, 16, 0)
  np.testing.assert_allclose(y, x @ w, atol=1e-4)


def test_block_hadamard_needs_divisible_dim_and_pad_fixes_it():
  x = jnp.ones((3, 137))
  with pytest.raises(ValueError, match="multiple of block_size"):
    qz.block_hadamard(x, 32)
  padded = qz.pad_to_block(x, 32)
  assert padded.shape == (3, 160)
  np.testing.assert_array_equal(padded[:, 137:], 0)


def test_hadamard_spreads_an_outlier():
  x = jnp.zeros((1, 32)).at[0, 5].set(100.0)
  out = qz.block_hadamard(x, 32)
  assert float(jnp.max(jnp.abs(out))) == pytest.approx(100 / np.sqrt(32), rel=1e-5)
