""""triton": the jax-triton GEMM (int4jax/kernels/triton_gemm.py), epilogue fused; CUDA GPUs
with the `int4jax[triton]` extra. The kernel pipelines only K-major operands: the fused quantizer
kernel (int4jax/kernels/pallas_quantize.py) writes them so (int4jax/linear.py, "Layouts"), and an
operand handed over in another layout (a direct call) is transposed by XLA first."""

from int4jax.backends.base import GPU, Backend, register, static_contracting
from int4jax.backends.pallas import fused_quantizer
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
    reason=lambda platform: ("jax-triton GEMM fed K-major by the fused quantizer kernel "
                             "(per-tensor or clipped scales quantize with jnp)"),
    scaled_gemm=_scaled,
    int_gemm=lambda platform: lambda a, b, c: triton_gemm.scaled_gemm_triton(
        a, b, contracting=static_contracting(c)),
    quantizer=fused_quantizer,
))
