"""int4jax.nn.Einsum: flax.linen's Einsum layer with its contraction in INT4.

Same constructor (plus `config`), same `kernel` / `bias` params. The einsum must be a
(tokens x in) @ (in x out) contraction per batch index: every label a batch, contracted or free
dim (int4jax.contraction.einsum_dimension_numbers); another einsum raises a ValueError saying
why, and `quantize_model` leaves such a layer float (logged once).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from int4jax.config import Int4Config
from int4jax.nn.int4_dot import int4_einsum
from int4jax.serving import PackedWeight, packed_einsum, packed_layer_call


def einsum_spec(layer: nn.Einsum, einsum_str=None) -> str:
  """The einsum a linen Einsum call runs: the call's argument or the layer's attribute (giving
  both is an error, as in Flax)."""
  if einsum_str is not None and layer.einsum_str is not None:
    raise ValueError(f"int4jax: Einsum {'/'.join(layer.path)} got einsum_str both as an "
                     "attribute and as a call argument; give one")
  spec = einsum_str if einsum_str is not None else layer.einsum_str
  if spec is None:
    raise ValueError(f"int4jax: Einsum {'/'.join(layer.path)} has no einsum_str")
  return spec.replace(" ", "")


def int4_einsum_call(layer: nn.Einsum, inputs: jax.Array, config: Int4Config,
                     einsum_str=None) -> jax.Array:
  """What flax's Einsum `__call__` computes, with the contraction in INT4. `layer` is a bound
  nn.Einsum (or subclass) inside its own compact call; its params are created as Flax creates
  them."""
  spec = einsum_spec(layer, einsum_str)
  if layer.has_variable("params", "kernel"):
    packed = layer.get_variable("params", "kernel")
    if isinstance(packed, PackedWeight):  # serving: params from int4jax.export
      return _packed_einsum_call(layer, spec, inputs, packed)
  kernel = layer.param("kernel", layer.kernel_init, layer.shape, layer.param_dtype)
  bias, bias_view = None, None
  if layer.use_bias:
    bias_shape, bias_view = layer._get_bias_shape(spec, inputs, kernel)
    bias = layer.param("bias", layer.bias_init, bias_shape, layer.param_dtype)
  inputs, kernel, bias = layer.promote_dtype(inputs, kernel, bias, dtype=layer.dtype)
  y = int4_einsum(layer, spec, inputs, kernel, config, layer.preferred_element_type)
  if bias is not None:
    y = y + jnp.reshape(bias, bias_view)
  return y


def _packed_einsum_call(layer: nn.Einsum, spec: str, inputs: jax.Array, packed: PackedWeight
                        ) -> jax.Array:
  """The layer's call from a packed kernel, in training's dtypes and bias order."""
  bias = layer.get_variable("params", "bias") if layer.use_bias else None
  shape = None
  if bias is not None:
    kernel = jax.ShapeDtypeStruct(packed.kernel_shape, packed.dtype)
    shape = layer._get_bias_shape(spec, inputs, kernel)[1]
  return packed_layer_call(lambda x, p: packed_einsum(spec, x, p), inputs, packed, bias,
                           layer.dtype, layer.preferred_element_type, shape)


class Einsum(nn.Einsum):
  """`flax.linen.Einsum` with INT4 forward and backward GEMMs (`config`: an Int4Config)."""

  config: Int4Config = Int4Config()

  @nn.compact
  def __call__(self, inputs: jax.Array, einsum_str=None) -> jax.Array:
    return int4_einsum_call(self, inputs, self.config, einsum_str)
