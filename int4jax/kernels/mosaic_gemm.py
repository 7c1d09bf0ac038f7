"""Pallas Mosaic GPU integer GEMM for Hopper: s8 wgmma, int32 accumulator, fused epilogue.

    C = (A_int @ B_int) * row_scale[:, None] * col_scale[None, :]        (M, N), float out

Same contract and reference as `pallas_gemm` (`scaled_gemm_reference`), for the layouts the
tensor cores read without a copy: A is (M, K) and B is given as B^T, (N, K) — both K-major, as
integer wgmma requires. One CTA (one warpgroup) owns a (tile_m, tile_n) tile of C: TMA copies
(tile_m, tile_k) and (tile_n, tile_k) int8 tiles into swizzled shared memory through a
`max_concurrent_steps`-deep pipeline over K; each step issues one wgmma into the int32
accumulator and then waits only until at most `wgmma_in_flight` (1 by default) are still running,
so the tensor cores work on step k while step k+1 is issued. A stage's shared-memory buffers are
refilled only once the wgmma that reads them has finished: the pipeline delays their release by
the same count (`BlockSpec(delay_release=...)`), and the last wgmma is awaited before the epilogue.
The epilogue loads the two scale vectors into the accumulator's row/column layouts, scales in
float32 and stores through shared memory with TMA.

Hopper only (sm_90a); it does not run on CPU, not even in Pallas's interpreter, so its CPU tests
lower it for CUDA and read the Mosaic GPU module (wgmma types, the wait counts); tests marked
`gpu` compare it with the reference on a GPU. It is one warpgroup per CTA, not warp-specialized
and not persistent; JAX's hopper_matmul_mgpu.py shows those further steps.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from int4jax.kernels.int_gemm import check_int8_operands
from int4jax.kernels.layout import pad_to, round_up, scale_vector


@dataclasses.dataclass(frozen=True)
class MosaicBlocks:
  tile_m: int = 128
  tile_n: int = 128
  tile_k: int = 128  # 128 int8 = one 128-byte swizzle row
  max_concurrent_steps: int = 4  # pipeline stages (shared-memory buffers per operand)
  # wgmma groups left running at the end of each step (0: wait for each before the next copy)
  wgmma_in_flight: int = 1

  def __post_init__(self):
    if self.tile_m % 64 or self.tile_n % 8 or self.tile_k % 32:
      raise ValueError(f"MosaicBlocks needs tile_m % 64 == 0, tile_n % 8 == 0, tile_k % 32 == 0 "
                       f"(wgmma shapes), got {self}")
    if not 0 <= self.wgmma_in_flight < self.max_concurrent_steps:
      raise ValueError(f"MosaicBlocks needs 0 <= wgmma_in_flight < max_concurrent_steps (a stage "
                       f"still read by a running wgmma cannot be refilled), got {self}")


def _swizzle_transforms(minor_elems: int, dtype):
  bits = jnp.dtype(dtype).itemsize * 8
  swizzle = plgpu.find_swizzle(minor_elems * bits)
  return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def _kernel(a_gmem, bt_gmem, row_gmem, col_gmem, out_gmem, *, blocks: MosaicBlocks, k_iters):
  tm, tn, tk = blocks.tile_m, blocks.tile_n, blocks.tile_k
  m_slice = pl.ds(lax.axis_index("m") * tm, tm)
  n_slice = pl.ds(lax.axis_index("n") * tn, tn)
  in_transforms = _swizzle_transforms(tk, jnp.int8)

  def scoped(acc_ref, row_smem, col_smem, out_smem, barriers):
    plgpu.copy_gmem_to_smem(row_gmem.at[m_slice], row_smem, barriers.at[0])
    plgpu.copy_gmem_to_smem(col_gmem.at[n_slice], col_smem, barriers.at[1])

    in_flight = blocks.wgmma_in_flight

    def step(_, a_smem, bt_smem):
      plgpu.wgmma(acc_ref, a_smem, plgpu.transpose_ref(bt_smem, (1, 0)))
      # The stage read `in_flight` steps ago is refilled after this body (delay_release), so
      # its wgmma must be done: at most `in_flight` newer ones may still run.
      plgpu.wgmma_wait(in_flight)

    spec = lambda rows: plgpu.BlockSpec((rows, tk), lambda k: (0, k), transforms=in_transforms,
                                        delay_release=in_flight)
    plgpu.emit_pipeline(
        step, grid=(k_iters,), in_specs=[spec(tm), spec(tn)],
        max_concurrent_steps=blocks.max_concurrent_steps,
    )(a_gmem.at[m_slice, :], bt_gmem.at[n_slice, :])
    plgpu.wgmma_wait(0)  # the last steps' wgmmas, before the accumulator is read

    plgpu.barrier_wait(barriers.at[0])
    plgpu.barrier_wait(barriers.at[1])
    acc = acc_ref[...].astype(jnp.float32)
    row = plgpu.load(row_smem, (), layout=plgpu.Layout.WGMMA.reduce(1))
    col = plgpu.load(col_smem, (), layout=plgpu.Layout.WGMMA.reduce(0))
    out = (acc * lax.broadcast_in_dim(row, (tm, tn), [0])
           * lax.broadcast_in_dim(col, (tm, tn), [1]))
    out_smem[...] = out.astype(out_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(out_smem, out_gmem.at[m_slice, n_slice])
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(
      scoped,
      plgpu.ACC((tm, tn), jnp.int32),
      plgpu.SMEM((tm,), jnp.float32),
      plgpu.SMEM((tn,), jnp.float32),
      plgpu.SMEM((tm, tn), out_gmem.dtype, transforms=_swizzle_transforms(tn, out_gmem.dtype)),
      plgpu.Barrier(num_barriers=2),
  )


@functools.partial(jax.jit, static_argnames=("blocks", "out_dtype"))
def scaled_gemm_mosaic(a: jax.Array, b_t: jax.Array, row_scale=None, col_scale=None, *,
                       blocks: MosaicBlocks = MosaicBlocks(), out_dtype=jnp.float32) -> jax.Array:
  """(M, N) float = (a (M, K) @ b_t (N, K)^T) * row_scale * col_scale; any M, N, K (padded)."""
  check_int8_operands(a, b_t)
  if a.ndim != 2 or b_t.ndim != 2 or a.shape[1] != b_t.shape[1]:
    raise ValueError(f"scaled_gemm_mosaic takes a (M, K) and b_t (N, K), got {a.shape}, "
                     f"{b_t.shape}")
  out_dtype = jnp.dtype(out_dtype)
  if not jnp.issubdtype(out_dtype, jnp.floating):
    raise ValueError(f"scaled_gemm_mosaic returns a float dtype, got {out_dtype}")
  (m, k), n = a.shape, b_t.shape[0]
  tm, tn, tk = blocks.tile_m, blocks.tile_n, blocks.tile_k
  mp, np_, kp = round_up(max(m, 1), tm), round_up(max(n, 1), tn), round_up(max(k, 1), tk)
  row = pad_to(scale_vector(row_scale, m, "row_scale"), (mp,))
  col = pad_to(scale_vector(col_scale, n, "col_scale"), (np_,))
  call = plgpu.kernel(
      functools.partial(_kernel, blocks=blocks, k_iters=kp // tk),
      out_type=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(mp // tm, np_ // tn),
      grid_names=("m", "n"),
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Lane),
  )
  out = call(pad_to(a, (mp, kp)), pad_to(b_t, (np_, kp)), row, col)
  return out[:m, :n]
