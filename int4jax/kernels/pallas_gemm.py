"""Pallas (Triton lowering) integer GEMM with a fused dequantization epilogue.

    C = (A_int @ B_int) * row_scale[:, None] * col_scale[None, :] (+ bias)      int32 accumulation

A and B hold INT4 values in int8. One program computes a (block_m, block_n) tile of C, looping
over K in block_k steps; each step is an int8 x int8 -> int32 `pl.dot`, which Triton compiles to
s8 tensor-core MMAs (wgmma on sm_90, mma on sm_80/89). The epilogue multiplies in the same order
as `scaled_gemm_reference` (acc times the smaller of its row and column scales, then the larger,
then + bias, all float32), so both give the same float32 bits. Smaller first: the first product
cannot overflow where C is finite (|x| near 3e36 overflowed acc * row before the small column
scale applied), nor underflow (|acc| >= 1 times a normal scale). Without scales the kernel
returns the int32 accumulator.

Operand layouts follow `lax.dot_general`'s contracting dims: A is (M, K) or (K, M), B is (K, N)
or (N, K). Any M, N, K: the operands are zero-padded to whole blocks (zeros add nothing to an
integer sum) and the result is sliced back.

`interpret=True` runs the kernel through Pallas's interpreter (CPU tests); on GPU the Triton
lowering is chosen explicitly by passing Triton compiler params.
"""

import dataclasses
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from int4jax.kernels.int_gemm import check_int8_operands, gemm_shape
from int4jax.kernels.layout import pad_to, round_up, scale_vector


@dataclasses.dataclass(frozen=True)
class GemmBlocks:
  """Tile sizes of one program (powers of two, as Triton requires) and its launch params."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 3

  def __post_init__(self):
    for name in ("block_m", "block_n", "block_k"):
      v = getattr(self, name)
      if v < 16 or v & (v - 1):
        raise ValueError(f"GemmBlocks.{name} must be a power of two >= 16 (Triton's dot), got {v}")


def _kernel(a_ref, b_ref, *rest, trans_a, trans_b, block_k, num_k, has_scales, has_bias):
  o_ref = rest[-1]
  block_m, block_n = o_ref.shape

  def step(k, acc):
    ks = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
    a = a_ref[ks, :] if trans_a else a_ref[:, ks]
    b = b_ref[:, ks] if trans_b else b_ref[ks, :]
    return acc + plt.dot(a, b, trans_a=trans_a, trans_b=trans_b)

  acc = lax.fori_loop(0, num_k, step, jnp.zeros((block_m, block_n), jnp.int32))
  if not has_scales:
    o_ref[...] = acc
    return
  row, col = rest[0][...][:, None], rest[1][...][None, :]
  out = acc.astype(jnp.float32) * jnp.minimum(row, col) * jnp.maximum(row, col)
  if has_bias:
    out = out + rest[2][...][None, :]
  o_ref[...] = out.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("contracting", "blocks", "out_dtype", "interpret"))
def scaled_gemm_pallas(a: jax.Array, b: jax.Array, row_scale=None, col_scale=None, bias=None, *,
                       contracting: Tuple[Tuple[int], Tuple[int]] = ((1,), (0,)),
                       blocks: GemmBlocks = GemmBlocks(), out_dtype=None,
                       interpret: bool = False) -> jax.Array:
  """(M, N) = A_int @ B_int (int32), times the rank-1 scales, plus bias, in out_dtype.

  With no row_scale, col_scale or bias the result is the int32 accumulator (out_dtype must then
  be None or int32). Scales: a scalar or one value per row of C (row_scale) / column (col_scale).
  """
  check_int8_operands(a, b)
  (ca,), (cb,) = contracting
  m, n, k = gemm_shape(a, b, contracting)
  trans_a, trans_b = ca == 0, cb == 1
  has_scales = row_scale is not None or col_scale is not None or bias is not None
  if out_dtype is None:
    out_dtype = jnp.float32 if has_scales else jnp.int32
  out_dtype = jnp.dtype(out_dtype)
  if not has_scales and out_dtype != jnp.int32:
    raise ValueError(f"without scales the GEMM returns int32, got out_dtype={out_dtype}")
  if has_scales and not jnp.issubdtype(out_dtype, jnp.floating):
    raise ValueError(f"a scaled GEMM returns a float dtype, got out_dtype={out_dtype}")

  bm, bn, bk = blocks.block_m, blocks.block_n, blocks.block_k
  mp, np_, kp = round_up(max(m, 1), bm), round_up(max(n, 1), bn), round_up(max(k, 1), bk)
  a = pad_to(a, (kp, mp) if trans_a else (mp, kp))
  b = pad_to(b, (np_, kp) if trans_b else (kp, np_))
  operands = [a, b]
  in_specs = [
      pl.BlockSpec((kp, bm), lambda i, j: (0, i)) if trans_a else
      pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
      pl.BlockSpec((bn, kp), lambda i, j: (j, 0)) if trans_b else
      pl.BlockSpec((kp, bn), lambda i, j: (0, j)),
  ]
  has_bias = bias is not None
  if has_scales:
    operands += [pad_to(scale_vector(row_scale, m, "row_scale"), (mp,)),
                 pad_to(scale_vector(col_scale, n, "col_scale"), (np_,))]
    in_specs += [pl.BlockSpec((bm,), lambda i, j: (i,)), pl.BlockSpec((bn,), lambda i, j: (j,))]
    if has_bias:
      bias = jnp.asarray(bias, jnp.float32)
      if bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
      operands.append(pad_to(bias, (np_,)))
      in_specs.append(pl.BlockSpec((bn,), lambda i, j: (j,)))

  kernel = functools.partial(_kernel, trans_a=trans_a, trans_b=trans_b, block_k=bk,
                             num_k=kp // bk, has_scales=has_scales, has_bias=has_bias)
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(mp // bm, np_ // bn),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      compiler_params=plt.CompilerParams(num_warps=blocks.num_warps,
                                         num_stages=blocks.num_stages),
      interpret=interpret,
      name="int4jax_scaled_gemm",
  )(*operands)
  return out[:m, :n]


def scaled_gemm_reference(a: jax.Array, b: jax.Array, row_scale=None, col_scale=None, bias=None,
                          *, contracting=((1,), (0,)), out_dtype=None) -> jax.Array:
  """Pure-jnp meaning of `scaled_gemm_pallas`: int32 product, then the float32 epilogue."""
  check_int8_operands(a, b)
  m, n, _ = gemm_shape(a, b, contracting)
  acc = lax.dot_general(a.astype(jnp.int32), b.astype(jnp.int32), (contracting, ((), ())),
                        preferred_element_type=jnp.int32)
  if row_scale is None and col_scale is None and bias is None:
    return acc
  row = scale_vector(row_scale, m, "row_scale")[:, None]
  col = scale_vector(col_scale, n, "col_scale")[None, :]
  small = jnp.where(row <= col, row, col)  # NaN-propagating by the product below
  large = jnp.where(row <= col, col, row)
  out = acc.astype(jnp.float32) * small * large
  if bias is not None:
    out = out + jnp.asarray(bias, jnp.float32)[None, :]
  return out.astype(jnp.float32 if out_dtype is None else out_dtype)
