"""int4jax.nnx.LinearGeneral and Einsum: flax.nnx's layers with their contraction in INT4.

Same constructors (plus `config`), same `kernel` / `bias` Params, the same quantizer state and
rng stream as int4jax.nnx.Linear. nnx.MultiHeadAttention builds its query, key, value and out
projections from nnx.LinearGeneral, so `quantize_model` makes those INT4 through this class.
An Einsum must be a (tokens x in) @ (in x out) contraction per batch index
(int4jax.contraction.einsum_dimension_numbers says why another is not).
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from int4jax import contraction
from int4jax.config import Int4Config
from int4jax.nnx.linear import Int4Contraction, _stream
from int4jax.serving import PackedWeight, packed_contraction, packed_einsum, packed_layer_call


def _axes(axes, ndim):
  return tuple(sorted(int(a) % ndim for a in axes))


def packed_dims(layer: nnx.LinearGeneral):
  """How many leading kernel dims the layer contracts, if it can serve a packed kernel: no batch
  axes, and `axis` the input's trailing dims written as negative indices (-n, ..., -1); None if
  not."""
  axis = sorted(int(a) for a in (layer.axis if isinstance(layer.axis, (tuple, list))
                                 else (layer.axis,)))
  if tuple(layer.batch_axis) or axis != list(range(-len(axis), 0)):
    return None
  return len(axis)


class LinearGeneral(Int4Contraction, nnx.LinearGeneral):
  """`flax.nnx.LinearGeneral(in_features, out_features, ..., config=Int4Config(), rngs=...)`:
  the contracted `axis` dims are flattened into one contraction; `batch_axis` dims run as a
  vmapped batch of INT4 GEMMs."""

  def __init__(self, in_features, out_features, *, config: Int4Config = Int4Config(),
               rngs: nnx.Rngs, **kwargs):
    if kwargs.get("dot_general") is not None or kwargs.get("dot_general_cls") is not None:
      raise ValueError("int4jax.nnx.LinearGeneral replaces the dot_general; do not pass one")
    super().__init__(in_features, out_features, rngs=rngs, **kwargs)
    self._init_int4(config, rngs)

  def __call__(self, inputs: jax.Array, out_sharding=None, *, rngs=None) -> jax.Array:
    if out_sharding is not None:
      raise NotImplementedError("int4jax.nnx.LinearGeneral: out_sharding is not supported")
    if isinstance(self.kernel.get_value(), PackedWeight):  # serving: int4jax.nnx.export
      return self._packed_call(inputs)
    ndim = inputs.ndim
    axis, batch_axis = _axes(self.axis, ndim), _axes(tuple(self.batch_axis), ndim)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    n_batch = len(batch_axis)
    kernel_dims = ((tuple(range(n_batch, n_batch + len(axis))), tuple(range(n_batch))))
    y = self._int4_dot(inputs, kernel, ((axis, kernel_dims[0]), (batch_axis, kernel_dims[1])),
                       rngs)
    if self.preferred_element_type is not None:
      y = y.astype(self.preferred_element_type)
    if bias is not None:  # over the batch dims it has, broadcast over the other free dims
      view = tuple(inputs.shape[a] if a in batch_axis else 1
                   for a in range(ndim) if a not in axis)
      y = y + jnp.reshape(bias, view + tuple(self.out_features))
    return y

  def _packed_call(self, inputs: jax.Array) -> jax.Array:
    """The forward from a packed kernel, in training's dtypes and bias order."""
    packed = self.kernel.get_value()
    if packed_dims(self) != packed.contracted_dims:
      raise ValueError("int4jax.nnx.LinearGeneral: the packed kernel needs a layer contracting "
                       f"its input's last {packed.contracted_dims} dims without batch axes; "
                       "keep this layer's float kernel")
    bias = self.bias[...] if self.bias is not None else None
    return packed_layer_call(packed_contraction, inputs, packed, bias, self.dtype,
                             self.preferred_element_type)

  @classmethod
  def from_layer(cls, layer: nnx.LinearGeneral, config: Int4Config,
                 rngs: Optional[nnx.Rngs] = None) -> "LinearGeneral":
    """An INT4 LinearGeneral sharing `layer`'s kernel and bias Params (the same Variables)."""
    if layer.dot_general is not None or layer.dot_general_cls is not None:
      raise ValueError("int4jax: this nnx.LinearGeneral already has a custom dot_general; "
                       "exclude it")
    new = cls(layer.in_features, layer.out_features, axis=layer.axis,
              batch_axis=layer.batch_axis, use_bias=layer.use_bias, dtype=layer.dtype,
              param_dtype=layer.param_dtype, precision=layer.precision,
              kernel_init=nnx.initializers.zeros, promote_dtype=layer.promote_dtype,
              preferred_element_type=layer.preferred_element_type, config=config,
              rngs=nnx.Rngs(0))  # only for the placeholder params replaced below
    new.quant_rngs = nnx.data(_stream(rngs))
    new.kernel, new.bias = layer.kernel, layer.bias
    return new


class Einsum(Int4Contraction, nnx.Einsum):
  """`flax.nnx.Einsum(einsum_str, kernel_shape, bias_shape, ..., config=Int4Config(), rngs=...)`
  with the einsum as INT4 GEMMs."""

  def __init__(self, einsum_str, kernel_shape, bias_shape=None, *,
               config: Int4Config = Int4Config(), rngs: nnx.Rngs, **kwargs):
    if "einsum_op" in kwargs:
      raise ValueError("int4jax.nnx.Einsum replaces the einsum_op; do not pass one")
    super().__init__(einsum_str, kernel_shape, bias_shape, rngs=rngs, **kwargs)
    self._init_int4(config, rngs)

  def __call__(self, inputs: jax.Array, einsum_str: Optional[str] = None, out_sharding=None, *,
               rngs=None) -> jax.Array:
    if out_sharding is not None:
      raise NotImplementedError("int4jax.nnx.Einsum: out_sharding is not supported")
    spec = (einsum_str if einsum_str is not None else self.einsum_str).replace(" ", "")
    if isinstance(self.kernel.get_value(), PackedWeight):  # serving: int4jax.nnx.export
      return self._packed_call(spec, inputs)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    dims, perm = contraction.einsum_dimension_numbers(spec, inputs.ndim, kernel.ndim)
    y = jnp.transpose(self._int4_dot(inputs, kernel, dims, rngs), perm)
    if self.preferred_element_type is not None:
      y = y.astype(self.preferred_element_type)
    if bias is not None:
      y = y + jnp.reshape(bias, self._infer_broadcasted_bias_shape(spec, inputs, kernel))
    return y

  def _packed_call(self, spec: str, inputs: jax.Array) -> jax.Array:
    """The forward from a packed kernel, in training's dtypes and bias order."""
    packed = self.kernel.get_value()
    bias = self.bias[...] if self.bias is not None else None
    shape = None
    if bias is not None:
      kernel = jax.ShapeDtypeStruct(packed.kernel_shape, packed.dtype)
      shape = self._infer_broadcasted_bias_shape(spec, inputs, kernel)
    return packed_layer_call(lambda x, p: packed_einsum(spec, x, p), inputs, packed, bias,
                             self.dtype, self.preferred_element_type, shape)

  @classmethod
  def from_layer(cls, layer: nnx.Einsum, config: Int4Config,
                 rngs: Optional[nnx.Rngs] = None) -> "Einsum":
    """An INT4 Einsum sharing `layer`'s kernel and bias Params (the same Variables)."""
    if layer.einsum_op is not jnp.einsum:
      raise ValueError("int4jax: this nnx.Einsum already has a custom einsum_op; exclude it")
    new = cls(layer.einsum_str, layer.kernel_shape, layer.bias_shape, dtype=layer.dtype,
              param_dtype=layer.param_dtype, precision=layer.precision,
              kernel_init=nnx.initializers.zeros, promote_dtype=layer.promote_dtype,
              preferred_element_type=layer.preferred_element_type, config=config,
              rngs=nnx.Rngs(0))
    new.quant_rngs = nnx.data(_stream(rngs))
    new.kernel, new.bias = layer.kernel, layer.bias
    return new
