""""triton": the jax-triton GEMM (int4jax/kernels/triton_gemm.py), epilogue fused; CUDA GPUs
with the `int4jax[triton]` extra. The kernel pipelines only K-major operands, so the others are
transposed by XLA first (one int8 copy each)."""

from int4jax.backends.base import GPU, Backend, register, static_contracting
from int4jax.kernels import triton_gemm




def _scaled(platform):
  def scaled(a, b, contracting, row_scale=None, col_scale=None):
    if row_scale is None and col_scale is None:
      row_scale = 1.0
    return triton_gemm.scaled_gemm_triton(a, b, row_scale, col_scale,
                                          contracting=static_contracting(contracting))
  return scaled


def _unavailable(platform):
  if not triton_gemm.AVAILABLE:
    return ("int4jax backend 'triton' needs jax-triton and a CUDA jaxlib "
            f"(pip install 'int4jax[triton]'); {triton_gemm.IMPORT_ERROR}")
  if platform not in GPU:
    return f"int4jax backend 'triton' needs a CUDA GPU; the platform is {platform}"
  return None


TRITON = register(Backend(
    name="triton",
    unavailable=_unavailable,
    reason=lambda platform: "jax-triton; operands that are not K-major are transposed by XLA first",
    scaled_gemm=_scaled,
    int_gemm=lambda platform: lambda a, b, c: triton_gemm.scaled_gemm_triton(
        a, b, contracting=static_contracting(c)),
))
