"""INT4 quantize / dequantize: scales, round-to-nearest, stochastic rounding, LSQ.

Integer values are held in int8 arrays (see `packing` for two per byte). A scale is per tensor
(shape ()), or one per slice along the kept axis (keepdims shape, e.g. (M, 1) per row).

Non-finite inputs never turn into finite garbage: a scaling group that contains NaN or Inf gets a
NaN scale, so everything computed from that group is NaN. Its integer values are set to 0.
An all-zero group gets scale 1 (its integers are 0), so there is no 0/0.
"""

from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

Axes = Union[None, int, Sequence[int]]

SYMMETRIC = (-7, 7)  # the paper's text: Q_N = Q_P = 7
FULL = (-8, 7)  # the paper's released code: clamp to [-8, 7]


def int_range(name: str) -> Tuple[int, int]:
  """(qmin, qmax) for a range name of `Int4Config.int_range`."""
  ranges = {"symmetric": SYMMETRIC, "full": FULL}
  if name not in ranges:
    raise ValueError(f"int_range must be one of {sorted(ranges)}, got {name!r}")
  return ranges[name]


def _reduce_axes(x: jax.Array, reduce_axes: Axes):
  if reduce_axes is None:
    return tuple(range(x.ndim))
  if isinstance(reduce_axes, int):
    return (reduce_axes % x.ndim,)
  return tuple(a % x.ndim for a in reduce_axes)


def nonfinite_to_nan(scale: jax.Array, x: jax.Array, reduce_axes: Axes = None) -> jax.Array:
  """Makes `scale` NaN for every group (reduced over `reduce_axes`) of `x` that is not finite."""
  axes = _reduce_axes(x, reduce_axes)
  finite = jnp.all(jnp.isfinite(x), axis=axes, keepdims=reduce_axes is not None)
  return jnp.where(finite, scale, jnp.nan).astype(jnp.float32)


# The smallest scale a quantizer returns: float32's smallest normal number. A smaller one would be
# subnormal, which GPUs and XLA:CPU flush to zero (the output would be 0); a group this small
# (max|x| below ~1e-36) is rounded on a coarser grid instead (fewer than qmax levels used).
MIN_SCALE = float(jnp.finfo(jnp.float32).tiny)


def absmax_scale(x: jax.Array, qmax: float, reduce_axes: Axes = None) -> jax.Array:
  """max|x| / qmax over `reduce_axes` (None: the whole tensor, shape ()); keepdims otherwise;
  at least MIN_SCALE."""
  axes = _reduce_axes(x, reduce_axes)
  keep = reduce_axes is not None
  amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes, keepdims=keep, initial=0.0)
  scale = jnp.where(amax > 0, jnp.maximum(amax / qmax, MIN_SCALE), 1.0)
  return jnp.where(jnp.isfinite(amax), scale, jnp.nan).astype(jnp.float32)


def round_half_even(v: jax.Array) -> jax.Array:
  return jnp.round(v)


def _mix32(v: jax.Array) -> jax.Array:
  """A 32-bit integer finalizer (xor-shift-multiply, constants 0x7feb352d / 0x846ca68b): every
  input bit flips each output bit with probability ~1/2."""
  v = v ^ (v >> 16)
  v = v * jnp.uint32(0x7FEB352D)
  v = v ^ (v >> 15)
  v = v * jnp.uint32(0x846CA68B)
  return v ^ (v >> 16)


def dither_seed(key: jax.Array) -> jax.Array:
  """The two uint32 words that seed `uniform_dither` for `key` (one small threefry draw)."""
  return jax.random.bits(key, (2,), jnp.uint32)


def uniform_dither(key: jax.Array, shape) -> jax.Array:
  """u in (0, 1) on a 16-bit grid ((j + 0.5) / 2^16), a counter-based hash of (key, index).

  Element e (its row-major flat index, mod 2^32) gets h = mix(mix(e ^ k0) + k1) with (k0, k1) =
  `dither_seed(key)`, and u = ((h >> 16) + 0.5) / 2^16. Counter-based, so it is elementwise (XLA
  fuses it into the quantizer, with no separate random-bits pass) and a kernel can rebuild
  it from the global index alone. Stochastic rounding with it is unbiased to within 2^-17 of a
  step.
  """
  seed = dither_seed(key)
  shape = tuple(shape)
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride % 2**32)
    stride *= shape[dim]
  h = _mix32(_mix32(index ^ seed[0]) + seed[1])
  return ((h >> 16).astype(jnp.float32) + 0.5) * (1.0 / 65536)


def stochastic_round(v: jax.Array, key: jax.Array) -> jax.Array:
  """floor(v + u), u ~ U(0, 1) (16-bit grid): E[result] = v to within 2^-17."""
  return jnp.floor(v + uniform_dither(key, v.shape))


def quantize(x: jax.Array, scale: jax.Array, qmin: int, qmax: int,
             key: Optional[jax.Array] = None) -> jax.Array:
  """int8 values of clip(round(x / scale), qmin, qmax); stochastic rounding when `key` is given."""
  v = x.astype(jnp.float32) / scale
  v = round_half_even(v) if key is None else stochastic_round(v, key)
  v = jnp.clip(v, qmin, qmax)
  return jnp.where(jnp.isfinite(v), v, 0.0).astype(jnp.int8)


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
  return q.astype(jnp.float32) * scale


def quantize_absmax(x: jax.Array, qmin: int, qmax: int, reduce_axes: Axes = None,
                    key: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
  """(int8 values, scale) with a dynamic abs-max scale per group."""
  scale = absmax_scale(x, qmax, reduce_axes)
  return quantize(x, scale, qmin, qmax, key), scale


def lsq_init_scale(x: jax.Array, qmax: int) -> jax.Array:
  """The LSQ step-size initialisation used by the paper: 2 mean|x| / sqrt(qmax) (+1e-10)."""
  return (2.0 * jnp.mean(jnp.abs(x.astype(jnp.float32))) / jnp.sqrt(float(qmax)) + 1e-10)


def lsq_grad_scale(numel: int, qmax: int) -> float:
  """LSQ's step-size gradient scale 1 / sqrt(numel * qmax)."""
  return 1.0 / float(numel * qmax) ** 0.5


def lsq_fake_quant(x: jax.Array, scale: jax.Array, qmin: int, qmax: int) -> jax.Array:
  """scale * clip(round(x / scale)) with LSQ gradients, by autodiff.

  d/dx: straight-through inside [qmin, qmax], 0 outside (the clip mask).
  d/dscale: (round(v) - v) inside, qmin or qmax outside, times `lsq_grad_scale`.
  """
  g = lsq_grad_scale(x.size, qmax)
  scale = scale * g + jax.lax.stop_gradient(scale - scale * g)
  v = jnp.clip(x.astype(jnp.float32) / scale, qmin, qmax)
  v = v + jax.lax.stop_gradient(jnp.round(v) - v)
  return v * scale
