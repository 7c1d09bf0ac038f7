""""reference": the integer product with both operands widened to int32 (slow, obviously exact)."""

from int4jax.backends.base import Backend, register
from int4jax.backends.xla import with_scales
from int4jax.kernels import int_gemm

REFERENCE = register(Backend(
    name="reference",
    unavailable=lambda platform: None,
    reason=lambda platform: "requested",
    scaled_gemm=lambda platform: with_scales(int_gemm.int_gemm_reference),
    int_gemm=lambda platform: int_gemm.int_gemm_reference,
    auto_candidate=False,
))
