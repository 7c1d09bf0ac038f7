"""Two INT4 values per byte: element 2i in the low nibble, element 2i+1 in the high nibble."""

import jax
import jax.numpy as jnp


def pack_int4(q: jax.Array) -> jax.Array:
  """Packs int8-held INT4 values (in [-8, 7]) along the last axis (even length) into uint8."""
  if q.dtype != jnp.int8:
    raise TypeError(f"pack_int4 expects int8-held INT4 values, got {q.dtype}")
  if q.ndim == 0 or q.shape[-1] % 2:
    raise ValueError(f"pack_int4 needs an even last dimension, got shape {q.shape}")
  nibbles = q.astype(jnp.uint8) & 0x0F
  pairs = nibbles.reshape(q.shape[:-1] + (q.shape[-1] // 2, 2))
  return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_int4(p: jax.Array) -> jax.Array:
  """Inverse of `pack_int4`: uint8 (..., n) -> int8 (..., 2n), sign-extended."""
  if p.dtype != jnp.uint8:
    raise TypeError(f"unpack_int4 expects uint8, got {p.dtype}")
  lo = (p & 0x0F).astype(jnp.int8)
  hi = (p >> 4).astype(jnp.int8)
  both = jnp.stack([lo, hi], axis=-1)
  both = jnp.where(both >= 8, both - 16, both).astype(jnp.int8)
  return both.reshape(p.shape[:-1] + (p.shape[-1] * 2,))
