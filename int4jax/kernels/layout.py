"""Shape helpers shared by the kernels: block rounding, zero padding, rank-1 scale vectors."""

from typing import Optional

import jax
import jax.numpy as jnp


def round_up(n: int, m: int) -> int:
  """The smallest multiple of m that is >= n."""
  return -(-n // m) * m


def pad_to(x: jax.Array, shape) -> jax.Array:
  """x zero-padded at the end of each dim up to `shape` (a no-op when it already has it)."""
  pads = [(0, t - s) for s, t in zip(x.shape, shape)]
  return jnp.pad(x, pads) if any(p for _, p in pads) else x


def scale_vector(s: Optional[jax.Array], n: int, what: str) -> jax.Array:
  """A rank-1 scale as a float32 (n,) vector: accepts None (1), a scalar, (n,), (n, 1) or (1, n)."""
  s = jnp.asarray(1.0 if s is None else s, jnp.float32)
  if s.size == 1:
    return jnp.broadcast_to(s.reshape(()), (n,))
  if s.size != n or max(s.shape) != n:
    raise ValueError(f"{what} must be a scalar or hold {n} values (one per {what.split('_')[0]}),"
                     f" got shape {s.shape}")
  return s.reshape(n)
