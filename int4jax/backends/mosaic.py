""""mosaic": the Pallas Mosaic GPU GEMM (int4jax/kernels/mosaic_gemm.py, Hopper s8 wgmma),
epilogue fused. Its variant (one warpgroup, or warp-specialized) is tuned per shape by
`int4jax.tune` (a lookup under jit; untuned shapes use the first, logged). The fused quantizer
kernel (int4jax/kernels/pallas_quantize.py) feeds it every operand K-major, as wgmma reads it
(int4jax/linear.py, "Layouts"); an operand handed over in another layout (a direct call) is
transposed by XLA first. The raw int32 sums that only the unfused bit split needs come from
XLA's int8 dot."""

import jax
import jax.numpy as jnp

from int4jax import tuning
from int4jax.backends.base import GPU, Backend, register
from int4jax.backends.pallas import fused_quantizer
from int4jax.kernels import int_gemm, mosaic_gemm


def is_hopper() -> bool:
  """Whether the first device is an sm_90 GPU."""
  try:
    return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9.")
  except RuntimeError:
    return False


def gemm_blocks(m: int, n: int, k: int) -> mosaic_gemm.MosaicBlocks:
  """The kernel variant (mosaic_gemm.VARIANTS) for an (M, N, K) GEMM: the first for small GEMMs,
  otherwise the tuned choice for the shape's bucket, a pure lookup (`int4jax.tune` fills it)."""
  default = next(iter(mosaic_gemm.VARIANTS))
  if 2 * m * n * k < tuning.MIN_TUNED_FLOPS:
    return mosaic_gemm.VARIANTS[default]

  return tuning.lookup_variant(
      tuning.key("mosaic_blocks", "11", m, n, k), mosaic_gemm.VARIANTS, default, (m, k), (n, k),
      lambda blocks, a, b_t: mosaic_gemm.scaled_gemm_mosaic(a, b_t, 1.0, 1.0, blocks=blocks),
      lambda a, b_t: int_gemm.int_gemm_xla(a, b_t, ((1,), (1,))).astype(jnp.float32),
      "Mosaic GEMM")


def _scaled(platform):
  def scaled(a, b, contracting, row_scale=None, col_scale=None):
    (ca,), (cb,) = contracting
    a_mk = a if int(ca) == 1 else a.T  # wgmma wants both operands K-major
    b_nk = b if int(cb) == 1 else b.T
    blocks = gemm_blocks(a_mk.shape[0], b_nk.shape[0], a_mk.shape[1])
    return mosaic_gemm.scaled_gemm_mosaic(a_mk, b_nk, row_scale, col_scale, blocks=blocks)
  return scaled


def _unavailable(platform):
  if platform not in GPU:
    return (f"int4jax backend 'mosaic' needs a Hopper GPU (sm_90a); Mosaic GPU kernels do not "
            f"run on {platform}, not even interpreted")
  if jax.default_backend() in GPU and not is_hopper():
    return "int4jax backend 'mosaic' needs a Hopper GPU (sm_90a); this GPU is not one"
  return None


MOSAIC = register(Backend(
    name="mosaic",
    unavailable=_unavailable,
    reason=lambda platform: ("Pallas Mosaic GPU GEMM fed K-major by the fused quantizer kernel "
                             "(per-tensor or clipped scales quantize with jnp); raw int32 sums "
                             "(fuse_bitsplit=False) via XLA"),
    scaled_gemm=_scaled,
    quantizer=fused_quantizer,
))
