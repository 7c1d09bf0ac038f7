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

import functools
import re
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

BASELINES = ("bf16", "fp8")
_E4M3, _E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2


def _cast(t: jax.Array, dtype) -> Tuple[jax.Array, jax.Array]:
  """(t / s cast to `dtype`, s). FP8: s = max|t| / the format's largest finite value (1 for an
  all-zero t), per tensor; bfloat16 has the range of float32, so s = 1."""
  t = t.astype(jnp.float32)
  if dtype == jnp.bfloat16:
    return t.astype(dtype), jnp.float32(1)
  amax = jnp.max(jnp.abs(t))
  scale = jnp.where(amax > 0, amax / float(jnp.finfo(dtype).max), 1.0).astype(jnp.float32)
  return (t / scale).astype(dtype), scale


def _dot(a, b, contracting):
  return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x, w, operand_dtype, grad_dtype):
  """x (M, K) @ w (K, N) with x and w cast to `operand_dtype`, float32 out; the backward casts
  dY to `grad_dtype` for both of its GEMMs (JAX's own transpose would mix it in as float32)."""
  return _forward(x, w, operand_dtype, grad_dtype)[0]


def _forward(x, w, operand_dtype, grad_dtype):
  xq, sx = _cast(x, operand_dtype)
  wq, sw = _cast(w, operand_dtype)
  # empty arrays of the inputs' dtypes: the cotangents go back in them
  like_x, like_w = jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype)
  return _dot(xq, wq, ((1,), (0,))) * (sx * sw), (xq, sx, wq, sw, like_x, like_w)


def _backward(operand_dtype, grad_dtype, residuals, dy):
  xq, sx, wq, sw, like_x, like_w = residuals
  gq, sg = _cast(dy, grad_dtype)
  dx = _dot(gq, wq, ((1,), (1,))) * (sg * sw)
  dw = _dot(xq, gq, ((0,), (0,))) * (sx * sg)
  return dx.astype(like_x.dtype), dw.astype(like_w.dtype)


_matmul.defvjp(_forward, _backward)


def bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """bfloat16 operands and dY, float32 accumulation and output."""
  return _matmul(x, w, jnp.bfloat16, jnp.bfloat16)


def fp8_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """FP8 e4m3 operands and e5m2 dY, each with a per-tensor scale; float32 out."""
  return _matmul(x, w, _E4M3, _E5M2)


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
    with nn.intercept_methods(dense_interceptor(
        lambda layer, x, kernel: _MATMULS[self.kind](x, kernel), tuple(self.exclude), self,
        f"the {self.kind} baseline", "exclude it or use an INT4 variant")):
      return self.model(*args, **kwargs)


def dense_interceptor(matmul, exclude: Tuple[str, ...], wrapper: nn.Module, what: str, fix: str):
  """Runs every nn.Dense __call__ outside `exclude` as matmul(layer, x (M, K), kernel) -> (M, N)
  plus the layer's bias (params as they are); a matched DenseGeneral or Einsum raises, naming
  `what` and `fix`. Shared by the float baselines and the GEMM ablation."""
  def intercept(next_fun, args, kwargs, context):
    layer = context.module
    if (context.method_name != "__call__" or layer is wrapper
        or not isinstance(layer, (nn.Dense, nn.DenseGeneral, nn.Einsum))
        or any(re.fullmatch(p, _path(layer)) for p in exclude)):
      return next_fun(*args, **kwargs)
    if type(layer) is not nn.Dense:
      raise ValueError(f"{what} covers nn.Dense layers; {_path(layer)} is a "
                       f"{type(layer).__name__}: {fix}")
    if layer.is_initializing():
      return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["inputs"]
    params = layer.variables["params"]
    kernel = params["kernel"]
    y = matmul(layer, x.reshape(-1, x.shape[-1]), kernel)
    y = y.reshape(x.shape[:-1] + (kernel.shape[1],))
    return y + params["bias"].reshape((1,) * (y.ndim - 1) + (-1,)) if layer.use_bias else y
  return intercept
