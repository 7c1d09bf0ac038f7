""""pallas": Pallas with the Triton lowering (int4jax/kernels/pallas_gemm.py), the epilogue fused,
and the fused quantizer (int4jax/kernels/pallas_quantize.py) for per-row (two-level) operands.
Per-tensor and clipped scales use the jnp quantizer (logged). Compiled on a CUDA GPU; interpreted
on CPU (slow, for tests). Tile sizes come from `int4jax.tune` (a lookup under jit; untuned
shapes use the first candidate, logged)."""

import jax
import jax.numpy as jnp

from int4jax import tuning
from int4jax.backends.base import (GPU, Backend, check_layout, log_once, quantize_jnp, register,
                                   static_contracting)
from int4jax.kernels import int_gemm, pallas_gemm, pallas_quantize
from int4jax.quantizers.int4_quant import dither_seed

# Tile sizes `int4jax.tune` tries for the GEMM (the default first).
BLOCK_CANDIDATES = (
    pallas_gemm.GemmBlocks(128, 128, 64, num_warps=4, num_stages=3),
    pallas_gemm.GemmBlocks(128, 256, 64, num_warps=8, num_stages=3),
    pallas_gemm.GemmBlocks(256, 128, 64, num_warps=8, num_stages=3),
    pallas_gemm.GemmBlocks(128, 128, 128, num_warps=4, num_stages=4),
    pallas_gemm.GemmBlocks(64, 128, 128, num_warps=4, num_stages=4),
)



def gemm_blocks(a_shape, b_shape, contracting, interpret: bool) -> pallas_gemm.GemmBlocks:
  """Tile sizes for these shapes: the default when interpreted or for small GEMMs; otherwise the
  tuned choice for the (M, N, K) bucket, a pure lookup (`int4jax.tune` fills it)."""
  default = BLOCK_CANDIDATES[0]
  m, n, k = int_gemm.gemm_shape(jax.ShapeDtypeStruct(a_shape, jnp.int8),
                                jax.ShapeDtypeStruct(b_shape, jnp.int8), contracting)
  if interpret or 2 * m * n * k < tuning.MIN_TUNED_FLOPS:
    return default
  (ca,), (cb,) = contracting
  return tuning.lookup_variant(
      tuning.key("pallas_blocks", f"{ca}{cb}", m, n, k), {repr(b): b for b in BLOCK_CANDIDATES},
      repr(default), a_shape, b_shape,
      lambda blocks, a, b: pallas_gemm.scaled_gemm_pallas(a, b, contracting=contracting,
                                                          blocks=blocks),
      lambda a, b: int_gemm.int_gemm_xla(a, b, contracting), "pallas GEMM with")


def _scaled(platform):
  interpret = platform not in GPU

  def scaled(a, b, contracting, row_scale=None, col_scale=None):
    if row_scale is None and col_scale is None:  # keep the contract: a float result
      row_scale = 1.0
    contracting = static_contracting(contracting)
    blocks = gemm_blocks(a.shape, b.shape, contracting, interpret)
    return pallas_gemm.scaled_gemm_pallas(a, b, row_scale, col_scale, contracting=contracting,
                                          blocks=blocks, interpret=interpret)
  return scaled


def _int_gemm(platform):
  interpret = platform not in GPU

  def gemm(a, b, contracting):
    contracting = static_contracting(contracting)
    return pallas_gemm.scaled_gemm_pallas(
        a, b, contracting=contracting, interpret=interpret,
        blocks=gemm_blocks(a.shape, b.shape, contracting, interpret))
  return gemm


def fused_quantizer(platform):
  """The fused quantizer kernel (int4jax/kernels/pallas_quantize.py) as a backend quantizer:
  compiled on a CUDA GPU, interpreted elsewhere; jnp for per-tensor or clipped scales (logged).
  The GPU backends whose GEMMs are other kernels ("mosaic", "triton") use it too."""
  interpret = platform not in GPU

  def quantize(x, axis, qmin, qmax, key, group=16, levels=1, per_row=True, clip_ratio=None,
               search=1, layout="as_is"):
    if not per_row or clip_ratio is not None:
      # A per-tensor scale needs a global max first, and the clipped range an RMS whose sum
      # order the kernel cannot match bit for bit: the jnp quantizer, logged once.
      log_once(f"int4jax fused quantizer ({platform}): jnp for per-tensor / clipped scales")
      return quantize_jnp(x, axis, qmin, qmax, key, group=group, levels=levels,
                          per_row=per_row, clip_ratio=clip_ratio, search=search, layout=layout)
    check_layout(layout)
    seed = None if key is None else dither_seed(key)  # the kernel hashes the dither itself
    q, scale = pallas_quantize.quantize_pallas(
        x, axis=axis, qmin=qmin, qmax=qmax, seed=seed, group=group, levels=levels,
        search=search, transpose_out=layout == "transposed", both_layouts=layout == "both",
        interpret=interpret)  # the kernel ignores search when seeded
    return q, (scale[:, None] if axis == 1 else scale[None, :])
  return quantize


def _unavailable(platform):
  if platform in GPU or platform == "cpu":
    return None
  return (f"int4jax backend 'pallas' runs on CUDA GPUs (or interpreted on CPU), not on "
          f"{platform}")


def _reason(platform):
  if platform in GPU:
    return ("Pallas Triton lowering; per-tensor or clipped scales (scale_mode='tensor', "
            "scale_clip) quantize with jnp")
  return ("Pallas interpreter on CPU (tests; slow); per-tensor or clipped scales quantize "
          "with jnp")


PALLAS = register(Backend(
    name="pallas",
    unavailable=_unavailable,
    reason=_reason,
    scaled_gemm=_scaled,
    int_gemm=_int_gemm,
    quantizer=fused_quantizer,
    interprets=lambda platform: platform not in GPU,
    # K-major also when interpreted, so that the CPU tests run the layouts a GPU gets
    k_major=lambda platform: True,
))
