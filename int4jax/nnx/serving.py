"""Serving export for NNX models: int4jax.nnx.export."""

from flax import nnx

from int4jax.nnx.general import LinearGeneral, packed_dims
from int4jax.nnx.linear import Linear
from int4jax.serving import PackedWeight, export_weight


def export(model: nnx.Module) -> nnx.Module:
  """A copy of `model` whose int4jax.nnx.Linear layers, and LinearGeneral layers that contract
  their input's trailing dims without batch axes (nnx.MultiHeadAttention's projections), hold
  packed INT4 kernels (PackedWeight, int4jax.export_weight) and serve from them, equal to the
  training-time forward bit for bit (compiled). Other layers, Einsum among them, keep their float
  kernels. The model given is unchanged."""
  served = nnx.clone(model)
  for _, layer in nnx.iter_modules(served):
    if not isinstance(layer, (Linear, LinearGeneral)):
      continue
    dims = 1 if isinstance(layer, Linear) else packed_dims(layer)
    if dims is None or isinstance(layer.kernel.get_value(), PackedWeight):
      continue
    if layer.hadamard_block is None:
      raise ValueError("int4jax.nnx.export: a layer's Hadamard block is still to be searched; "
                       "run int4jax.nnx.calibrate(model, batch) first")
    config = layer.config.replace(hadamard_block=layer.hadamard_block)
    layer.kernel = nnx.Param(export_weight(layer.kernel[...], config, dims))
  return served
