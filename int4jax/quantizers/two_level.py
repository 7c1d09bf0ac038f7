"""Two-level scales: a float scale per row times a small integer multiplier per group.

Every forward GEMM operand of `int4_linear` is a 2-D array quantized along its contraction axis
(X (M, K) along K, W (K, N) along K). An element is represented as

    t ~= s_r * m * q,    q in [qmin, qmax] (INT4),  m in {1, ..., L} (one per group of g elements)

with one float scale s_r per row (or per tensor). The int8 operand holds the product m * q
exactly (qmin * L >= -128 and qmax * L <= 127), so the GEMM is still ONE int8 x int8 -> int32
product with the rank-1 scales s_r applied after it; the group multipliers ride inside the
integers. L = 1 is plain abs-max quantization per row (or per tensor), bit for bit.

The rule:
  R   = max|t| over the row  (or min(max|t|, clip_ratio * rms(t)) with clipping)
  s_r = R / (qmax * L)
  m   = clip(ceil(L * groupmax|t| / R), 1, L)
  q   = clip(round(t / (s_r * m)), qmin, qmax)
Since |t| <= groupmax <= m R / L inside a group, |t / (s_r m)| <= qmax: with the ceil rule nothing
clips (unless `clip_ratio` is set).

Multiplier search (`search` = n > 1, round-to-nearest only): each group also tries m - 1, ...,
m - n + 1 (never below 1) and keeps the candidate c with the least squared error, ties to the
larger c. A smaller c has a finer step and may clip the group's largest values; on real
activations the trade lowers the forward error (experiments/results/bert_layer_errors.md), though
it did not raise fine-tuning accuracy (Int4Config.scale_search). The error is counted in
fixed point so that any summation order (XLA's, a kernel's) gives the same integers:
  d = c * (v - clip(round(v), qmin, qmax)),  v = t / (s_r * c)   (the error in units of s_r)
  error(c) = sum over the group of min(floor(d^2 * ERROR_UNITS), ERROR_CAP)   (int32)
Stochastic rounding keeps the ceil rule, so nothing clips and it stays unbiased.

Non-finite rows get a NaN scale and zero integers; all-zero rows get scale 1 and zeros.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from int4jax.quantizers import int4_quant

# The multiplier search's fixed-point squared error: units per s_r^2, and the cap of one element's
# count (so a group of up to MAX_SEARCH_GROUP elements sums inside int32).
ERROR_UNITS = 256.0
ERROR_CAP = 2 ** 20
MAX_SEARCH_GROUP = 2 ** 31 // ERROR_CAP - 1


def max_operand(qrange: Tuple[int, int], levels: int) -> int:
  """The largest |m * q| a two-level operand holds."""
  qmin, qmax = qrange
  return max(-qmin, qmax) * levels


def fits_int8(qrange: Tuple[int, int], levels: int) -> bool:
  """Whether every m * q (m <= levels, q in qrange) is an int8 value."""
  qmin, qmax = qrange
  return levels >= 1 and qmin * levels >= -128 and qmax * levels <= 127


def _grouped_view(x: jax.Array, axis: int, group: int) -> jax.Array:
  """x (2-D) reshaped so that the groups along `axis` are their own dim, without a transpose:
  axis 1: (M, K/g, g); axis 0: (K/g, g, N)."""
  if axis == 1:
    m, k = x.shape
    return x.reshape(m, k // group, group)
  k, n = x.shape
  return x.reshape(k // group, group, n)


def row_range(x: jax.Array, axis: Optional[int], clip_ratio: Optional[float]) -> jax.Array:
  """R: max|x| along `axis` (keepdims; None: the whole tensor, shape ()), or
  min(max|x|, clip_ratio * rms(x)) when clip_ratio is set. NaN where the row is not finite."""
  keep = axis is not None
  amax = jnp.max(jnp.abs(x), axis=axis, keepdims=keep, initial=0.0)  # NaN propagates
  if clip_ratio is not None:
    rms = jnp.sqrt(jnp.mean(x * x, axis=axis, keepdims=keep))
    amax = jnp.minimum(amax, clip_ratio * rms)
  return jnp.where(jnp.isfinite(amax), amax, jnp.nan)


def _multipliers(x, axis, group, levels, per_row, r, qrange, search):
  """m per group, in the grouped view's shape with the group dim kept as 1, given the ranges r:
  the ceil rule, then (search > 1) the least-error candidate of the module doc."""
  safe_r = jnp.where(jnp.isfinite(r) & (r > 0), r, 1.0)
  group_dim = 2 if axis == 1 else 1
  xg = _grouped_view(x, axis, group)
  gmax = jnp.max(jnp.abs(xg), axis=group_dim, keepdims=True)
  r_g = safe_r if not per_row else (safe_r[:, :, None] if axis == 1 else safe_r[:, None, :])
  mult = jnp.clip(jnp.ceil(levels * gmax / r_g), 1.0, float(levels))
  mult = jnp.where(jnp.isfinite(mult), mult, 1.0)
  if search <= 1:
    return mult
  qmin, qmax = qrange
  s_g = jnp.maximum(r_g / (qmax * levels), int4_quant.MIN_SCALE)
  best, best_err = mult, None
  for step in range(search):
    cand = jnp.maximum(mult - step, 1.0)
    v = xg / (s_g * cand)
    d = cand * (v - jnp.clip(jnp.round(v), qmin, qmax))
    counts = jnp.minimum(jnp.floor(d * d * ERROR_UNITS), float(ERROR_CAP))
    err = jnp.sum(jnp.where(jnp.isfinite(counts), counts, 0.0).astype(jnp.int32),
                  axis=group_dim, keepdims=True)
    if best_err is None:
      best_err = err
    else:
      better = err < best_err
      best, best_err = jnp.where(better, cand, best), jnp.where(better, err, best_err)
  return best


def group_multipliers(t: jax.Array, axis: int, qmin: int, qmax: int, *, group: int = 16,
                      levels: int = 1, per_row: bool = True, clip_ratio: Optional[float] = None,
                      search: int = 1) -> jax.Array:
  """The integer multipliers m (int8, 1..levels) that `quantize_two_level` applies when rounding
  to nearest, one per group of `group` elements along `axis`: shape (M, K/g) for axis 1, (K/g, N)
  for axis 0. With them the int8 operand m * q splits back into its INT4 values q (for packing
  two per byte)."""
  x = t.astype(jnp.float32)
  mult = _multipliers(x, axis, group, levels, per_row,
                      row_range(x, axis if per_row else None, clip_ratio), (qmin, qmax), search)
  return jnp.squeeze(mult, axis=2 if axis == 1 else 1).astype(jnp.int8)


def quantize_two_level(t: jax.Array, axis: int, qmin: int, qmax: int, *, group: int = 16,
                       levels: int = 1, per_row: bool = True, clip_ratio: Optional[float] = None,
                       search: int = 1, key: Optional[jax.Array] = None,
                       dither: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
  """(int8 values m * q, float32 scales s_r) of a 2-D `t` along its contraction `axis` (0 or 1).

  per_row: one s_r per slice kept (keepdims: (M, 1) for axis 1, (1, N) for axis 0); False: one
  per tensor (shape ()). With levels > 1, t.shape[axis] must be a multiple of `group`.
  search: multiplier candidates per group when rounding to nearest (module doc); 1: the ceil rule.
  key: stochastic rounding floor(v + u) with `int4_quant.uniform_dither(key, t.shape)` (unbiased;
  the backward's dY); None rounds half to even. dither: the U(0, 1) noise itself, t's shape
  (for kernels that are handed it), instead of a key.
  """
  if t.ndim != 2 or axis not in (0, 1):
    raise ValueError(f"quantize_two_level takes a 2-D array and axis 0 or 1, got {t.shape}, "
                     f"{axis}")
  if levels > 1 and search > 1 and group > MAX_SEARCH_GROUP:
    raise ValueError(f"quantize_two_level: the multiplier search counts errors in int32 for groups "
                     f"of at most {MAX_SEARCH_GROUP} elements, got group={group}; use search=1")
  if levels > 1 and t.shape[axis] % group:
    raise ValueError(f"quantize_two_level: the contraction ({t.shape[axis]}) must be a multiple "
                     f"of group={group}; pad it first (int4jax.quantizers.pad_to_block)")
  x = t.astype(jnp.float32)
  r = row_range(x, axis if per_row else None, clip_ratio)
  good = jnp.isfinite(r) & (r > 0)
  scale = jnp.where(good, jnp.maximum(r / (qmax * levels), int4_quant.MIN_SCALE),
                    jnp.where(jnp.isfinite(r), 1.0, jnp.nan))
  if levels == 1:
    v = x / scale
    mult = None
  else:
    nearest = key is None and dither is None
    mult = _multipliers(x, axis, group, levels, per_row, r, (qmin, qmax),
                        search if nearest else 1)
    s_g = scale if not per_row else (scale[:, :, None] if axis == 1 else scale[:, None, :])
    v = (_grouped_view(x, axis, group) / (s_g * mult))
  if key is not None:
    dither = int4_quant.uniform_dither(key, t.shape)
  if dither is None:
    v = jnp.round(v)
  else:
    v = jnp.floor(v + dither.astype(jnp.float32).reshape(v.shape))
  q = jnp.clip(v, qmin, qmax)
  if mult is not None:
    q = (q * mult).reshape(t.shape)
  return jnp.where(jnp.isfinite(q), q, 0.0).astype(jnp.int8), scale.astype(jnp.float32)


def dequantize_two_level(values: jax.Array, scale: jax.Array) -> jax.Array:
  """The float operand: s_r * (m * q)."""
  return values.astype(jnp.float32) * scale
