""""xla": lax.dot_general(int8, int8) -> int32 (cuBLAS int8 on GPU, exact on CPU), then the
dequantization multiply as a separate XLA op; the jnp quantizer, which XLA fuses."""

import jax.numpy as jnp

from int4jax.backends.base import Backend, register
from int4jax.kernels import int_gemm


def with_scales(gemm):
  """A scaled GEMM from a raw one: the int32 product times the rank-1 scales, as XLA ops, the
  smaller of the two scales first (the kernels' epilogue, `pallas_gemm.scaled_gemm_reference`)."""
  def scaled(a, b, contracting, row_scale=None, col_scale=None):
    out = gemm(a, b, contracting).astype("float32")
    if row_scale is not None and col_scale is not None:
      return out * jnp.minimum(row_scale, col_scale) * jnp.maximum(row_scale, col_scale)
    if row_scale is not None:
      out = out * row_scale
    if col_scale is not None:
      out = out * col_scale
    return out
  return scaled


XLA = register(Backend(
    name="xla",
    unavailable=lambda platform: None,
    reason=lambda platform: "requested",
    scaled_gemm=lambda platform: with_scales(int_gemm.int_gemm_xla),
))
