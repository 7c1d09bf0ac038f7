"""Serving export for NNX models: int4jax.nnx.export."""

from flax import nnx

from int4jax.nnx.general import Einsum, LinearGeneral, packed_dims
from int4jax.nnx.linear import Linear
from int4jax.serving import PackedWeight, einsum_packing, export_weight


def export(model: nnx.Module) -> nnx.Module:
  """A copy of `model` whose INT4 layers hold packed INT4 kernels (PackedWeight,
  int4jax.export_weight) and serve from them, equal to the training-time forward bit for bit
  (compiled): int4jax.nnx.Linear, LinearGeneral contracting its input's trailing dims without
  batch axes (nnx.MultiHeadAttention's projections), and Einsum without batch dims. The others
  keep their float kernels and still run INT4. The model given is unchanged."""
  served = nnx.clone(model)
  for _, layer in nnx.iter_modules(served):
    if not isinstance(layer, (Linear, LinearGeneral, Einsum)):
      continue
    perm, dims = (), 1
    if isinstance(layer, LinearGeneral):
      dims = packed_dims(layer)
    elif isinstance(layer, Einsum):
      spec = layer.einsum_str.replace(" ", "")
      lhs = spec.split(",")[0]
      layout = einsum_packing(spec, len(lhs.replace("...", "")), len(layer.kernel_shape))
      perm, dims = layout if layout is not None else ((), None)
    if dims is None or isinstance(layer.kernel.get_value(), PackedWeight):
      continue
    if layer.hadamard_block is None:
      raise ValueError("int4jax.nnx.export: a layer's Hadamard block is still to be searched; "
                       "run int4jax.nnx.calibrate(model, batch) first")
    config = layer.config.replace(hadamard_block=layer.hadamard_block)
    layer.kernel = nnx.Param(export_weight(layer.kernel[...], config, dims, perm))
  return served
