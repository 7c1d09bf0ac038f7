"""Which GEMM carries INT4's loss gap: the method's quantizers on chosen GEMMs of a linear layer,
every other GEMM float, simulated in float.

A linear layer runs three GEMMs: the forward Y = X^ W^ (both operands Hadamard-transformed and
INT4), dX = Q(dY) W^^T and dW = X^^T Q(dY) (bit-split dY, the forward's INT4 operands reused).
`ablated_matmul(x, w, key, parts, config)` quantizes only the operands that `parts` names:

  "fwd_x"  the forward's X^ (HQ + the config's INT4 quantizer); W and the backward float
  "fwd_w"  the forward's W^
  "dx"     the dX GEMM as the method runs it: Q(dY) against the INT4 W^; forward and dW float
  "dw"     the dW GEMM: the INT4 X^ against Q(dY); forward and dX float

The quantizers are int4jax.reference's fake quantizers (written independently of the integer
op): with all four parts the result equals int4jax.reference.int4_linear_reference, which equals
the integer op up to float summation order (tests/test_gemm_ablation.py). The Hadamard transform
is orthogonal, so a float GEMM in the transformed domain is the float GEMM.

`AblatedModel(model, parts, config, exclude)` runs every nn.Dense of `model` (except the paths in
`exclude`, the task's head) this way; it is how experiments.variants' gemm-* variants train.
"""

import functools
from typing import FrozenSet, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments import baselines
from int4jax import Int4Config, reference
from int4jax.quantizers import hadamard

PARTS = ("fwd_x", "fwd_w", "dx", "dw")
_HI = jax.lax.Precision.HIGHEST


def _transformed(x, w, config: Int4Config):
  """X H and H W along the contraction, zero-padded to the config's multiple."""
  k = x.shape[1]
  kp = hadamard.padded_size(k, config.contraction_multiple)
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, kp - k)))
  w = jnp.pad(w.astype(jnp.float32), ((0, kp - k), (0, 0)))
  block = config.hadamard_block
  return hadamard.block_hadamard(x, block, 1), hadamard.block_hadamard(w, block, 0)


def _check(parts, config: Int4Config):
  unknown = set(parts) - set(PARTS)
  if unknown or not parts:
    raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {sorted(parts)}")
  if (config.scale_mode == "lsq" or config.lss != "off" or config.forward_rounding != "nearest"
      or not isinstance(config.hadamard_block, int)):
    raise ValueError("the GEMM ablation simulates dynamic scales, round-to-nearest forward "
                     "operands and no sampling: use scale_mode 'row' or 'tensor', "
                     "forward_rounding='nearest', lss='off' and an integer hadamard_block")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def ablated_matmul(x, w, key, parts: Tuple[str, ...], config: Int4Config):
  """x (M, K) @ w (K, N) with INT4 in the GEMMs `parts` names (module doc); key: the layer's
  quant key (the dY dither)."""
  return _forward(x, w, key, parts, config)[0]


def _forward(x, w, key, parts, config):
  _check(parts, config)
  xh, wh = _transformed(x, w, config)
  x_int, sx, w_int, sw = reference.fake_quant_forward(xh, wh, config, None)
  xq, wq = x_int * sx[:, None], (w_int * sw[:, None]).T
  y = jnp.matmul(xq if "fwd_x" in parts else xh, wq if "fwd_w" in parts else wh, precision=_HI)
  # the backward's operands, kept rather than recomputed; empty arrays carry x's and w's dtypes
  # and, in their shape, the unpadded contraction length
  like_x, like_w = jnp.zeros((0, x.shape[1]), x.dtype), jnp.zeros((0,), w.dtype)
  return y, (xh, wh, x_int, sx, w_int, sw, key, like_x, like_w)


def _backward(parts, config, residuals, dy):
  xh, wh, x_int, sx, w_int, sw, key, like_x, like_w = residuals
  if key is None and config.stochastic_rounding and {"dx", "dw"} & set(parts):
    raise ValueError("the GEMM ablation's INT4 backward rounds dY stochastically and needs a key: "
                     "pass rngs={'quant': key} to apply (or stochastic_rounding=False)")
  dy = dy.astype(jnp.float32)
  # the op's key schedule (dX, dW, sampling)
  key_dx, key_dw = tuple(jax.random.split(key, 3))[:2] if key is not None else (None, None)
  if "dx" in parts:  # W^'s column scale lies along dX's contraction: it goes into dY first
    dxh = jnp.matmul(reference.fake_quant_grad(dy * sw[None, :], 1, config, key_dx), w_int,
                     precision=_HI)
  else:
    dxh = jnp.matmul(dy, wh.T, precision=_HI)
  if "dw" in parts:  # X^'s row scale lies along dW's contraction (tokens)
    dwh = jnp.matmul(x_int.T, reference.fake_quant_grad(dy * sx[:, None], 0, config, key_dw),
                     precision=_HI)
  else:
    dwh = jnp.matmul(xh.T, dy, precision=_HI)
  block, k = config.hadamard_block, like_x.shape[1]
  dx = hadamard.block_hadamard(dxh, block, 1)[:, :k]  # H is symmetric and orthogonal
  dw = hadamard.block_hadamard(dwh, block, 0)[:k]
  return dx.astype(like_x.dtype), dw.astype(like_w.dtype), None


ablated_matmul.defvjp(_forward, _backward)


class AblatedModel(nn.Module):
  """`model` with its nn.Dense layers (except paths matching `exclude`) run by ablated_matmul.
  Same param tree as `model` (the wrapper shares its scope); training needs a 'quant' rng when
  a backward part is INT4 (the dY dither)."""

  model: nn.Module
  parts: Tuple[str, ...]  # a subset of PARTS
  config: Int4Config = Int4Config()  # the quantizers' settings
  exclude: Tuple[str, ...] = ()  # path regexes kept float (the task's head)

  def setup(self):
    _check(self.parts, self.config)
    nn.share_scope(self, self.model)

  def __call__(self, *args, **kwargs):
    parts, config = tuple(sorted(self.parts)), self.config
    backward = bool({"dx", "dw"} & set(parts))

    def matmul(layer, x, kernel):
      key = layer.make_rng("quant") if backward and layer.has_rng("quant") else None
      return ablated_matmul(x, kernel, key, parts, config).astype(x.dtype)

    with nn.intercept_methods(baselines.dense_interceptor(
        matmul, tuple(self.exclude), self, "the GEMM ablation", "exclude it")):
      return self.model(*args, **kwargs)
