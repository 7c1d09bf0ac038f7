""""mosaic": the Pallas Mosaic GPU GEMM (int4jax/kernels/mosaic_gemm.py, Hopper s8 wgmma),
epilogue fused, fed by the fused quantizer kernel (int4jax/kernels/pallas_quantize.py), which
writes every operand K-major, as wgmma reads it (int4jax/linear.py, "Layouts"). An operand
handed over in another layout (a direct call) is transposed by XLA first. The raw int32 sums
that only the unfused bit split needs come from XLA's int8 dot."""

import jax

from int4jax.backends.base import GPU, Backend, register
from int4jax.backends.pallas import fused_quantizer
from int4jax.kernels import mosaic_gemm


def is_hopper() -> bool:
  """Whether the first device is an sm_90 GPU."""
  try:
    return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9.")
  except RuntimeError:
    return False


def _scaled(platform):
  def scaled(a, b, contracting, row_scale=None, col_scale=None):
    (ca,), (cb,) = contracting
    a_mk = a if int(ca) == 1 else a.T  # wgmma wants both operands K-major
    b_nk = b if int(cb) == 1 else b.T
    return mosaic_gemm.scaled_gemm_mosaic(a_mk, b_nk, row_scale, col_scale)
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
    reason=lambda platform: ("Pallas Mosaic GPU GEMM fed K-major by the fused quantizer kernel; "
                             "raw int32 sums (fuse_bitsplit=False) via XLA"),
    scaled_gemm=_scaled,
    quantizer=fused_quantizer,
))
