"""A float fake-quant reference of int4_linear, for tests.

It shares only the quantizer functions and the key schedule with the integer op (so the same key
gives the same rounding noise and rows); everything else is written independently: dequantized
float values and float GEMMs (precision HIGHEST) instead of int8 GEMMs with a scale epilogue, a
dense block-diagonal Hadamard matrix (kron(I, H_b)) for the gradients' H^T instead of autodiff,
and LSQ gradients by autodiff through `lsq_fake_quant` instead of the hand-written backward.
The forward transform uses `block_hadamard` like the op (tested against the dense matrix
separately): quantization is discontinuous, so a one-ulp difference in XH could flip a rounding.
"""

import functools

import jax
import jax.numpy as jnp

from int4jax import validation
from int4jax.config import Int4Config
from int4jax.linear import (apply_plan, backward_keys, forward_quantize, sample_rows,
                            sampling_plan)
from int4jax.quantizers import bitsplit, hadamard
from int4jax.quantizers import int4_quant as quantize

_HI = jax.lax.Precision.HIGHEST


def dense_block_hadamard(n: int, block: int) -> jax.Array:
  return jnp.kron(jnp.eye(n // block, dtype=jnp.float32), hadamard.hadamard_matrix(block))


def int4_linear_reference(x, kernel, bias=None, *, key=None, config: Int4Config = Int4Config(),
                          scales=None):
  """Same contract as `int4jax.int4_linear`, computed in float."""
  validation.check_linear_args(x, kernel, bias, config, scales)
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)
  k_in, n_out = kernel.shape
  x2 = x.reshape(-1, k_in)
  if scales is not None:
    scales = tuple(jnp.asarray(s, jnp.float32) for s in scales)
  y = _reference(config, x2.astype(jnp.float32), kernel.astype(jnp.float32), scales, key)
  y = y.reshape(x.shape[:-1] + (n_out,))
  if bias is not None:
    y = y + bias.astype(jnp.float32).reshape((1,) * (y.ndim - 1) + (n_out,))
  return y.astype(out_dtype)


def _transformed(config, x, w):
  block = config.hadamard_block
  kp = hadamard.padded_size(x.shape[1], config.contraction_multiple)
  h = dense_block_hadamard(kp, block)
  x_pad = jnp.pad(x, ((0, 0), (0, kp - x.shape[1])))
  w_pad = jnp.pad(w, ((0, kp - w.shape[0]), (0, 0)))
  xh = hadamard.block_hadamard(x_pad, block, 1)
  wh = hadamard.block_hadamard(w_pad, block, 0)
  return xh, wh, h


def _fake_quant_grad(g, reduce_axes, config, key):
  qmin, qmax = config.qrange
  key = key if config.stochastic_rounding else None
  if config.grad_mode == "float":
    return g
  if config.grad_mode == "bitsplit":
    return bitsplit.bit_split(g, config.qrange, reduce_axes, key).dequantize()
  gq, s = quantize.quantize_absmax(g, qmin, qmax, reduce_axes, key)
  return quantize.dequantize(gq, s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _reference(config, x, w, scales, key):
  xh, wh, _ = _transformed(config, x, w)
  xq, sx, wq, sw = forward_quantize(xh, wh, config, scales)
  if config.scale_mode == "group":
    g = config.scale_group
    return jnp.matmul(xq * jnp.repeat(sx, g, 1), wq * jnp.repeat(sw, g, 0), precision=_HI)
  return jnp.matmul(quantize.dequantize(xq, sx), quantize.dequantize(wq, sw), precision=_HI)


def _grouped_bars(config, xq, sx, wq, sw, dy, key_dx, key_dw, key_lss):
  """dX~ and dW~ for scale_mode="group", one group at a time in float (the op batches them)."""
  g, n_groups = config.scale_group, sx.shape[1]
  x_deq = xq * jnp.repeat(sx, g, 1)
  plan = sampling_plan(jnp.linalg.norm(dy, axis=1) * jnp.linalg.norm(x_deq, axis=1), config,
                       key_lss) if config.lss != "off" else (None, None)
  dy_rows, xq_rows, sx_rows = apply_plan(plan, dy, xq, sx)
  dx_cols, dw_rows = [], []
  for j in range(n_groups):
    cols = slice(j * g, (j + 1) * g)
    g_dx = _fake_quant_grad(dy * sw[j][None, :], 1, config, key_dx)
    dx_cols.append(jnp.matmul(g_dx, wq[cols].astype(jnp.float32).T, precision=_HI))
    g_dw = _fake_quant_grad(dy_rows * sx_rows[:, j:j + 1], 0, config, key_dw)
    dw = jnp.matmul(xq_rows[:, cols].astype(jnp.float32).T, g_dw, precision=_HI)
    finite = jnp.all(jnp.isfinite(dy * sx[:, j:j + 1]), axis=0, keepdims=True)
    dw_rows.append(jnp.where(finite, dw, jnp.nan))
  return jnp.concatenate(dx_cols, 1), jnp.concatenate(dw_rows, 0)


def _reference_fwd(config, x, w, scales, key):
  return _reference(config, x, w, scales, key), (x, w, scales, key)


def _reference_bwd(config, res, dy):
  x, w, scales, key = res
  if key is None and config.needs_key:
    raise ValueError(validation.missing_key_message(config))
  key_dx, key_dw, key_lss = backward_keys(key)
  xh, wh, h = _transformed(config, x, w)
  xq, sx, wq, sw = forward_quantize(xh, wh, config, scales)
  dy = dy.astype(jnp.float32)
  if config.scale_mode == "group":
    dx_bar, dw_bar = _grouped_bars(config, xq, sx, wq, sw, dy, key_dx, key_dw, key_lss)
    dx = jnp.matmul(dx_bar, h, precision=_HI)[:, :x.shape[1]]
    return dx, jnp.matmul(h, dw_bar, precision=_HI)[:w.shape[0]], None, None
  g_dx = _fake_quant_grad(dy * sw, 1, config, key_dx)
  dx_bar = jnp.matmul(g_dx, wq.astype(jnp.float32).T, precision=_HI)
  dy_sx = dy * sx
  g_dw, x_rows = sample_rows(dy_sx, xq, config, key_lss)
  g_dw = _fake_quant_grad(g_dw, 0, config, key_dw)
  dw_bar = jnp.matmul(x_rows.astype(jnp.float32).T, g_dw, precision=_HI)
  dw_bar = jnp.where(jnp.all(jnp.isfinite(dy_sx), axis=0, keepdims=True), dw_bar, jnp.nan)
  if config.scale_mode == "lsq":
    qmin, qmax = config.qrange
    fq = lambda t, s: quantize.lsq_fake_quant(t, s, qmin, qmax)
    _, vjp_x = jax.vjp(fq, xh, scales[0])
    _, vjp_w = jax.vjp(fq, wh, scales[1])
    (dxh, dsx), (dwh, dsw) = vjp_x(dx_bar), vjp_w(dw_bar)
    dscales = (dsx, dsw)
  else:
    dxh, dwh, dscales = dx_bar, dw_bar, None
  dx = jnp.matmul(dxh, h, precision=_HI)[:, :x.shape[1]]
  dw = jnp.matmul(h, dwh, precision=_HI)[:w.shape[0]]
  return dx, dw, dscales, None


_reference.defvjp(_reference_fwd, _reference_bwd)
