"""jax-triton integer GEMM with a fused dequantization epilogue (the "triton" backend).

Same contract as `pallas_gemm.scaled_gemm_pallas` (and the same reference,
`pallas_gemm.scaled_gemm_reference`): C = (A_int @ B_int) * row[:, None] * col[None, :] (+ bias),
the smaller scale multiplied first, int32 accumulation with `tl.dot(..., out_dtype=tl.int32)` on int8 tiles (s8 tensor cores), any
M, N, K (masked loads; no padding copies), operand layouts given by strides.

jax-triton needs a CUDA jaxlib and the `triton` package (`pip install "int4jax[triton]"`); its
import raises on a CPU-only jaxlib. This module always imports: `AVAILABLE` says whether the
kernel can run and `IMPORT_ERROR` why not, and `scaled_gemm_triton` raises that reason. Where
`triton` alone imports (`HAS_TRITON`), `compile_for_cuda` compiles the kernel for a GPU
architecture without a GPU, which checks it and shows its PTX.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from int4jax.kernels.int_gemm import check_int8_operands, gemm_shape
from int4jax.kernels.layout import scale_vector
from int4jax.kernels.pallas_gemm import GemmBlocks

try:  # guarded: the triton package is an optional extra
  import triton
  import triton.language as tl
  HAS_TRITON, IMPORT_ERROR = True, None
except ImportError as e:
  HAS_TRITON, IMPORT_ERROR = False, f"{type(e).__name__}: {e}"

try:  # jax-triton raises (RuntimeError) on a CPU-only jaxlib, ImportError when absent
  import jax_triton
  AVAILABLE = HAS_TRITON
except Exception as e:
  AVAILABLE = False
  IMPORT_ERROR = IMPORT_ERROR or f"{type(e).__name__}: {e}"

if HAS_TRITON:  # defined wherever triton imports, so it can be compiled for sm_90 on a CPU

  @triton.jit
  def _scaled_gemm_kernel(a_ptr, b_ptr, row_ptr, col_ptr, bias_ptr, c_ptr, M: tl.constexpr,
                          N: tl.constexpr, K: tl.constexpr, stride_am: tl.constexpr,
                          stride_ak: tl.constexpr, stride_bk: tl.constexpr,
                          stride_bn: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr):
    # int64 offsets: row * stride overflows int32 once M*K or K*N reaches 2^31.
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
      kk = k0 + rk
      a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
                  mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
      b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
                  mask=(kk[:, None] < K) & (rn[None, :] < N), other=0)
      acc += tl.dot(a, b, out_dtype=tl.int32)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    c_ptrs = c_ptr + rm[:, None] * N + rn[None, :]
    if EPILOGUE:
      row = tl.load(row_ptr + rm, mask=rm < M, other=0.0)
      col = tl.load(col_ptr + rn, mask=rn < N, other=0.0)
      r, c = row[:, None], col[None, :]  # the smaller scale first; NaN propagates
      out = (acc.to(tl.float32) * tl.minimum(r, c, propagate_nan=tl.PropagateNan.ALL)
             * tl.maximum(r, c, propagate_nan=tl.PropagateNan.ALL))
      if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
      tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask)
    else:
      tl.store(c_ptrs, acc, mask=mask)


@functools.partial(jax.jit, static_argnames=("contracting", "blocks", "out_dtype"))
def scaled_gemm_triton(a: jax.Array, b: jax.Array, row_scale=None, col_scale=None,
                       bias: Optional[jax.Array] = None, *, contracting=((1,), (0,)),
                       blocks: GemmBlocks = GemmBlocks(), out_dtype=None) -> jax.Array:
  """See `pallas_gemm.scaled_gemm_pallas`; raises RuntimeError where jax-triton cannot run."""
  if not AVAILABLE:
    raise RuntimeError("int4jax backend 'triton' needs jax-triton and a CUDA jaxlib "
                       f"(pip install 'int4jax[triton]'); import failed: {IMPORT_ERROR}")
  check_int8_operands(a, b)
  (ca,), (cb,) = contracting
  m, n, k = gemm_shape(a, b, contracting)
  epilogue = row_scale is not None or col_scale is not None or bias is not None
  out_dtype = jnp.dtype(out_dtype or (jnp.float32 if epilogue else jnp.int32))
  # s8 wgmma reads both operands K-major from shared memory. Triton pipelines (cp.async) only
  # the loads of K-major operands; a (K, N) B tile is loaded synchronously and transposed in
  # registers (tests/test_pallas_kernels.py reads it in the PTX). So operands that are not
  # K-major are transposed here first, by XLA: one int8 copy.
  a_km = a if ca == 1 else a.T  # (M, K)
  b_nk = b if cb == 1 else b.T  # (N, K)
  row = scale_vector(row_scale, m, "row_scale")
  col = scale_vector(col_scale, n, "col_scale")
  bias_v = jnp.zeros((n,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
  bm, bn, bk = blocks.block_m, blocks.block_n, blocks.block_k
  return jax_triton.triton_call(
      a_km, b_nk, row, col, bias_v, kernel=_scaled_gemm_kernel,
      out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
      grid=(-(-m // bm), -(-n // bn)), num_warps=blocks.num_warps, num_stages=blocks.num_stages,
      M=m, N=n, K=k, stride_am=k, stride_ak=1, stride_bk=1, stride_bn=k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EPILOGUE=epilogue,
      HAS_BIAS=bias is not None)


def compile_for_cuda(arch: int = 90, *, transposed_b: bool = True, epilogue: bool = True,
                     blocks: GemmBlocks = GemmBlocks(), shape=(1024, 1024, 1024),
                     aligned: bool = True):
  """The kernel compiled by Triton for sm_<arch> with no GPU: {'ptx': ..., 'ttgir': ...}.

  transposed_b: B given K-major as (N, K), as `scaled_gemm_triton` passes it (False: (K, N)).
  aligned: the pointers marked 16-byte aligned, as jax-triton marks the buffers of a real launch
  (Triton vectorises and pipelines loads only when it knows the alignment)."""
  if not HAS_TRITON:
    raise RuntimeError(f"compiling the triton kernel needs the triton package; {IMPORT_ERROR}")
  from triton.backends.compiler import GPUTarget
  m, n, k = shape
  strides = dict(stride_am=k, stride_ak=1, stride_bk=1 if transposed_b else n,
                 stride_bn=k if transposed_b else 1)
  constexprs = dict(M=m, N=n, K=k, **strides, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
                    BLOCK_K=blocks.block_k, EPILOGUE=epilogue, HAS_BIAS=False)
  signature = {"a_ptr": "*i8", "b_ptr": "*i8", "row_ptr": "*fp32", "col_ptr": "*fp32",
               "bias_ptr": "*fp32", "c_ptr": "*bf16" if epilogue else "*i32",
               **{name: "constexpr" for name in constexprs}}
  pointers = [i for i, kind in enumerate(signature.values()) if kind.startswith("*")]
  attrs = {(i,): [["tt.divisibility", 16]] for i in pointers} if aligned else {}
  src = triton.compiler.ASTSource(fn=_scaled_gemm_kernel, signature=signature,
                                  constexprs=constexprs, attrs=attrs)
  compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": blocks.num_warps,
                                     "num_stages": blocks.num_stages})
  return {name: compiled.asm[name] for name in ("ttgir", "ptx")}
