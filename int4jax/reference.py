"""A float fake-quant reference of int4_linear, for tests.

It shares no quantization or sampling code with the integer op. Written independently here:
the two-level forward quantizer (by explicit per-element multipliers), the dY quantizers (plain
abs-max rounding on the bit split's combined grid, with the dither rebuilt from its hash
definition), leverage-score probabilities (iterative water-filling instead of a sort), Bernoulli and
systematic row sampling (counting points instead of a binary search), float GEMMs at HIGHEST
precision on dequantized values instead of int8 GEMMs with a scale epilogue, a dense block-diagonal
Hadamard matrix (kron(I, H_b)) for the gradients' H^T instead of autodiff, and LSQ gradients by
autodiff through `lsq_fake_quant` instead of the hand-written backward.

Shared with the op: the argument checks, the key schedule (split into dX, dW, sampling keys), and
the forward transform `block_hadamard` (tested against the dense matrix separately: quantization
is discontinuous, so a one-ulp difference in XH could flip a rounding).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from int4jax import validation
from int4jax.config import Int4Config
from int4jax.quantizers import hadamard
from int4jax.quantizers import int4_quant as quantize

_HI = jax.lax.Precision.HIGHEST


def dense_block_hadamard(n: int, block: int) -> jax.Array:
  return jnp.kron(jnp.eye(n // block, dtype=jnp.float32), hadamard.hadamard_matrix(block))


def int4_linear_reference(x, kernel, bias=None, *, key=None, config: Int4Config = Int4Config(),
                          scales=None):
  """Same contract as `int4jax.int4_linear`, computed in float."""
  validation.check_linear_args(x, kernel, bias, config, scales)
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)
  k_in, n_out = kernel.shape
  x2 = x.reshape(-1, k_in)
  if scales is not None:
    scales = tuple(jnp.asarray(s, jnp.float32) for s in scales)
  y = _reference(config, x2.astype(jnp.float32), kernel.astype(jnp.float32), scales, key)
  y = y.reshape(x.shape[:-1] + (n_out,))
  if bias is not None:
    y = y + bias.astype(jnp.float32).reshape((1,) * (y.ndim - 1) + (n_out,))
  return y.astype(out_dtype)


def _transformed(config, x, w):
  block = config.hadamard_block
  kp = hadamard.padded_size(x.shape[1], config.contraction_multiple)
  h = dense_block_hadamard(kp, block)
  x_pad = jnp.pad(x, ((0, 0), (0, kp - x.shape[1])))
  w_pad = jnp.pad(w, ((0, kp - w.shape[0]), (0, 0)))
  xh = hadamard.block_hadamard(x_pad, block, 1)
  wh = hadamard.block_hadamard(w_pad, block, 0)
  return xh, wh, h


def dither(key, shape):
  """The op's rounding noise rebuilt from its definition: a hash of (key, flat element index)."""
  size = 1
  for d in shape:
    size *= d
  k0, k1 = jax.random.bits(key, (2,), jnp.uint32)

  def mix(v):
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
      v = (v ^ (v >> shift)) * jnp.uint32(mult)
    return v ^ (v >> 16)

  h = mix(mix(jnp.arange(size, dtype=jnp.uint32) ^ k0) + k1)
  return ((h >> 16).astype(jnp.float32) + 0.5) / 65536.0


def fake_quant_rows(t, qmin, qmax, group, levels, per_row, clip_ratio, search=1, noise=None):
  """Two-level quantization of the rows of t (R, K) along K: (m * q as floats, s (R,)).
  noise: U(0, 1) of t's shape for stochastic rounding floor(v + noise); None rounds to nearest,
  choosing each group's multiplier among the ceil rule's and the `search - 1` below it by the
  least fixed-point squared error (a count of 1/256 s^2 per element, capped at 2^20)."""
  r_count, k = t.shape
  a = jnp.abs(t)
  rng = a.max(axis=1) if per_row else jnp.full((r_count,), a.max())
  if clip_ratio is not None:
    rms = jnp.sqrt(jnp.mean(t * t, axis=1) if per_row else jnp.full((r_count,), jnp.mean(t * t)))
    rng = jnp.minimum(rng, clip_ratio * rms)
  finite = jnp.isfinite(t).all(axis=1) if per_row else jnp.full((r_count,), jnp.isfinite(t).all())
  tiny = np.finfo(np.float32).tiny  # smaller scales would be subnormal: flushed to zero
  scale = jnp.where(rng > 0, jnp.maximum(rng / (qmax * levels), tiny), 1.0)
  scale = jnp.where(finite, scale, jnp.nan)
  if levels == 1:
    mult = jnp.ones_like(t)
  else:
    gmax = jnp.repeat(a.reshape(r_count, k // group, group).max(axis=2), group, axis=1)
    safe = jnp.where(finite & (rng > 0), rng, 1.0)
    mult = jnp.clip(jnp.ceil(levels * gmax / safe[:, None]), 1, levels)
    if noise is None and search > 1:
      mult = _least_error_multiplier(t, jnp.maximum(safe / (qmax * levels), tiny), mult, qmin,
                                     qmax, group, search)
  v = t / (scale[:, None] * mult)
  v = jnp.round(v) if noise is None else jnp.floor(v + noise)
  q = jnp.clip(v, qmin, qmax)
  return jnp.where(finite[:, None], q * mult, 0.0), scale


def _least_error_multiplier(t, s, ceil_mult, qmin, qmax, group, search):
  """Per element, its group's multiplier: of ceil_mult, ceil_mult - 1, ... (search of them, at
  least 1), the first with the least error count."""
  r_count, k = t.shape
  cands = jnp.stack([jnp.maximum(ceil_mult - i, 1.0) for i in range(search)])  # (S, R, K)
  v = t[None] / (s[None, :, None] * cands)
  d = cands * (v - jnp.clip(jnp.round(v), qmin, qmax))
  counts = jnp.minimum(jnp.floor(d * d * 256.0), 2.0 ** 20)
  counts = jnp.where(jnp.isfinite(counts), counts, 0.0).astype(jnp.int32)
  errors = counts.reshape(search, r_count, k // group, group).sum(axis=3)  # (S, R, K/g)
  pick = jnp.repeat(jnp.argmin(errors, axis=0), group, axis=1)  # argmin: the first of ties
  return jnp.take_along_axis(cands, pick[None], axis=0)[0]


def fake_quant_forward(xh, wh, config: Int4Config, scales, key=None):
  """The forward operands as (integer-valued floats, outer scales): X (M, K) with (M,), and W
  transposed, (N, K) with (N,). X^ = ints * scale per row. key: the op's key, for
  forward_rounding='stochastic' (X's and W's noise from fold_in(key, 1), split in two; W's noise
  is indexed in W's own (K, N) layout, as the op draws it)."""
  qmin, qmax = config.forward_qrange
  if config.scale_mode == "lsq":
    out = []
    for t, s in ((xh, scales[0]), (wh.T, scales[1])):
      s = jnp.where(s > 0, s, jnp.nan)
      ints = jnp.where(jnp.isfinite(t), jnp.clip(jnp.round(t / s), qmin, qmax), 0.0)
      out += [ints, jnp.full((t.shape[0],), s)]
    return tuple(out)
  settings = (qmin, qmax, config.scale_group, config.scale_levels, config.scale_mode == "row",
              config.scale_clip, config.scale_search)
  noise_x = noise_w = None
  if key is not None and config.forward_rounding == "stochastic":
    key_x, key_w = jax.random.split(jax.random.fold_in(key, 1), 2)
    noise_x = dither(key_x, xh.shape).reshape(xh.shape)
    noise_w = dither(key_w, wh.shape).reshape(wh.shape).T
  return (fake_quant_rows(xh, *settings, noise_x) + fake_quant_rows(wh.T, *settings, noise_w))


def fake_quant_grad(g, axis, config: Int4Config, key):
  """Q(g) dequantized, one scale per slice along `axis` (the GEMM's kept dim)."""
  if config.grad_mode == "float":
    return g
  qmin, qmax = config.qrange
  if config.grad_mode == "bitsplit":  # hi * R + lo on the grid max|g| / V
    levels_ = (qmax - qmin + 1) * qmax + qmax
    lo, hi = -levels_, levels_
  else:
    lo, hi = qmin, qmax
  top = jnp.abs(g).max(axis=axis, keepdims=True)
  scale = jnp.where(top > 0, jnp.maximum(top / hi, np.finfo(np.float32).tiny), 1.0)
  v = g / scale
  if config.stochastic_rounding:
    v = jnp.floor(v + dither(key, g.shape).reshape(g.shape))
  else:
    v = jnp.round(v)
  finite = jnp.isfinite(g).all(axis=axis, keepdims=True)
  return jnp.where(finite, jnp.clip(v, lo, hi) * scale, jnp.nan)


def water_fill(scores, budget):
  """p_i = min(1, c s_i), sum p = budget, by fixed-point iteration on the set of capped rows."""
  bad = ~jnp.isfinite(scores)
  s = jnp.where(bad, 0.0, jnp.abs(scores))
  positive = s > 0

  def step(capped):
    room = budget - capped.sum()
    rest = jnp.where(capped, 0.0, s).sum()
    c = jnp.where(rest > 0, room / jnp.where(rest > 0, rest, 1.0), 0.0)
    return capped | (positive & (c * s >= 1.0)), c

  def cond(state):
    capped, prev = state
    return jnp.any(capped != prev)

  def body(state):
    capped, _ = state
    return step(capped)[0], capped

  capped0 = jnp.zeros(s.shape, bool)
  capped, _ = jax.lax.while_loop(cond, body, (step(capped0)[0], capped0))
  _, c = step(capped)
  p = jnp.where(capped, 1.0, jnp.minimum(1.0, c * s))
  if_all = positive.sum() <= budget
  p = jnp.where(if_all, positive.astype(jnp.float32), p)
  return jnp.where(bad, 1.0, p)


def sampled_rows(dy_scaled, x_deq, config: Int4Config, key):
  """(rows of dY * s_X weighted by 1/p, the same rows of x_deq), as the op's sampling picks them
  (scores ||dY_i s_X,i|| ||x_deq,i||, with x_deq X's integer values), block by block when
  config.lss_blocks > 1 (each block water-filled to its share of the budget)."""
  m = dy_scaled.shape[0]
  if config.lss == "off" or m == 0:
    return dy_scaled, x_deq
  scores = jnp.linalg.norm(dy_scaled, axis=1) * jnp.linalg.norm(x_deq, axis=1)
  if config.lss == "nonzero":
    return dy_scaled * (scores != 0)[:, None], x_deq
  blocks = config.lss_blocks
  if m % blocks:
    raise ValueError(f"lss_blocks={blocks} does not divide the {m} token rows")
  size = m // blocks
  starts = [b * size for b in range(blocks)]
  if config.lss == "bernoulli":
    p = jnp.concatenate([water_fill(scores[a:a + size], config.lss_budget * size)
                         for a in starts])
    kept = jax.random.uniform(key, (m,)) < p
    return dy_scaled * jnp.where(kept, 1.0 / jnp.where(kept, p, 1.0), 0.0)[:, None], x_deq
  n = max(1, round(config.lss_budget * size))
  if n >= size:
    return dy_scaled, x_deq
  offsets = jax.random.uniform(key, (blocks,))
  rows, weights = [], []
  for b, a in enumerate(starts):
    p = water_fill(scores[a:a + size], n)
    edges = jnp.cumsum(p)
    total = jnp.minimum(n, jnp.round(edges[-1]))
    edges = edges / jnp.where(edges[-1] > 0, edges[-1], 1.0) * total
    points = offsets[b] + jnp.arange(n)
    # Row i holds the points in [edges[i-1], edges[i]); count the edges at or below each point.
    picked = jnp.minimum((edges[None, :] <= points[:, None]).sum(axis=1), size - 1)
    weights.append(jnp.where((points < total) & (p[picked] > 0), 1.0 / p[picked], 0.0))
    rows.append(a + picked)
  rows, weight = jnp.concatenate(rows), jnp.concatenate(weights)
  return dy_scaled[rows] * weight[:, None], x_deq[rows]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _reference(config, x, w, scales, key):
  xh, wh, _ = _transformed(config, x, w)
  x_int, sx, w_int, sw = fake_quant_forward(xh, wh, config, scales, key)
  return jnp.matmul(x_int * sx[:, None], (w_int * sw[:, None]).T, precision=_HI)


def _reference_fwd(config, x, w, scales, key):
  return _reference(config, x, w, scales, key), (x, w, scales, key)


def _reference_bwd(config, res, dy):
  x, w, scales, key = res
  if key is None and config.needs_key:
    raise ValueError(validation.missing_key_message(config))
  key_dx, key_dw, key_lss = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
  xh, wh, h = _transformed(config, x, w)
  x_int, sx, w_int, sw = fake_quant_forward(xh, wh, config, scales, key)
  dy = dy.astype(jnp.float32)
  # dX~ = Q(dY s_W) W_int^T: W's scale multiplies dX's contraction dim, so it goes into dY first.
  g_dx = fake_quant_grad(dy * sw[None, :], 1, config, key_dx)
  dx_bar = jnp.matmul(g_dx, w_int, precision=_HI)
  dy_sx = dy * sx[:, None]
  g_rows, x_rows = sampled_rows(dy_sx, x_int, config, key_lss)
  g_dw = fake_quant_grad(g_rows, 0, config, key_dw)
  dw_bar = jnp.matmul(x_rows.T, g_dw, precision=_HI)
  dw_bar = jnp.where(jnp.isfinite(dy_sx).all(axis=0, keepdims=True), dw_bar, jnp.nan)
  if config.scale_mode == "lsq":
    qmin, qmax = config.forward_qrange
    fq = lambda t, s: quantize.lsq_fake_quant(t, s, qmin, qmax)
    _, vjp_x = jax.vjp(fq, xh, scales[0])
    _, vjp_w = jax.vjp(fq, wh, scales[1])
    (dxh, dsx), (dwh, dsw) = vjp_x(dx_bar), vjp_w(dw_bar)
    dscales = (dsx, dsw)
  else:
    dxh, dwh, dscales = dx_bar, dw_bar, None
  dx = jnp.matmul(dxh, h, precision=_HI)[:, :x.shape[1]]
  dw = jnp.matmul(h, dwh, precision=_HI)[:w.shape[0]]
  return dx, dw, dscales, None


_reference.defvjp(_reference_fwd, _reference_bwd)
