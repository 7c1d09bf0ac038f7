"""int4_linear: y = x @ kernel (+ bias) with all three GEMMs on INT4 values, int32 accumulation.

Layout: the Hadamard transform, the zero padding of the contraction dim and the dtype casts are
plain differentiable JAX around `_int4_matmul`, a custom_vjp that works in the Hadamard domain:

  forward   Y  = (s_X Xq)(s_W Wq)                    Xq = Q(XH), Wq = Q(HW), rank-1 scales
  backward  dX~ = Q_rows(dY * s_W) Wq^T   (int)      then autodiff applies H^T and unpads
            dW~ = Xq^T Q_cols(S(dY * s_X))  (int)    S: optional leverage-score row sampling

Q(XH), Q(HW) are two-level (int4jax/quantizers/two_level.py): the int8 operands hold m * q, an
INT4 value times its group's integer multiplier, so the scales left outside are still rank-1 and
the backward reuses the same operands. Q(dY) is the bit split (or plain INT4, or no
quantization). Every scale that multiplies a contraction dim (s_W for dX, s_X and 1/p for dW) is
folded into dY before it is quantized, so the remaining scales are rank-1 and apply after the
integer GEMM. Folding 1/p in is also the lower-variance form: leverage scores make the weighted
rows alike in size, while quantizing unweighted rows and reweighting afterwards amplifies the
rounding noise of low-p rows (experiments/analysis/lss_variance.py,
experiments/results/lss_variance.md).
Residuals: the int8 Xq, Wq and their scales (plus XH, HW in float for LSQ, whose gradient needs
the rounding residuals).

Layouts: for backends whose GEMMs read both operands K-major (`backend.k_major`: the GPU ones, and
"pallas" everywhere) every GEMM is fed operands that contract over their dim 1, so no GEMM
transposes anything. The forward quantizer writes each operand in both layouts from one pass
(Xq (M, K) for Y and Xq^T (K, M) kept for dW; Wq^T (N, K) for Y and Wq (K, N) kept for dX), and
dW's dY is quantized straight into (N, M). Other backends get x's own layouts. The results are the
same bits either way (tests/test_k_major.py). Where the quantizer is jnp (the "xla" backend, and
per-tensor, clipped or LSQ scales) or the operand comes from elsewhere (FSDP's gathered weight,
the unfused bit split's hi/lo), XLA writes the transposed copy; the packed serving path
(`forward_from_operand`) hands W as (K, N) and a K-major GEMM transposes it.

Int32 accumulation is exact while the contraction length K satisfies
K * max|a| * max|b| <= 2^31 - 1 (`max_exact_contraction`), with A = max|m * q| = 7 L for the
forward operands (8 L for int_range="full"; 127 or 128 with forward_bits=8) and V = 112 for the
bit-split dY (119 for int_range="full"): the forward's padded K <= (2^31 - 1) / A^2, and the
backward's N (dX: output features) and M (dW: tokens per call) <= (2^31 - 1) / (V A). The README
lists the limits at the usual settings (tests/test_bad_input.py checks them against this
function). A longer contraction raises a ValueError naming what to shorten.
"""

import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from int4jax import backend, fsdp, validation
from int4jax.backends.base import in_layout
from int4jax.config import Int4Config
from int4jax.kernels.int_gemm import max_exact_contraction
from int4jax.quantizers import bitsplit, hadamard, packing, sampling, two_level
from int4jax.quantizers import int4_quant as quantize

Scales = Optional[Tuple[jax.Array, jax.Array]]


def int4_linear(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None, *,
                key: Optional[jax.Array] = None, config: Int4Config = Int4Config(),
                scales: Scales = None) -> jax.Array:
  """INT4 `x @ kernel + bias` with Flax's layout: x (..., in), kernel (in, out) -> (..., out).

  key: PRNG key for stochastic rounding and sampling; it may be None for a forward-only call
    (config.forward_rounding='stochastic' then rounds to nearest), and taking a gradient without
    it raises a ValueError saying what to pass.
  scales: (x_scale, kernel_scale) learnable per-tensor step sizes when config.scale_mode='lsq'.
  Output dtype: the promoted dtype of x and kernel. NaN/Inf in an input makes the outputs that
  depend on its scaling group NaN; all-zero inputs give zeros and finite gradients.
  """
  validation.check_linear_args(x, kernel, bias, config, scales)
  validation.check_key(key)
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)
  block, multiple = config.hadamard_block, config.contraction_multiple
  k_in, n_out = kernel.shape
  x2 = x.reshape(-1, k_in).astype(jnp.float32)
  xh = hadamard.block_hadamard(hadamard.pad_to_block(x2, multiple, 1), block, 1)
  wh = hadamard.block_hadamard(
      hadamard.pad_to_block(kernel.astype(jnp.float32), multiple, 0), block, 0)
  if scales is not None:
    scales = tuple(jnp.asarray(s, jnp.float32) for s in scales)
  xh, wh, scales = _same_vma(xh, wh, scales)
  if config.fsdp_axis is not None:  # placed as its gradient is (on an Explicit mesh: its type)
    wh = fsdp.shard_columns(wh, config)
  y = _int4_matmul(config, xh, wh, scales, key)
  y = y.reshape(x.shape[:-1] + (n_out,))
  if bias is not None:
    y = y + bias.astype(jnp.float32).reshape((1,) * (y.ndim - 1) + (n_out,))
  return y.astype(out_dtype)


def _same_vma(*trees):
  """Under `shard_map` (check_vma=True): every float input made varying over the union of the
  mesh axes any of them varies over. The custom VJP's cotangents vary like its outputs, so its
  inputs must too; `pcast(..., to="varying")` transposes to the psum that a replicated input's
  gradient needs (e.g. the weight under data parallelism). Outside shard_map: unchanged."""
  union = frozenset().union(*map(_varying_axes, jax.tree.leaves(trees)))
  if not union:
    return trees

  def cast(a):
    missing = tuple(sorted(union - _varying_axes(a)))
    return jax.lax.pcast(a, missing, to="varying") if missing else a
  return jax.tree.map(cast, trees)


def _varying_axes(a) -> frozenset:
  """The manual mesh axes `a` varies over (its type's vma; empty outside shard_map)."""
  aval = jax.typeof(a)
  vma = getattr(aval, "vma", None)  # newer jax
  if vma is None:
    vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)  # jax 0.10
  return frozenset(vma or ())


def int4_linear_batched(x: jax.Array, w: jax.Array, *, key: Optional[jax.Array] = None,
                        config: Int4Config = Int4Config(), scales: Scales = None) -> jax.Array:
  """`int4_linear` on a batch of products, x (B, T, K) @ w (B, K, N) -> (B, T, N), as the layers
  that are not plain Dense run it (int4jax.contraction.as_matmuls): B == 1 takes `key` itself,
  more products take one split of it each."""
  if x.shape[0] == 1:
    return int4_linear(x[0], w[0], key=key, config=config, scales=scales)[None]
  keys = None if key is None else jax.random.split(key, x.shape[0])
  return jax.vmap(lambda xi, wi, ki: int4_linear(xi, wi, key=ki, config=config, scales=scales),
                  in_axes=(0, 0, None if keys is None else 0))(x, w, keys)


def backward_keys(key):
  """The keys of the backward pass: (dX rounding, dW rounding, dW row sampling)."""
  if key is None:
    return None, None, None
  return tuple(jax.random.split(key, 3))


def forward_keys(key, config: Int4Config):
  """The keys of the forward's stochastic rounding (X, W): split(fold_in(key, 1), 2), new keys
  that no other draw of the op uses (backward_keys' dW key is itself used, not split); (None,
  None) when the forward rounds to nearest or no key is given."""
  if key is None or config.forward_rounding == "nearest":
    return None, None
  return tuple(jax.random.split(jax.random.fold_in(key, 1), 2))


def forward_quantize(xh, wh, config: Int4Config, scales: Scales, key=None, layout="as_is"):
  """(Xv, s_X, Wv, s_W): the int8 operands (INT4 values times their group multipliers, see
  int4jax/quantizers/two_level.py) and their rank-1 scales ((M, 1) and (1, N), or per tensor ()).
  key: the op's key; used only with config.forward_rounding='stochastic'. layout: as the
  backend quantizer takes it; "both" makes Xv and Wv pairs (as is, transposed)."""
  qmin, qmax = config.forward_qrange
  key_x, key_w = forward_keys(key, config)
  if config.scale_mode == "lsq":
    sx, sw = (jnp.where(s > 0, s, jnp.nan) for s in scales)
    xq = in_layout(quantize.quantize(xh, sx, qmin, qmax), layout)
    wq = in_layout(quantize.quantize(wh, sw, qmin, qmax), layout)
    return (xq, quantize.nonfinite_to_nan(sx, xh), wq, quantize.nonfinite_to_nan(sw, wh))
  xq, sx = quantize_operand(xh, 1, config, key_x, layout)
  if config.fsdp_axis is None:
    wq, sw = quantize_operand(wh, 0, config, key_w, layout)
  else:  # quantized where FSDP keeps the weight, gathered packed (transposed after the gather)
    wq, sw, _ = _fsdp_quantized_weight(wh, config, key_w)
    wq = in_layout(wq, layout)
  return xq, sx, wq, sw


def _fsdp_quantized_weight(wh, config: Int4Config, key_w):
  """fsdp.gather_quantized_weight with this op's weight quantizer and its group multipliers."""
  return fsdp.gather_quantized_weight(
      wh, config, lambda t: quantize_operand(t, 0, config, key_w),
      lambda t: weight_multipliers(t, config, stochastic=key_w is not None))


def quantize_operand(t, axis: int, config: Int4Config, key=None, layout="as_is"):
  """(int8 values, scales) of one dynamic-scale forward operand along its contraction `axis`
  (1 for X, 0 for W), as the forward quantizes it; layout as the backend quantizer takes it."""
  qmin, qmax = config.forward_qrange
  return backend.quantizer(config.backend)(
      t, axis, qmin, qmax, key, group=config.scale_group, levels=config.scale_levels,
      per_row=config.scale_mode == "row", clip_ratio=config.scale_clip,
      search=config.scale_search, layout=layout)


def weight_multipliers(wh, config: Int4Config, stochastic: bool = False):
  """The group multipliers (int8, (Kp/g, N)) that `quantize_operand(wh, 0, config, key)` applied
  (stochastic: a key was given, so the ceil rule, with no search), for packing the weight operand
  two INT4 values per byte; None with scale_levels=1."""
  return operand_multipliers(wh, 0, config, stochastic)


def operand_multipliers(t, axis: int, config: Int4Config, stochastic: bool = False):
  """The group multipliers that `quantize_operand(t, axis, config, key)` applied along `axis`
  ((M, Kp/g) for X, (Kp/g, N) for W; stochastic: a key was given, so the ceil rule), with which
  the int8 operand m * q splits back into its INT4 values; None with one level or LSQ scales."""
  if config.scale_levels == 1 or config.scale_mode == "lsq":
    return None
  qmin, qmax = config.forward_qrange
  return two_level.group_multipliers(
      t, axis, qmin, qmax, group=config.scale_group, levels=config.scale_levels,
      per_row=config.scale_mode == "row", clip_ratio=config.scale_clip,
      search=1 if stochastic else config.scale_search)


def forward_from_operand(xh, wq, sw, config: Int4Config):
  """The forward product with W already quantized (wq, sw): X quantized with nearest rounding,
  then the scaled GEMM, as `_forward` runs it (int4jax.serving.packed_linear)."""
  op_max = _operand_max(config)
  _check_length(xh.shape[1], op_max, op_max, "forward")
  xq, sx = quantize_operand(xh, 1, config)
  return backend.scaled_gemm(config.backend)(xq, wq, ((1,), (0,)), sx, sw)


# What each GEMM contracts over, and how to shorten it.
_CONTRACTION_FIX = {
    "forward": "the layer's in_features, after zero-padding to a multiple of max(hadamard_block, "
               "scale_group); lower scale_levels (the limit is (2^31 - 1) / (7 L)^2) or split "
               "the layer along its input features",
    "dX": "the layer's out_features; lower scale_levels or split the layer along its output "
          "features",
    "dW": "the tokens of one call (batch x sequence); split the batch into smaller calls or "
          "lower scale_levels",
}


def _check_length(length: int, max_a: int, max_b: int, what: str) -> None:
  limit = max_exact_contraction(max_a, max_b)
  if length > limit:
    raise ValueError(f"int4_linear: the {what} GEMM contracts over {length} > {limit} elements, "
                     f"past which int32 accumulation could overflow. That contraction is "
                     f"{_CONTRACTION_FIX[what]}")


def _operand_max(config: Int4Config) -> int:
  """max |value| of the forward's int8 operands (INT4 values times group multipliers)."""
  return two_level.max_operand(config.forward_qrange, config.scale_levels)


def _grad_int_max(config: Int4Config) -> int:
  qmin, qmax = config.qrange
  if config.grad_mode == "bitsplit":
    return bitsplit.combined_max(config.qrange)
  return max(-qmin, qmax)


def _quantized_product(g, reduce_axes, gemm_with, config: Int4Config, key, layout="as_is"):
  """gemm_with(Q(g), scale) in float: the GEMM of Q's integers with Q's scale (one per kept slice)
  applied in its epilogue. gemm_with(q, None) is the raw int32 product. layout: "transposed"
  hands gemm_with Q(g)^T (quantized into that layout)."""
  qmin, qmax = config.qrange
  key = key if config.stochastic_rounding else None
  quantize_groups = backend.quantizer(config.backend)
  if config.grad_mode == "bitsplit":
    if config.fuse_bitsplit:
      # R*hi + lo is g rounded on the step scale_lo = max|g| / V and clipped to [-V, V]: the
      # plain abs-max quantizer with V levels, bit for bit (tests/test_bitsplit.py).
      v_max = bitsplit.combined_max(config.qrange)
      v, scale_lo = quantize_groups(g, reduce_axes, -v_max, v_max, key, layout=layout)
      return gemm_with(v, scale_lo)
    split = bitsplit.bit_split(g, config.qrange, reduce_axes, key)
    acc = (split.radix * gemm_with(in_layout(split.hi, layout), None)
           + gemm_with(in_layout(split.lo, layout), None))
    return acc.astype(jnp.float32) * split.scale_lo
  gq, scale = quantize_groups(g, reduce_axes, qmin, qmax, key, layout=layout)
  return gemm_with(gq, scale)


def sampling_plan(scores, config: Int4Config, key):
  """Which token rows dW's GEMM keeps and their weights, from the rows' leverage scores:
  (indices (blocks, n) within each of the `config.lss_blocks` contiguous row blocks, or None for
  all rows; per-kept-row weights, or None for no reweighting)."""
  m = scores.shape[0]
  if config.lss == "off" or m == 0:
    return None, None
  if config.lss == "nonzero":
    return None, sampling.nonzero_weights(scores)
  blocks = config.lss_blocks
  if m % blocks:
    raise ValueError(f"Int4Config(lss_blocks={blocks}) samples dW's {m} token rows in {blocks} "
                     "equal blocks; set lss_blocks to a divisor of the token count (the "
                     "data-parallel size), or 1")
  rows = m // blocks
  # Each block is water-filled to its own share of the budget (no sort across blocks).
  per_block = lambda s, budget: (sampling.leverage_probabilities(s[0], budget)[None] if blocks == 1
                                 else jax.vmap(sampling.leverage_probabilities, (0, None))(
                                     s, budget))
  scores = scores.reshape(blocks, rows)
  if config.lss == "bernoulli":
    p = per_block(scores, config.lss_budget * rows)
    return None, sampling.bernoulli_weights(key, p.reshape(m))
  n = max(1, round(config.lss_budget * rows))
  if n >= rows:
    return None, None
  p = per_block(scores, n)
  idx, filled = sampling.systematic_indices(key, p, n)
  p_kept = jnp.take_along_axis(p, idx, axis=1)
  keep = filled & (p_kept > 0)  # empty slots (padded batches) and p = 0 rows weigh nothing
  inverse = jnp.where(keep, 1.0 / jnp.where(keep, p_kept, 1.0), 0.0)
  return idx, inverse.reshape(-1)


def apply_plan(plan, weighted, *others):
  """Rows of `weighted` kept and reweighted by `plan`, and the same rows of each of `others`.
  Rows are gathered within their block, so a block that lives on one device stays there."""
  idx, weights = plan
  if idx is not None:
    blocks = idx.shape[0]
    pick = lambda a: (a[idx[0]] if blocks == 1 else jnp.take_along_axis(
        a.reshape(blocks, -1, a.shape[-1]), idx[:, :, None], axis=1).reshape(-1, a.shape[-1]))
    weighted, others = pick(weighted), tuple(pick(o) for o in others)
  if weights is not None:
    weighted = weighted * weights[:, None]
  return (weighted,) + tuple(others)


def sample_rows(g, xq, config: Int4Config, key, x_transposed: bool = False):
  """Leverage-score sampling of the token rows of dW's GEMM: (weighted g rows, matching xq rows).
  A row's score is ||g_i|| ||xq_i||, proportional to ||dY_i|| ||X~_i|| when g = dY * s_X.
  x_transposed: xq is Xq^T (K, M), and its matching columns are kept instead."""
  if config.lss == "off":
    return g, xq
  scores = jnp.linalg.norm(g, axis=1) * _int_norms(xq, 0 if x_transposed else 1)
  plan = sampling_plan(scores, config, key)
  if not x_transposed:
    return apply_plan(plan, g, xq)
  (g,) = apply_plan(plan, g)
  return g, _kept_columns(plan, xq)


def _int_norms(q, axis: int):
  """The Euclidean norms of int8 q along `axis`: squares summed in int32, which is exact in any
  order (the forward's length check bounds K * max|q|^2 by 2^31 - 1), then one float sqrt."""
  return jnp.sqrt(jnp.sum(jnp.square(q.astype(jnp.int32)), axis=axis).astype(jnp.float32))


def _kept_columns(plan, a):
  """The columns of a (K, M) that `plan` keeps, in the order apply_plan keeps rows."""
  idx, _ = plan
  if idx is None:
    return a
  blocks = idx.shape[0]
  if blocks == 1:
    return a[:, idx[0]]
  per_block = a.reshape(a.shape[0], blocks, -1)
  return jnp.take_along_axis(per_block, idx[None], axis=2).reshape(a.shape[0], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _int4_matmul(config: Int4Config, xh, wh, scales, key):
  return _forward(config, xh, wh, scales, key)[0]


def _forward(config, xh, wh, scales, key):
  op_max = _operand_max(config)
  _check_length(xh.shape[1], op_max, op_max, "forward")
  k_major = backend.k_major(config.backend)
  layout = "both" if k_major else "as_is"
  if config.fsdp_axis is None:
    xq, sx, wq, sw = forward_quantize(xh, wh, config, scales, key, layout)
    shards = None
  else:  # FSDP: the backward gathers the packed shards again rather than keep the whole wq
    key_x, key_w = forward_keys(key, config)
    xq, sx = quantize_operand(xh, 1, config, key_x, layout)
    wq, sw, shards = _fsdp_quantized_weight(wh, config, key_w)
    wq = in_layout(wq, layout)
  if k_major:  # Y from Xq (M, K) and Wq^T (N, K); Xq^T (K, M) kept for dW, Wq (K, N) for dX
    (xq, x_kept), (w_kept, wq_t) = xq, wq
    y = backend.scaled_gemm(config.backend)(xq, wq_t, ((1,), (1,)), sx, sw)
  else:
    x_kept, w_kept = xq, wq
    y = backend.scaled_gemm(config.backend)(xq, wq, ((1,), (0,)), sx, sw)
  lsq = (xh, wh, scales) if config.scale_mode == "lsq" else None
  kept = w_kept if shards is None else shards
  if config.pack_residuals:
    x_kept, kept = _pack_residuals(config, xh, wh, x_kept, kept, k_major, shards is None, key)
  return y, (x_kept, sx, kept, sw, key, lsq, wh.shape[0])


class _Packed(NamedTuple):
  """A residual INT4 operand, packed K-major (packing.pack_weight_operand)."""
  values: jax.Array
  multipliers: Optional[jax.Array]


def _pack_residuals(config, xh, wh, x_kept, w_kept, k_major: bool, pack_w: bool, key):
  """The backward's INT4 operands packed (packing.pack_weight_operand: K-major nibbles and
  multipliers), X as its (Kp, M) transpose; the FSDP weight stays as its shards."""
  key_x, key_w = forward_keys(key, config)
  mx = operand_multipliers(xh, 1, config, stochastic=key_x is not None)
  x_kmajor = x_kept if k_major else x_kept.T  # (Kp, M)
  x_packed = _Packed(*packing.pack_weight_operand(x_kmajor, None if mx is None else mx.T))
  if not pack_w:
    return x_packed, w_kept
  return x_packed, _Packed(*packing.pack_weight_operand(
      w_kept, operand_multipliers(wh, 0, config, stochastic=key_w is not None)))


def _unpack_residuals(config, xq, wq, padded: int, k_major: bool):
  x_kmajor = packing.unpack_weight_operand(*xq, padded, config.scale_group)
  xq = x_kmajor if k_major else x_kmajor.T
  if isinstance(wq, _Packed):  # else FSDP's shards, regathered below
    wq = packing.unpack_weight_operand(*wq, padded, config.scale_group)
  return xq, wq


@jax.custom_jvp
def _first_order_only(floats):
  """Identity; differentiating it raises. The backward's float inputs pass through it, so
  differentiating the backward (jax.grad of a function that calls jax.grad through int4_linear:
  gradient penalties, MAML) raises instead of returning a wrong second derivative: the backward
  quantizes dY and reuses the forward's rounded operands, whose derivatives are not defined."""
  return floats


@_first_order_only.defjvp
def _first_order_only_jvp(primals, tangents):
  raise ValueError(
      "int4_linear: a second derivative (jax.grad of a function that itself takes jax.grad "
      "through an INT4 layer, e.g. a gradient penalty or MAML's inner step) is not defined: "
      "the backward GEMMs quantize dY and reuse the forward's INT4 operands. Keep the layers "
      "that the inner gradient flows through in float (QuantRule(path=..., config=None)), or "
      "stop the outer gradient at the inner one (jax.lax.stop_gradient)")


def _backward(config, residuals, dy):
  # xq is Xq (M, K), or Xq^T (K, M) for a K-major backend; wq is Wq (K, N) either way.
  xq, sx, wq, sw, key, lsq, padded = residuals
  dy, sx, sw, lsq = _first_order_only((dy, sx, sw, lsq))
  k_major = backend.k_major(config.backend)
  if config.pack_residuals:
    xq, wq = _unpack_residuals(config, xq, wq, padded, k_major)
  if isinstance(wq, tuple):  # FSDP's packed shards
    wq = fsdp.regather(wq, config, padded)
  if key is None and config.needs_key:
    raise ValueError(validation.missing_key_message(config))
  key_dx, key_dw, key_lss = backward_keys(key)
  dy = dy.astype(jnp.float32)
  sgemm, igemm = backend.scaled_gemm(config.backend), backend.int_gemm(config.backend)
  g_dx = dy * sw
  g_dw = dy * sx
  # A NaN row poisons its dW column. Quantized, that column's scale is NaN (sampling always
  # keeps such a row: its score is not finite, so p = 1); the float backward marks it here.
  col_finite = (jnp.all(jnp.isfinite(g_dw), axis=0, keepdims=True)
                if config.grad_mode == "float" else None)
  g_dw, x_rows = sample_rows(g_dw, xq, config, key_lss, x_transposed=k_major)
  if config.grad_mode == "float":
    dxh = g_dx @ wq.astype(jnp.float32).T
    x_rows_t = x_rows.astype(jnp.float32) if k_major else x_rows.astype(jnp.float32).T
    dwh = jnp.where(col_finite, x_rows_t @ g_dw, jnp.nan)
  else:
    g_max, x_max = _grad_int_max(config), _operand_max(config)
    _check_length(g_dx.shape[1], g_max, x_max, "dX")
    _check_length(g_dw.shape[0], g_max, x_max, "dW")
    # dX = Q(g_dx) Wq^T: Q's scales are per row of dX; dW = Xq^T Q(g_dw): per column of dW.
    dxh = _quantized_product(
        g_dx, 1, lambda a, s: (igemm(a, wq, ((1,), (1,))) if s is None else
                               sgemm(a, wq, ((1,), (1,)), s, None)), config, key_dx)
    # K-major: Xq^T (K, M) with Q(g_dw) quantized straight into (N, M).
    dw_dims = ((1,), (1,)) if k_major else ((0,), (0,))
    dwh = _quantized_product(
        g_dw, 0, lambda a, s: (igemm(x_rows, a, dw_dims) if s is None else
                               sgemm(x_rows, a, dw_dims, None, s)), config, key_dw,
        layout="transposed" if k_major else "as_is")
  if config.fsdp_axis is not None:
    dwh = fsdp.shard_columns(dwh, config)
  if lsq is None:
    return dxh, dwh, None, None
  xh, wh, (sx_lsq, sw_lsq) = lsq
  dxh, dsx = _lsq_backward(xh, sx_lsq, dxh, config)
  dwh, dsw = _lsq_backward(wh, sw_lsq, dwh, config)
  return dxh, dwh, (dsx, dsw), None


def _lsq_backward(t, scale, dt_bar, config):
  """Gradients through t_bar = scale * clip(round(t / scale)): clip mask and LSQ step size."""
  qmin, qmax = config.forward_qrange
  v = t / scale
  inside = (v >= qmin) & (v <= qmax)
  dq_ds = jnp.round(jnp.clip(v, qmin, qmax)) - jnp.where(inside, v, 0.0)
  dscale = jnp.sum(dt_bar * dq_ds) * quantize.lsq_grad_scale(t.size, qmax)
  return jnp.where(inside, dt_bar, 0.0), dscale


_int4_matmul.defvjp(_forward, _backward)
