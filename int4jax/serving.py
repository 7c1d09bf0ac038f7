"""Serving export: a trained layer's weight as packed INT4, and the forward that consumes it.

`export_weight(kernel, config)` quantizes the weight exactly as `int4_linear`'s forward does
(Hadamard along the contraction, then the config's forward quantizer) and stores:

  values       uint8 (N, Kp/2)   the INT4 values q, two per byte along the contraction (K-major)
  multipliers  uint8 (N, Kp/2g)  the two-level group multipliers m - 1 (0..15), two per byte;
                                 None with one scale level
  scale        float32 (1, N)    the per-column (or per-tensor) float scale

Kp is the contraction padded to `config.contraction_multiple`. At the default (16 levels, groups
of 16) that is 0.5 + 1/32 bytes per weight against bf16's 2: about 0.27x. `packed_linear(x,
packed)` rebuilds the int8 operand m * q and runs the same forward as training, so its outputs
equal `int4_linear`'s forward bit for bit.
"""

import dataclasses
import functools
import logging
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from int4jax import contraction, linear
from int4jax.config import Int4Config
from int4jax.quantizers import hadamard, packing

logger = logging.getLogger("int4jax")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedWeight:
  """One layer's (K, N) weight, packed for serving (see the module doc)."""

  values: jax.Array  # uint8 (N, ceil(Kp/2)): INT4 q, two per byte along K
  multipliers: Optional[jax.Array]  # uint8 (N, ceil(Kp/2g)): m - 1, two per byte; None at L=1
  scale: jax.Array  # float32 (1, N) per column, or () per tensor
  in_features: int = dataclasses.field(metadata=dict(static=True))  # K before padding
  config: Int4Config = dataclasses.field(metadata=dict(static=True))  # how it was quantized
  dtype: str = dataclasses.field(metadata=dict(static=True))  # the float kernel's dtype
  # the float kernel's shape, its leading dims contracted: (K, N) for Dense; e.g. (d, heads,
  # head_dim) for an attention projection's DenseGeneral kernel, packed as (d, heads * head_dim)
  kernel_shape: Tuple[int, ...] = dataclasses.field(default=(), metadata=dict(static=True))
  # how many leading dims of the (permuted) kernel are contracted (K is their product)
  contracted_dims: int = dataclasses.field(default=1, metadata=dict(static=True))
  # the transpose that puts an Einsum kernel's contracted dims first ((): none)
  kernel_perm: Tuple[int, ...] = dataclasses.field(default=(), metadata=dict(static=True))

  @property
  def flat_shape(self) -> Tuple[int, ...]:
    """The kernel's shape as packed: permuted by kernel_perm, contracted dims first; (K, N)
    for a PackedWeight made without a kernel_shape."""
    if not self.kernel_shape:
      n_out = self.scale.shape[-1] if self.scale.ndim else self.values.shape[0]
      return (self.in_features, n_out)
    return tuple(self.kernel_shape[i] for i in self.kernel_perm) or self.kernel_shape

  @property
  def padded_features(self) -> int:
    """Kp: the contraction as the forward pads it."""
    return -(-self.in_features // self.config.contraction_multiple) * \
        self.config.contraction_multiple

  @property
  def nbytes(self) -> int:
    return sum(int(a.size * a.dtype.itemsize) for a in jax.tree.leaves(self))


def _check(config: Int4Config):
  if config.scale_mode == "lsq" or config.hadamard_block == "search" or config.forward_bits != 4:
    raise ValueError("int4jax.export: packs dynamic-scale INT4 weights (scale_mode 'row' or "
                     "'tensor', a fixed hadamard_block, forward_bits=4); got "
                     f"{config}. For a searched block, export with the layer's resolved block")
  if config.scale_levels > 16:
    raise ValueError(f"int4jax.export: group multipliers up to 16 fit a nibble; got "
                     f"scale_levels={config.scale_levels}")


def export_weight(kernel: jax.Array, config: Int4Config = Int4Config(),
                  contracted_dims: int = 1, kernel_perm: Tuple[int, ...] = ()) -> PackedWeight:
  """`kernel` packed as `int4_linear`'s forward quantizes it: (K, N), or a DenseGeneral-style
  kernel whose first `contracted_dims` dims are the contraction (after the transpose
  `kernel_perm`, for an Einsum kernel), flattened to (K, N) as the INT4 layers flatten it.
  Compiled, like the training forward: the Hadamard's float sums then come out the same, so the
  same integers do."""
  _check(config)
  kernel_perm = tuple(kernel_perm)
  if kernel_perm:
    if sorted(kernel_perm) != list(range(kernel.ndim)):
      raise ValueError(f"int4jax.export: kernel_perm {kernel_perm} is not a permutation of a "
                       f"{kernel.ndim}-dim kernel")
    shape, kernel = kernel.shape, jnp.transpose(kernel, kernel_perm)
  if not 1 <= contracted_dims < kernel.ndim:
    raise ValueError(f"int4jax.export: a kernel of shape {kernel.shape} with contracted_dims="
                     f"{contracted_dims}: takes a 2-D (in, out) kernel, or a DenseGeneral kernel "
                     "with its contracted dims first and at least one output dim")
  k = math.prod(kernel.shape[:contracted_dims])
  packed = _export_weight(kernel.reshape(k, -1), config)
  return dataclasses.replace(packed, kernel_shape=shape if kernel_perm else tuple(kernel.shape),
                             contracted_dims=contracted_dims, kernel_perm=kernel_perm)


@functools.partial(jax.jit, static_argnames=("config",))
def _export_weight(kernel: jax.Array, config: Int4Config) -> PackedWeight:
  block, multiple = config.hadamard_block, config.contraction_multiple
  wh = hadamard.block_hadamard(
      hadamard.pad_to_block(kernel.astype(jnp.float32), multiple, 0), block, 0)
  wv, scale = linear.quantize_operand(wh, 0, config)
  multipliers = linear.weight_multipliers(wh, config)  # (Kp/g, N), or None
  values, multipliers = packing.pack_weight_operand(wv, multipliers)
  return PackedWeight(values=values, multipliers=multipliers, scale=scale,
                      in_features=kernel.shape[0], config=config, dtype=str(kernel.dtype),
                      kernel_shape=tuple(kernel.shape))


def unpacked_operand(packed: PackedWeight) -> jax.Array:
  """The int8 forward operand m * q, (Kp, N), exactly as training's forward quantizer makes it."""
  return packing.unpack_weight_operand(packed.values, packed.multipliers,
                                       packed.padded_features, packed.config.scale_group)


def packed_linear(x: jax.Array, packed: PackedWeight, bias: Optional[jax.Array] = None
                  ) -> jax.Array:
  """Inference `x @ kernel + bias` from the packed weight: `int4_linear`'s forward, bit for bit
  (compiled), in the same output dtype (x's promoted with the float kernel's)."""
  config = packed.config
  if x.shape[-1] != packed.in_features:
    raise ValueError(f"packed_linear: x has {x.shape[-1]} features, the weight takes "
                     f"{packed.in_features}")
  x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  xh = hadamard.block_hadamard(hadamard.pad_to_block(x2, config.contraction_multiple, 1),
                               config.hadamard_block, 1)
  y = linear.forward_from_operand(xh, unpacked_operand(packed), packed.scale, config)
  n_out = packed.scale.shape[-1] if packed.scale.ndim else packed.values.shape[0]
  y = y.reshape(x.shape[:-1] + (n_out,))
  if bias is not None:
    y = y + bias.astype(jnp.float32).reshape((1,) * (y.ndim - 1) + (n_out,))
  return y.astype(jnp.result_type(x.dtype, packed.dtype))


def packed_contraction(x: jax.Array, packed: PackedWeight) -> jax.Array:
  """A DenseGeneral-style layer's product from its packed kernel (no bias): x's last
  `contracted_dims` dims (the kernel's leading dims) contracted, the output dims the kernel's
  trailing ones. For a (K, N) kernel it is `packed_linear`."""
  lead = packed.flat_shape[:packed.contracted_dims]
  if x.shape[x.ndim - len(lead):] != lead:
    raise ValueError(f"int4jax: the packed kernel contracts dims {lead}, but the input's trailing "
                     f"dims are {x.shape[x.ndim - len(lead):]}")
  free = x.shape[:x.ndim - len(lead)]
  y = packed_linear(x.reshape(free + (packed.in_features,)), packed)
  return y.reshape(free + packed.flat_shape[packed.contracted_dims:])


def packed_layer_call(product, inputs: jax.Array, packed: PackedWeight, bias, dtype,
                      preferred_element_type=None, bias_shape=None) -> jax.Array:
  """A Flax layer's call from its packed kernel, in training's dtypes and bias order:
  `product(inputs, packed)` in the layer's dtype (default: inputs, kernel and bias promoted),
  then the bias, reshaped to `bias_shape` (default: broadcast over the leading dims)."""
  dtype = dtype or jnp.result_type(inputs.dtype, packed.dtype,
                                   *([bias.dtype] if bias is not None else []))
  y = product(inputs.astype(dtype), packed).astype(dtype)
  if preferred_element_type is not None:
    y = y.astype(preferred_element_type)
  if bias is not None:
    shape = (1,) * (y.ndim - bias.ndim) + bias.shape if bias_shape is None else bias_shape
    y = y + jnp.reshape(bias.astype(dtype), shape)
  return y


def einsum_packing(spec: str, x_ndim: int, kernel_ndim: int):
  """(kernel_perm, contracted_dims) that export an Einsum layer's kernel for `packed_einsum`
  (kernel_perm () when no transpose is needed), or None when the einsum has batch dims (those
  run as a batch of GEMMs and keep a float kernel) or is not an INT4 GEMM."""
  try:
    ((lc, rc), (lb, _)), _ = contraction.einsum_dimension_numbers(spec, x_ndim, kernel_ndim)
  except ValueError:
    return None
  if lb:
    return None
  perm = rc + tuple(a for a in range(kernel_ndim) if a not in rc)
  return (() if perm == tuple(range(kernel_ndim)) else perm), len(rc)


def packed_einsum(spec: str, x: jax.Array, packed: PackedWeight) -> jax.Array:
  """An Einsum layer's contraction from its packed kernel (no bias), as jnp.einsum(spec, x,
  kernel) lays it out."""
  ((lc, _), _), out_perm = contraction.einsum_dimension_numbers(
      spec, x.ndim, len(packed.kernel_shape))
  layout = einsum_packing(spec, x.ndim, len(packed.kernel_shape))
  if layout != (packed.kernel_perm, packed.contracted_dims):
    raise ValueError(f"int4jax: einsum {spec!r} needs its kernel packed as (kernel_perm, "
                     f"contracted_dims) = {layout}, but it was exported as "
                     f"{(packed.kernel_perm, packed.contracted_dims)}: export the layer again")
  free = tuple(a for a in range(x.ndim) if a not in lc)
  y = packed_contraction(jnp.transpose(x, free + lc), packed)
  return jnp.transpose(y, out_perm)


def dot_general_packing(dimension_numbers, rhs_ndim: int):
  """(kernel_perm, contracted_dims) that export a weight contracted by `lax.dot_general(x, w,
  dimension_numbers)` for `packed_dot_general`, or None with batch dims."""
  (_, rc), (lb, _) = dimension_numbers
  if lb:
    return None
  rc = tuple(int(a) for a in rc)
  perm = rc + tuple(a for a in range(rhs_ndim) if a not in rc)
  return (() if perm == tuple(range(rhs_ndim)) else perm), len(rc)


def packed_dot_general(x: jax.Array, packed: PackedWeight, dimension_numbers) -> jax.Array:
  """`lax.dot_general(x, kernel, dimension_numbers)` from the packed kernel (no batch dims): x's
  free dims, then the kernel's, as dot_general lays them out."""
  (lc, _), _ = dimension_numbers
  layout = dot_general_packing(dimension_numbers, len(packed.kernel_shape))
  if layout != (packed.kernel_perm, packed.contracted_dims):
    raise ValueError(f"int4jax: dot_general {dimension_numbers} needs its kernel packed as "
                     f"(kernel_perm, contracted_dims) = {layout}, but it was exported as "
                     f"{(packed.kernel_perm, packed.contracted_dims)}: export it again")
  lc = tuple(int(a) for a in lc)
  free = tuple(a for a in range(x.ndim) if a not in lc)
  return packed_contraction(jnp.transpose(x, free + lc), packed)


def export(params: Mapping[str, Any], plan: Mapping[str, Optional[Int4Config]]
           ) -> Dict[str, Any]:
  """A copy of a params tree (nested dicts, '/'-joined layer paths as in `plan`) in which the
  kernel of every INT4 Dense, DenseGeneral and Einsum layer that can serve packed weights is a
  PackedWeight: those in a QuantizationPlan's `contracted_dims` (int4jax.plan / a linen
  QuantizedModel's .plan(x)), attention's (d, heads, head_dim) projections included. Float
  layers keep their kernels, and so do INT4 layers that cannot be served packed (batch dims):
  they still run INT4 from the float kernel (logged). A module's own contractions on its params
  (`quantize_model`'s intercept_raw: gemma's Einsum `w`, `layer_0/mlp/linear`) are packed
  too, at the param the plan names (`param_paths`). With a plain dict for a plan, every INT4
  layer's 2-D kernel is packed."""
  dims_of = getattr(plan, "contracted_dims", None)
  param_paths = getattr(plan, "param_paths", {})
  out = dict(params)  # copied along each rewritten path below; the arrays are shared
  for path, config in plan.items():
    if config is None:
      continue
    node = out
    names = param_paths.get(path, path + "/kernel").split("/")
    for name in names[:-2]:
      node[name] = dict(node[name])
      node = node[name]
    layer = dict(node[names[-2]]) if len(names) > 1 else node
    kernel = layer.get(names[-1])
    if isinstance(kernel, PackedWeight):
      continue  # already packed (a parameter shared by two contractions)
    dims = (1 if kernel is not None and kernel.ndim == 2 else None) if dims_of is None \
        else dims_of.get(path)
    if kernel is None or dims is None:
      logger.info("int4jax.export: %s keeps its float weights (%s)", path,
                  "no 'kernel' param: a contraction the module runs itself" if kernel is None
                  else "its contraction has batch dims, or it is not a layer that serves packed "
                  "kernels")
      continue
    layer[names[-1]] = export_weight(kernel, config, dims,
                                     getattr(plan, "kernel_perms", {}).get(path, ()))
    if len(names) > 1:
      node[names[-2]] = layer
  return out
