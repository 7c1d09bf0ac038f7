"""Low-precision float baselines for the INT4 variants: the same block layers in bf16 or FP8.

The GPU goals compare INT4 with what a user would otherwise run: bf16 GEMMs, or FP8 through XLA.
These variants keep the model's code and params (float32) and change only the GEMMs of the layers
the INT4 variants quantize (every `nn.Dense` except the task's float head):

  bf16  operands cast to bfloat16, float32 accumulation and output; the backward GEMMs take
        dY in bfloat16 too
  fp8   current (just-in-time) per-tensor scaling: X and W cast to float8_e4m3fn, dY to
        float8_e5m2 in the backward (the usual FP8 training recipe), float32 accumulation, the
        scales applied after each GEMM. On Hopper XLA rewrites such dots into cuBLASLt FP8
        GEMMs; elsewhere they are emulated (slowly) in float.

Only `nn.Dense` layers are covered; a matched DenseGeneral or Einsum raises (no silent float).
Activations stay float32 between the GEMMs, so "bf16" here is bf16 GEMMs in a float32 model, not
a whole-model bf16 run (which would also halve the elementwise traffic).
"""

import re
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

BASELINES = ("bf16", "fp8")
_E4M3, _E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2


def _to_fp8(t: jax.Array, dtype) -> Tuple[jax.Array, jax.Array]:
  """(t / s cast to `dtype`, s) with s = max|t| / the format's largest finite value (1 for 0)."""
  amax = jnp.max(jnp.abs(t))
  scale = jnp.where(amax > 0, amax / float(jnp.finfo(dtype).max), 1.0).astype(jnp.float32)
  return (t / scale).astype(dtype), scale


def _dtype_of(t: jax.Array) -> jax.Array:
  """An empty array of t's dtype: a residual that carries the cotangent's dtype."""
  return jnp.zeros((0,), t.dtype)


def _dot(a, b, contracting):
  return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


@jax.custom_vjp
def fp8_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (M, K) @ w (K, N) with both operands in FP8 e4m3 (per-tensor scales), float32 out."""
  return _fp8_forward(x, w)[0]


def _fp8_forward(x, w):
  xq, sx = _to_fp8(x.astype(jnp.float32), _E4M3)
  wq, sw = _to_fp8(w.astype(jnp.float32), _E4M3)
  return _dot(xq, wq, ((1,), (0,))) * (sx * sw), (xq, sx, wq, sw, _dtype_of(x), _dtype_of(w))


def _fp8_backward(residuals, dy):
  xq, sx, wq, sw, x_dtype, w_dtype = residuals
  gq, sg = _to_fp8(dy.astype(jnp.float32), _E5M2)
  dx = _dot(gq, wq, ((1,), (1,))) * (sg * sw)
  dw = _dot(xq, gq, ((0,), (0,))) * (sx * sg)
  return dx.astype(x_dtype.dtype), dw.astype(w_dtype.dtype)


fp8_matmul.defvjp(_fp8_forward, _fp8_backward)


@jax.custom_vjp
def bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (M, K) @ w (K, N) on bfloat16 operands with float32 accumulation and output; dY is cast
  to bfloat16 for both backward GEMMs (JAX's own transpose would mix it in as float32)."""
  return _bf16_forward(x, w)[0]


def _bf16_forward(x, w):
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  return _dot(xb, wb, ((1,), (0,))), (xb, wb, _dtype_of(x), _dtype_of(w))


def _bf16_backward(residuals, dy):
  xb, wb, x_dtype, w_dtype = residuals
  gb = dy.astype(jnp.bfloat16)
  return (_dot(gb, wb, ((1,), (1,))).astype(x_dtype.dtype),
          _dot(xb, gb, ((0,), (0,))).astype(w_dtype.dtype))


bf16_matmul.defvjp(_bf16_forward, _bf16_backward)


_MATMULS = {"bf16": bf16_matmul, "fp8": fp8_matmul}


def _path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


class LowPrecisionModel(nn.Module):
  """`model` with its nn.Dense layers (except paths matching `exclude`) run as `kind` GEMMs.
  Same param tree as `model` (the wrapper shares its scope)."""

  model: nn.Module
  kind: str  # one of BASELINES
  exclude: Tuple[str, ...] = ()  # path regexes kept float32 (the task's head)

  def setup(self):
    if self.kind not in BASELINES:
      raise ValueError(f"baseline must be one of {BASELINES}, got {self.kind!r}")
    nn.share_scope(self, self.model)

  def __call__(self, *args, **kwargs):
    with nn.intercept_methods(_interceptor(self.kind, tuple(self.exclude), self)):
      return self.model(*args, **kwargs)


def _interceptor(kind: str, exclude: Tuple[str, ...], wrapper: nn.Module):
  """Runs every nn.Dense __call__ outside `exclude` as a `kind` GEMM (params as they are)."""
  def intercept(next_fun, args, kwargs, context):
    layer = context.module
    if (context.method_name != "__call__" or layer is wrapper
        or not isinstance(layer, (nn.Dense, nn.DenseGeneral, nn.Einsum))
        or any(re.fullmatch(p, _path(layer)) for p in exclude)):
      return next_fun(*args, **kwargs)
    if type(layer) is not nn.Dense:
      raise ValueError(f"the {kind} baseline covers nn.Dense layers; {_path(layer)} is a "
                       f"{type(layer).__name__}: exclude it or use an INT4 variant")
    if layer.is_initializing():
      return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["inputs"]
    params = layer.variables["params"]
    kernel = params["kernel"]
    y = _MATMULS[kind](x.reshape(-1, x.shape[-1]), kernel)
    y = y.reshape(x.shape[:-1] + (kernel.shape[1],))
    return y + params["bias"].reshape((1,) * (y.ndim - 1) + (-1,)) if layer.use_bias else y
  return intercept
