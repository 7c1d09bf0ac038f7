"""Block-diagonal Hadamard transforms (the "H" of the Hadamard quantizer).

H_b is the normalized Sylvester Hadamard matrix of size b (a power of two): orthogonal and
symmetric, so H_b @ H_b = I. Multiplying both GEMM operands by the same block-diagonal H along
the contraction dim leaves the product unchanged while spreading outliers across each block.

`block_hadamard` computes it as a fast Walsh-Hadamard transform: log2(b) butterfly stages of
adds and subtracts, then one multiply by 1/sqrt(b). Every output is the same sequence of
elementwise float operations whatever the array's shape, sharding or CPU, so a sharded step
gives the same bits as one device (a dense matmul's summation order depends on how XLA tiles
it for the shape and the machine: tests/test_shard_map.py failed on an AVX-512 Xeon with the
matmul form), and it does log2(b) additions per element instead of b multiply-adds.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def is_power_of_two(n: int) -> bool:
  return isinstance(n, (int, np.integer)) and n >= 1 and (n & (n - 1)) == 0


@functools.lru_cache(maxsize=None)
def _hadamard_numpy(n: int) -> np.ndarray:
  h = np.ones((1, 1), dtype=np.float64)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h / np.sqrt(n)


def hadamard_matrix(n: int, dtype=jnp.float32) -> jax.Array:
  """The n x n normalized Sylvester Hadamard matrix; n must be a power of two."""
  if not is_power_of_two(n):
    raise ValueError(f"hadamard_matrix: n must be a power of two >= 1, got {n!r}")
  return jnp.asarray(_hadamard_numpy(int(n)), dtype=dtype)


def block_hadamard(x: jax.Array, block_size: int, axis: int = -1) -> jax.Array:
  """Applies BlockDiag(H_b, ..., H_b) to `x` along `axis` (computed in float32).

  x.shape[axis] must be a multiple of `block_size`; `int4_linear` pads the contraction dim
  with zeros first when it is not (see `pad_to_block`). The transform is its own inverse.
  """
  if not is_power_of_two(block_size):
    raise ValueError(f"block_hadamard: block_size must be a power of two, got {block_size!r}")
  axis = axis % x.ndim
  n = x.shape[axis]
  if n % block_size:
    raise ValueError(
        f"block_hadamard: dim {axis} has size {n}, not a multiple of block_size={block_size}; "
        "pad it first (int4jax.quantizers.pad_to_block)")
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if block_size == 1:
    return x
  before, after = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
  blocks = x.reshape(before, n // block_size, block_size, after)
  half = 1
  while half < block_size:  # pairs (i, i + half) in each run of 2 * half: (a + c, a - c)
    runs = blocks.reshape(before, n // block_size, block_size // (2 * half), 2, half, after)
    a, c = runs[:, :, :, 0], runs[:, :, :, 1]
    blocks = jnp.stack([a + c, a - c], axis=3).reshape(blocks.shape)
    half *= 2
  return (blocks * np.float32(1.0 / math.sqrt(block_size))).reshape(x.shape)


def padded_size(n: int, block_size: int) -> int:
  return -(-n // block_size) * block_size


def pad_to_block(x: jax.Array, block_size: int, axis: int = -1) -> jax.Array:
  """Zero-pads `axis` up to a multiple of `block_size` (a no-op when it already is)."""
  axis = axis % x.ndim
  extra = padded_size(x.shape[axis], block_size) - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)
