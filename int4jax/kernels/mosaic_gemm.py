"""Pallas Mosaic GPU integer GEMMs for Hopper: s8 wgmma, int32 accumulator, fused epilogue.

    C = (A_int @ B_int) * row_scale[:, None] * col_scale[None, :]        (M, N), float out

Same contract and reference as `pallas_gemm` (`scaled_gemm_reference`), for the layouts the
tensor cores read without a copy: A is (M, K) and B is given as B^T, (N, K), both K-major, as
integer wgmma requires. TMA copies int8 tiles of A and B^T into swizzled shared memory through a
`max_concurrent_steps`-deep pipeline over K. Each step issues one wgmma into the int32
accumulator and then waits only until at most `wgmma_in_flight` (1 by default) are still running,
so the tensor cores work on step k while step k+1 is issued. A stage's shared-memory buffers are
refilled only once the wgmma that reads them has finished: the pipeline delays their release by
the same count (`BlockSpec(delay_release=...)`), and the last wgmma is awaited before the
epilogue. Two kernels (`MosaicBlocks.consumer_warpgroups`):
  1  one warpgroup per CTA issues the copies and the wgmmas of a (tile_m, tile_n) tile;
  2  warp-specialized: a producer warpgroup issues the TMA copies, and two consumer warpgroups
     each run the wgmmas of tile_m rows of a (2 tile_m, tile_n) tile against the shared B^T tile.
The epilogue loads the two scale vectors into the accumulator's row/column layouts, scales in
float32 and stores `epilogue_rows` rows at a time through one shared-memory buffer with TMA.
`VARIANTS` are the configurations `int4jax.tune` times.

Hopper only (sm_90a); it does not run on CPU, not even in Pallas's interpreter, so its CPU tests
lower it for CUDA and read the Mosaic GPU module (wgmma types, the wait counts, the warpgroups);
tests marked `gpu` compare it with the reference on a GPU. Not persistent (one CTA per output
tile); JAX's hopper_matmul_mgpu.py shows that step.
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
  tile_m: int = 128  # rows of C per consumer warpgroup
  tile_n: int = 128
  tile_k: int = 128  # 128 int8 = one 128-byte swizzle row
  max_concurrent_steps: int = 4  # pipeline stages (shared-memory buffers per operand)
  # wgmma groups left running at the end of each step (0: wait for each before the next copy)
  wgmma_in_flight: int = 1
  # 1: one warpgroup issues the copies and the wgmmas; 2: warp-specialized, a producer warpgroup
  # issues the TMA copies and two consumer warpgroups each own tile_m rows of a 2*tile_m tile
  consumer_warpgroups: int = 1
  # rows of C written back per epilogue step (through one (epilogue_rows, tile_n) buffer)
  epilogue_rows: int = 64

  def __post_init__(self):
    if self.tile_m % 64 or self.tile_n % 8 or self.tile_k % 32:
      raise ValueError(f"MosaicBlocks needs tile_m % 64 == 0, tile_n % 8 == 0, tile_k % 32 == 0 "
                       f"(wgmma shapes), got {self}")
    if not 0 <= self.wgmma_in_flight < self.max_concurrent_steps:
      raise ValueError(f"MosaicBlocks needs 0 <= wgmma_in_flight < max_concurrent_steps (a stage "
                       f"still read by a running wgmma cannot be refilled), got {self}")
    if self.consumer_warpgroups not in (1, 2):
      raise ValueError(f"MosaicBlocks.consumer_warpgroups must be 1 or 2, got {self}")
    if self.epilogue_rows % 64 or self.tile_m % self.epilogue_rows:
      raise ValueError(f"MosaicBlocks.epilogue_rows must be a multiple of 64 dividing tile_m, "
                       f"got {self}")

  @property
  def cta_rows(self) -> int:
    """Rows of C one CTA computes."""
    return self.tile_m * self.consumer_warpgroups


# The configurations `int4jax.tune` times for the "mosaic" backend (the default first) and the
# GEMM benchmark reports, by name.
VARIANTS = {
    "1wg": MosaicBlocks(),
    "1wg-wait0": MosaicBlocks(wgmma_in_flight=0),  # each wgmma awaited: what overlap buys
    "2wg": MosaicBlocks(consumer_warpgroups=2, max_concurrent_steps=3),
    "2wg-k64x4": MosaicBlocks(consumer_warpgroups=2, tile_k=64, max_concurrent_steps=4),
}

HOPPER_SHARED_MEMORY = 227 * 1024  # bytes of shared memory one CTA can have on sm_90


def shared_memory_bytes(blocks: MosaicBlocks, out_dtype=jnp.float32) -> int:
  """The shared memory a kernel with `blocks` allocates, barriers aside: the pipeline's int8
  stages, the epilogue buffers and the scale vectors."""
  stages = blocks.max_concurrent_steps * (blocks.cta_rows + blocks.tile_n) * blocks.tile_k
  out = (blocks.consumer_warpgroups * blocks.epilogue_rows * blocks.tile_n
         * jnp.dtype(out_dtype).itemsize)
  scales = blocks.consumer_warpgroups * (blocks.tile_m + blocks.tile_n) * 4
  return stages + out + scales


def _swizzle_transforms(minor_elems: int, dtype):
  bits = jnp.dtype(dtype).itemsize * 8
  swizzle = plgpu.find_swizzle(minor_elems * bits)
  return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def _in_specs(blocks: MosaicBlocks):
  """The pipeline's A (cta_rows, tile_k) and B^T (tile_n, tile_k) tiles of K step k; a stage is
  released `wgmma_in_flight` steps late, when the wgmma reading it has finished."""
  transforms = _swizzle_transforms(blocks.tile_k, jnp.int8)
  spec = lambda rows: plgpu.BlockSpec((rows, blocks.tile_k), lambda k: (0, k),
                                      transforms=transforms,
                                      delay_release=blocks.wgmma_in_flight)
  return [spec(blocks.cta_rows), spec(blocks.tile_n)]


def _epilogue(acc_ref, row_smem, col_smem, out_smem, out_gmem, m0, n_slice, blocks):
  """C rows m0 .. m0 + tile_m: acc * min(row, col) * max(row, col) in float32, written to out_gmem
  through out_smem (epilogue_rows, tile_n), one TMA store per epilogue_rows rows."""
  tm, tn, er = blocks.tile_m, blocks.tile_n, blocks.epilogue_rows
  acc = acc_ref[...].astype(jnp.float32)
  row = plgpu.load(row_smem, (), layout=plgpu.Layout.WGMMA.reduce(1))
  col = plgpu.load(col_smem, (), layout=plgpu.Layout.WGMMA.reduce(0))
  row, col = lax.broadcast_in_dim(row, (tm, tn), [0]), lax.broadcast_in_dim(col, (tm, tn), [1])
  out = acc * jnp.minimum(row, col) * jnp.maximum(row, col)  # the smaller scale first
  for i in range(tm // er):
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous store has read the buffer
    out_smem[...] = out[i * er:(i + 1) * er].astype(out_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(out_smem, out_gmem.at[pl.ds(m0 + i * er, er), n_slice])
  plgpu.wait_smem_to_gmem(0)


def _out_buffer(blocks: MosaicBlocks, dtype, copies: int = 1):
  shape = (blocks.epilogue_rows, blocks.tile_n)
  return plgpu.SMEM(shape if copies == 1 else (copies, *shape), dtype,
                    transforms=_swizzle_transforms(blocks.tile_n, dtype))


def _kernel(a_gmem, bt_gmem, row_gmem, col_gmem, out_gmem, *, blocks: MosaicBlocks, k_iters):
  """One warpgroup: it issues the pipeline's copies and the wgmmas of a (tile_m, tile_n) tile."""
  tm, tn = blocks.tile_m, blocks.tile_n
  m0 = lax.axis_index("m") * tm
  n_slice = pl.ds(lax.axis_index("n") * tn, tn)

  def scoped(acc_ref, row_smem, col_smem, out_smem, barriers):
    plgpu.copy_gmem_to_smem(row_gmem.at[pl.ds(m0, tm)], row_smem, barriers.at[0])
    plgpu.copy_gmem_to_smem(col_gmem.at[n_slice], col_smem, barriers.at[1])
    in_flight = blocks.wgmma_in_flight

    def step(_, a_smem, bt_smem):
      plgpu.wgmma(acc_ref, a_smem, plgpu.transpose_ref(bt_smem, (1, 0)))
      # The stage read `in_flight` steps ago is refilled after this body (delay_release), so
      # its wgmma must be done: at most `in_flight` newer ones may still run.
      plgpu.wgmma_wait(in_flight)

    plgpu.emit_pipeline(
        step, grid=(k_iters,), in_specs=_in_specs(blocks),
        max_concurrent_steps=blocks.max_concurrent_steps,
    )(a_gmem.at[pl.ds(m0, tm), :], bt_gmem.at[n_slice, :])
    plgpu.wgmma_wait(0)  # the last steps' wgmmas, before the accumulator is read
    plgpu.barrier_wait(barriers.at[0])
    plgpu.barrier_wait(barriers.at[1])
    _epilogue(acc_ref, row_smem, col_smem, out_smem, out_gmem, m0, n_slice, blocks)

  pl.run_scoped(
      scoped,
      plgpu.ACC((tm, tn), jnp.int32),
      plgpu.SMEM((tm,), jnp.float32),
      plgpu.SMEM((tn,), jnp.float32),
      _out_buffer(blocks, out_gmem.dtype),
      plgpu.Barrier(num_barriers=2),
  )


def _kernel_warp_specialized(a_gmem, bt_gmem, row_gmem, col_gmem, out_gmem, *,
                             blocks: MosaicBlocks, k_iters):
  """consumer_warpgroups=2: the last warpgroup only issues the pipeline's TMA copies; each of the
  two others runs wgmmas on its tile_m rows of the shared A tile against the same B^T tile, then
  its own epilogue (its own scale and output buffers)."""
  tm, tn, wgs = blocks.tile_m, blocks.tile_n, blocks.consumer_warpgroups
  cta_m0 = lax.axis_index("m") * blocks.cta_rows
  n_slice = pl.ds(lax.axis_index("n") * tn, tn)
  in_flight = blocks.wgmma_in_flight

  def step(_, a_smem, bt_smem, acc_ref):
    rows = pl.ds(lax.axis_index("wg") * tm, tm)
    plgpu.wgmma(acc_ref, a_smem.at[rows], plgpu.transpose_ref(bt_smem, (1, 0)))
    plgpu.wgmma_wait(in_flight)  # as in _kernel: the delayed stage's wgmma is done
    return acc_ref

  def scoped(row_smem, col_smem, out_smem, barriers):
    def consumer(run_pipeline):  # runs on each consumer warpgroup
      wg = lax.axis_index("wg")
      m0 = cta_m0 + wg * tm
      plgpu.copy_gmem_to_smem(row_gmem.at[pl.ds(m0, tm)], row_smem.at[wg], barriers.at[2 * wg])
      plgpu.copy_gmem_to_smem(col_gmem.at[n_slice], col_smem.at[wg], barriers.at[2 * wg + 1])

      def with_acc(acc_ref):
        run_pipeline(acc_ref)
        plgpu.wgmma_wait(0)
        plgpu.barrier_wait(barriers.at[2 * wg])
        plgpu.barrier_wait(barriers.at[2 * wg + 1])
        _epilogue(acc_ref, row_smem.at[wg], col_smem.at[wg], out_smem.at[wg], out_gmem, m0,
                  n_slice, blocks)
      pl.run_scoped(with_acc, plgpu.ACC((tm, tn), jnp.int32))

    plgpu.emit_pipeline_warp_specialized(
        step, grid=(k_iters,), memory_registers=40, in_specs=_in_specs(blocks), wg_axis="wg",
        num_compute_wgs=wgs, max_concurrent_steps=blocks.max_concurrent_steps,
        compute_context=consumer,
    )(a_gmem.at[pl.ds(cta_m0, blocks.cta_rows), :], bt_gmem.at[n_slice, :])

  pl.run_scoped(
      scoped,
      plgpu.SMEM((wgs, tm), jnp.float32),
      plgpu.SMEM((wgs, tn), jnp.float32),
      _out_buffer(blocks, out_gmem.dtype, copies=wgs),
      plgpu.Barrier(num_barriers=2 * wgs),
      collective_axes="wg",
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
  if shared_memory_bytes(blocks, out_dtype) > HOPPER_SHARED_MEMORY:
    raise ValueError(f"{blocks} with {out_dtype} output needs "
                     f"{shared_memory_bytes(blocks, out_dtype)} bytes of shared memory, over "
                     f"Hopper's {HOPPER_SHARED_MEMORY}; lower max_concurrent_steps, tile_k or "
                     "epilogue_rows")
  (m, k), n = a.shape, b_t.shape[0]
  cm, tn, tk = blocks.cta_rows, blocks.tile_n, blocks.tile_k
  mp, np_, kp = round_up(max(m, 1), cm), round_up(max(n, 1), tn), round_up(max(k, 1), tk)
  row = pad_to(scale_vector(row_scale, m, "row_scale"), (mp,))
  col = pad_to(scale_vector(col_scale, n, "col_scale"), (np_,))
  specialized = blocks.consumer_warpgroups > 1
  threads = (dict(num_threads=blocks.consumer_warpgroups + 1, thread_name="wg") if specialized
             else {})
  call = plgpu.kernel(
      functools.partial(_kernel_warp_specialized if specialized else _kernel, blocks=blocks,
                        k_iters=kp // tk),
      out_type=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(mp // cm, np_ // tn),
      grid_names=("m", "n"),
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Lane),
      **threads,
  )
  out = call(pad_to(a, (mp, kp)), pad_to(b_t, (np_, kp)), row, col)
  return out[:m, :n]
