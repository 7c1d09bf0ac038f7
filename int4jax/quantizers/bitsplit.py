"""Bit splitting: a gradient as a high INT4 part plus an INT4 residual (about INT8 precision).

g ~= scale_hi * hi + scale_lo * lo with scale_hi = R * scale_lo, where R = lo_max - lo_min + 1
(16 for the range [-8, 7], 15 for [-7, 7]). We first round g / scale_lo (stochastically when a key
is given) to an integer v in [-V, V], V = R * qmax + lo_max (119 or 112), then split it exactly:
hi = floor((v - lo_min) / R), lo = v - R * hi, both inside the INT4 range.

Compared with the paper's released constants (scale 196 / (2 max|g|), hi and lo in [-6, 6], which
clip |g| > ~0.92 max|g|), nothing clips and the step is finer (max|g| / 119 vs max|g| / 98).

Because v = R * hi + lo is an int8 value, the two INT4 GEMMs R * (hi @ B) + (lo @ B) equal the
single int8 GEMM v @ B bit for bit (integer linearity, no overflow for the documented lengths).
"""

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from int4jax.quantizers import int4_quant as q


def radix(qrange: Tuple[int, int]) -> int:
  qmin, qmax = qrange
  return qmax - qmin + 1


def combined_max(qrange: Tuple[int, int]) -> int:
  """V: the largest |R * hi + lo| used, symmetric and inside int8."""
  qmin, qmax = qrange
  return radix(qrange) * qmax + qmax


class BitSplit(NamedTuple):
  hi: jax.Array  # int8, INT4 values
  lo: jax.Array  # int8, INT4 values
  scale_hi: jax.Array  # float32, = radix * scale_lo
  scale_lo: jax.Array  # float32, per group (keepdims) or ()
  radix: int

  def combined(self) -> jax.Array:
    """The single int8 operand R * hi + lo (scale: scale_lo)."""
    return (self.radix * self.hi.astype(jnp.int32) + self.lo.astype(jnp.int32)).astype(jnp.int8)

  def dequantize(self) -> jax.Array:
    return q.dequantize(self.hi, self.scale_hi) + q.dequantize(self.lo, self.scale_lo)


def bit_split(g: jax.Array, qrange: Tuple[int, int], reduce_axes: q.Axes = None,
              key: Optional[jax.Array] = None) -> BitSplit:
  """Splits `g` into (hi, lo) INT4 parts; one scale per group over `reduce_axes` (None: tensor).

  With `key`, the rounding of g / scale_lo is stochastic (unbiased); without, to nearest.
  """
  qmin, _ = qrange
  r = radix(qrange)
  v_max = combined_max(qrange)
  scale_lo = q.absmax_scale(g, v_max, reduce_axes)
  v = g.astype(jnp.float32) / scale_lo
  v = q.round_half_even(v) if key is None else q.stochastic_round(v, key)
  v = jnp.clip(v, -v_max, v_max)
  v = jnp.where(jnp.isfinite(v), v, 0.0).astype(jnp.int32)
  hi = jnp.floor_divide(v - qmin, r)
  lo = v - r * hi
  return BitSplit(hi.astype(jnp.int8), lo.astype(jnp.int8), scale_lo * r, scale_lo, r)
