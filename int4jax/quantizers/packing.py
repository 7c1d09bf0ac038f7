"""Two INT4 values per byte: element 2i in the low nibble, element 2i+1 in the high nibble; and
the packed form of a two-level weight operand (serving export, FSDP's INT4 all-gather)."""

from typing import Optional, Tuple

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


def _pack_rows(t: jax.Array) -> jax.Array:
  """int8 nibble values (R, n), each in [-8, 15], packed two per byte along n (a zero pads an odd
  n)."""
  if t.shape[-1] % 2:
    t = jnp.pad(t, ((0, 0), (0, 1)))
  return pack_int4(t)


def _unpack_unsigned(p: jax.Array) -> jax.Array:
  """uint8 (..., n) -> int8 (..., 2n), the nibbles read as 0..15."""
  both = jnp.stack([p & 0x0F, p >> 4], axis=-1).astype(jnp.int8)
  return both.reshape(p.shape[:-1] + (p.shape[-1] * 2,))


def pack_weight_operand(wv: jax.Array, multipliers: Optional[jax.Array]
                        ) -> Tuple[jax.Array, Optional[jax.Array]]:
  """A (Kp, N) int8 two-level operand m * q (quantized along axis 0), with its group multipliers m
  ((Kp/g, N) int8 in 1..16, or None for one level), packed K-major:
    values       uint8 (N, ceil(Kp/2))    the INT4 values q, two per byte along K
    multipliers  uint8 (N, ceil(Kp/2g))   m - 1, two per byte (None with one level)
  Everything is per output column, so a column shard packs on its own."""
  if multipliers is None:
    return _pack_rows(wv.T), None
  group = wv.shape[0] // multipliers.shape[0]
  q = (wv.astype(jnp.int32) // jnp.repeat(multipliers, group, axis=0)).astype(jnp.int8)
  return _pack_rows(q.T), _pack_rows((multipliers - 1).T.astype(jnp.int8))


def unpack_weight_operand(values: jax.Array, multipliers: Optional[jax.Array], padded: int,
                          group: int) -> jax.Array:
  """Inverse of `pack_weight_operand`: the (padded, N) int8 operand m * q."""
  q = unpack_int4(values)[:, :padded].T
  if multipliers is None:
    return q
  m = _unpack_unsigned(multipliers)[:, :padded // group].T + 1
  return (q * jnp.repeat(m, group, axis=0)).astype(jnp.int8)
