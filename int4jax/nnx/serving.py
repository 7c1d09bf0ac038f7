"""Serving export for NNX models: int4jax.nnx.export."""

import logging

from flax import nnx

from int4jax.nnx.general import Einsum, LinearGeneral, packed_dims
from int4jax.nnx.linear import Linear
from int4jax.serving import PackedWeight, einsum_packing, export_weight

logger = logging.getLogger("int4jax")


def packing(layer):
  """(kernel_perm, contracted_dims) with which an INT4 NNX layer's kernel is exported packed, or
  None when the layer cannot serve a packed kernel."""
  if isinstance(layer, Linear):
    return (), 1
  if isinstance(layer, LinearGeneral):
    dims = packed_dims(layer)
    return None if dims is None else ((), dims)
  if isinstance(layer, Einsum):
    spec = layer.einsum_str.replace(" ", "")
    lhs = spec.split(",")[0]
    return einsum_packing(spec, len(lhs.replace("...", "")), len(layer.kernel_shape))
  return None


def export(model: nnx.Module) -> nnx.Module:
  """A copy of `model` whose INT4 layers hold packed INT4 kernels (PackedWeight,
  int4jax.export_weight) and serve from them, equal to the training-time forward bit for bit
  (compiled): int4jax.nnx.Linear, LinearGeneral contracting its input's trailing dims without
  batch axes (nnx.MultiHeadAttention's projections), and Einsum without batch dims. The others
  keep their float kernels and still run INT4. The model given is unchanged."""
  served = nnx.clone(model)
  for path, layer in nnx.iter_modules(served):
    if not isinstance(layer, (Linear, LinearGeneral, Einsum)):
      continue
    if isinstance(layer.kernel.get_value(), PackedWeight):
      continue
    layout = packing(layer)
    if layout is None:
      logger.info("int4jax.nnx.export: %s keeps its float kernel (batch axes, or an axis that is "
                  "not the input's trailing dims written negative)", "/".join(map(str, path)))
      continue
    perm, dims = layout
    if layer.hadamard_block is None:
      raise ValueError("int4jax.nnx.export: a layer's Hadamard block is still to be searched; "
                       "run int4jax.nnx.calibrate(model, batch) first")
    config = layer.config.replace(hadamard_block=layer.hadamard_block)
    layer.kernel = nnx.Param(export_weight(layer.kernel[...], config, dims, perm))
  return served
