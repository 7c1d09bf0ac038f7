"""The INT4 product with per-group scales (Int4Config(scale_mode="group")): forward and backward.

With K = G * g (G groups of `scale_group` = g contraction elements), X gets a scale per (token,
group) and W one per (group, output channel). A scale that varies along the contraction cannot be
applied after one integer GEMM, so each group is its own integer GEMM and the G int32 partial
products are scaled and summed in float32 (one batched lax.dot_general with the group as batch
dim; the same structure as block-scaled FP8/MX GEMMs, without their fused epilogue):

  forward   Y   = sum_G  s_X[:, G] s_W[G, :] * (Xq_G Wq_G)                       (int per G)
  backward  dX~_G = Q_rows(dY * s_W[G, :]) Wq_G^T                                  (int per G)
            dW~_G = Xq_G^T Q_cols(S(dY) * s_X[:, G])                               (int per G)

As in `int4jax.linear`, every scale on a contraction dim is folded into dY before it is
quantized, so the backward reuses the forward's INT4 Xq and Wq unchanged; the price is that dY is
quantized once per group (G copies of dY's size). The stochastic-rounding dither is drawn once
for dY's shape and shared by the G copies: each copy is still unbiased, so each dX~_G and dW~_G is.

Cost (why this is opt-in): G partial products of Y's size in int32 (memory G x |Y|), and G
quantizations of dY per backward GEMM. Exact int32 accumulation: each GEMM contracts over g
(forward), N (dX) or the token count (dW), the same bounds as the per-row op.
"""

import jax
import jax.numpy as jnp

from int4jax import backend
from int4jax.quantizers import int4_quant as quantize


def quantize_groups(t: jax.Array, group: int, axis: int, qmin: int, qmax: int):
  """(int8 values like t, scales) with one abs-max scale per `group` elements along `axis`.

  axis=1 (X, (M, K)): scales (M, G). axis=0 (W, (K, N)): scales (G, N).
  """
  if axis == 1:
    m, k = t.shape
    q, s = quantize.quantize_absmax(t.reshape(m, k // group, group), qmin, qmax, 2)
    return q.reshape(m, k), s[:, :, 0]
  k, n = t.shape
  q, s = quantize.quantize_absmax(t.reshape(k // group, group, n), qmin, qmax, 1)
  return q.reshape(k, n), s[:, 0, :]


def dequantize_groups(q: jax.Array, scales: jax.Array, group: int, axis: int) -> jax.Array:
  """The float values of `quantize_groups`' output."""
  return q.astype(jnp.float32) * jnp.repeat(scales, group, axis=axis)


def quantize_copies(g: jax.Array, reduce_axis: int, qmin: int, qmax: int, key):
  """Abs-max quantization of each of the G copies g[G] (stacked on axis 0) over `reduce_axis`,
  stochastic when `key` is given, with one dither of g[0]'s shape shared by all copies (so copy G
  rounds exactly as `quantize.quantize_absmax(g[G], ..., key)` would)."""
  scale = quantize.absmax_scale(g, qmax, reduce_axis)
  return quantize.quantize(g, scale, qmin, qmax, key, dither_shape=g.shape[1:]), scale


def forward(xq, sx, wq, sw, group: int, backend_name: str) -> jax.Array:
  """Y = sum over groups of the scaled int32 group products."""
  m, k = xq.shape
  n, n_groups = wq.shape[1], k // group
  dot = backend.grouped_int_gemm(backend_name)
  partial = dot(xq.reshape(m, n_groups, group), wq.reshape(n_groups, group, n),
                (((2,), (1,)), ((1,), (0,))))  # (G, M, N) int32
  # An explicit scaled sum: XLA:CPU turns the equivalent einsum into a dot_general that is ~3.6x
  # slower (310 ms vs 86 ms at G=48, M=2048, N=384 on 2 cores).
  return jnp.sum(partial.astype(jnp.float32) * sw[:, None, :] * sx.T[:, :, None], axis=0)


def backward_dx(g_dx, wq, group: int, quantize_grad, backend_name: str) -> jax.Array:
  """dX~ (M, K) from the G scaled copies g_dx (G, M, N) = dY * s_W[G, :]."""
  n_groups, m, n = g_dx.shape
  w3 = wq.reshape(n_groups, group, n)
  if quantize_grad is None:  # float backward
    out = jnp.einsum("gmn,gkn->gmk", g_dx, w3.astype(jnp.float32))
  else:
    v, scale = quantize_grad(g_dx, 2)  # per (group, token) row
    out = backend.grouped_int_gemm(backend_name)(v, w3, (((2,), (2,)), ((0,), (0,))))
    out = out.astype(jnp.float32) * scale
  return out.transpose(1, 0, 2).reshape(m, n_groups * group)


def backward_dw(g_dw, xq, finite, group: int, quantize_grad, backend_name: str) -> jax.Array:
  """dW~ (K, N) from the G scaled copies g_dw (G, M, N) = S(dY) * s_X[:, G] and the Xq rows.

  finite (G, 1, N): False where dY * s_X[:, G] had a non-finite entry in that column before
  sampling; those columns of dW~ are NaN (a NaN row poisons its column, as in the per-row op).
  """
  n_groups, m, n = g_dw.shape
  # (M, G, g) contracted over M: XLA:CPU runs this layout 11x faster than an explicit transpose
  # to (G, g, M) (12 ms vs 136 ms at G=48, M=2048, N=384).
  x3 = xq.reshape(m, n_groups, group)
  if quantize_grad is None:
    out = jnp.einsum("mgk,gmn->gkn", x3.astype(jnp.float32), g_dw)
  else:
    v, scale = quantize_grad(g_dw, 1)  # per (group, output channel) column
    out = backend.grouped_int_gemm(backend_name)(x3, v, (((0,), (1,)), ((1,), (0,))))
    out = out.astype(jnp.float32) * scale
  return jnp.where(finite, out, jnp.nan).reshape(n_groups * group, n)
