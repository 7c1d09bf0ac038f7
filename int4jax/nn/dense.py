"""int4jax.nn.Dense / DenseGeneral: flax.linen's layers with the matmul in INT4.

They subclass the Flax layers, so constructor arguments, defaults and the param tree
(`kernel`, `bias`: same names, shapes, dtypes and initial values for the same rng) are Flax's;
a float checkpoint loads unchanged. The only addition is `config` and, when the config needs it,
the quantizer state documented in `int4jax.nn.int4_dot`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from int4jax.config import Int4Config
from int4jax.serving import PackedWeight, packed_contraction, packed_layer_call
from int4jax.nn.int4_dot import int4_dot_general


def _as_tuple(v):
  return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _reshaped_init(init, flat_shape, shape):
  """Flax's DenseGeneral trick: initialise as a 2-D (fan_in, fan_out) matrix, then reshape."""

  def wrapped(rng, _shape, dtype=jnp.float32):
    value = init(rng, flat_shape, dtype)
    if isinstance(value, meta.AxisMetadata):
      return meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
    return jnp.reshape(value, shape)

  return wrapped


def int4_dense_call(layer: nn.Module, inputs: jax.Array, config: Int4Config) -> jax.Array:
  """What flax's Dense/DenseGeneral `__call__` computes, with `int4_dot_general` as the matmul.

  `layer` is a bound nn.Dense or nn.DenseGeneral (or a subclass) inside its own compact call; its
  params are created under the same names, shapes and initialisers as Flax creates them.
  """
  if getattr(layer, "dot_general", None) is not None or getattr(layer, "dot_general_cls", None):
    raise ValueError(f"int4jax: layer {'/'.join(layer.path)} already has a custom dot_general; "
                     "INT4 replaces the dot_general, so exclude this layer from the rules or "
                     "drop its dot_general")
  if layer.has_variable("params", "kernel"):
    packed = layer.get_variable("params", "kernel")
    if isinstance(packed, PackedWeight):  # serving: params from int4jax.export
      return _packed_dense_call(layer, inputs, packed)
  is_general = isinstance(layer, nn.DenseGeneral)
  features = _as_tuple(layer.features)
  axis = _as_tuple(layer.axis) if is_general else (-1,)
  batch_dims = _as_tuple(layer.batch_dims) if is_general else ()
  ndim = inputs.ndim
  if batch_dims and set(batch_dims) != set(range(max(batch_dims) + 1)):
    raise ValueError(f"batch_dims {batch_dims} must be consecutive leading dimensions from 0")
  axis = tuple(sorted(a % ndim for a in axis))  # as flax normalizes them
  batch_dims = tuple(sorted(a % ndim for a in batch_dims))
  n_batch = len(batch_dims)
  batch_shape = tuple(inputs.shape[a] for a in batch_dims)
  kernel_shape = batch_shape + tuple(inputs.shape[a] for a in axis) + features
  if is_general:
    flat = (int(np.prod(kernel_shape[:n_batch + len(axis)])), int(np.prod(features)))
    kernel_init = _reshaped_init(layer.kernel_init, flat, kernel_shape)
  else:
    kernel_init = layer.kernel_init
  kernel = layer.param("kernel", kernel_init, kernel_shape, layer.param_dtype)
  bias = None
  if layer.use_bias:
    bias_shape = batch_shape + features
    bias_init = layer.bias_init
    if is_general:
      bias_init = _reshaped_init(layer.bias_init, (int(np.prod(bias_shape)),), bias_shape)
    bias = layer.param("bias", bias_init, bias_shape, layer.param_dtype)
  inputs, kernel, bias = layer.promote_dtype(inputs, kernel, bias, dtype=layer.dtype)
  batch_ind = tuple(range(n_batch))
  contract_ind = tuple(range(n_batch, n_batch + len(axis)))
  out = int4_dot_general(layer, inputs, kernel, ((axis, contract_ind), (batch_dims, batch_ind)),
                         config)
  if bias is not None:
    expanded = tuple(inputs.shape[a] if a in batch_dims else 1
                     for a in range(ndim) if a not in axis)
    out = out + jnp.reshape(bias, expanded + features)
  return out


def packed_dims(layer: nn.Module, ndim: int):
  """How many leading kernel dims a Dense / DenseGeneral call on an `ndim`-dim input contracts,
  if it can serve a packed kernel (no batch dims, its `axis` the input's trailing dims); None
  if not."""
  if not isinstance(layer, nn.DenseGeneral):
    return 1
  axis = sorted(a % ndim for a in _as_tuple(layer.axis))
  if _as_tuple(layer.batch_dims) or axis != list(range(ndim - len(axis), ndim)):
    return None
  return len(axis)


def _packed_dense_call(layer: nn.Module, inputs: jax.Array, packed: PackedWeight) -> jax.Array:
  """The layer's call from a packed kernel: the same dtypes and bias order as training. (A layer
  whose `dtype` rounds the kernel before quantizing, e.g. bf16 compute with f32 params, is served
  from the param-dtype kernel it was exported from: valid INT4, not bit for bit.)"""
  if packed_dims(layer, inputs.ndim) != packed.contracted_dims:
    raise ValueError(f"int4jax: layer {'/'.join(layer.path)} has a packed kernel, but it does not "
                     "contract its input's trailing dims without batch dims as the kernel was "
                     "exported; keep its float kernel in the exported params")
  bias = layer.get_variable("params", "bias") if layer.use_bias else None
  return packed_layer_call(packed_contraction, inputs, packed, bias, layer.dtype)


class Dense(nn.Dense):
  """`flax.linen.Dense` with INT4 forward and backward GEMMs (`config`: an Int4Config)."""

  config: Int4Config = Int4Config()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return int4_dense_call(self, inputs, self.config)


class DenseGeneral(nn.DenseGeneral):
  """`flax.linen.DenseGeneral` with INT4 GEMMs: the contracted `axis` dims are flattened into one
  contraction; `batch_dims` run as a vmapped batch of INT4 GEMMs."""

  config: Int4Config = Int4Config()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return int4_dense_call(self, inputs, self.config)
