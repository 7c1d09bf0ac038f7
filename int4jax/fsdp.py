"""FSDP with INT4 weights on the wire: quantize each weight shard where it lives, then gather.

Under FSDP every device stores a slice of each weight and the layer needs all of it, so the
weight is all-gathered before its GEMM. Left to itself GSPMD gathers the float weight and then
quantizes it. With `Int4Config(fsdp_axis="data")` the op instead:

  1. keeps H W (Kp, N) split on its output dim N over the axis: a column's Hadamard, row scale and
     group multipliers all lie along K, so each device quantizes its columns alone, with no
     communication and the same integers as the unsplit quantizer;
  2. packs its columns (int4jax.quantizers.packing.pack_weight_operand): INT4 values two per byte,
     group multipliers two per byte, one float scale per column;
  3. all-gathers those, and unpacks the int8 operand m * q that the GEMMs use.

Bytes gathered per weight element: 0.5 + 0.5 / scale_group + 4 / Kp (about 0.53 at the default,
0.27x of bf16's 2); int8 (1 byte) at forward_bits=8, which has no spare bits to pack.
scale_mode="tensor" needs the global abs-max: GSPMD all-reduces one scalar for it.

The gradient of the weight is computed whole (in the Hadamard domain) and handed back split on
its columns like the weight; GSPMD sums the token shards' partial products into it (a
reduce-scatter, or on XLA:CPU an all-reduce and a slice), as for any FSDP weight. The forward's
stochastic rounding draws its dither for the whole (Kp, N) operand, so it matches the unsplit op
too.

A kernel stored split on another dim is first resharded to this layout by GSPMD (an all-to-all
of the float shard, visible in the HLO); `experiments.sharding` places FSDP kernels on their
output dim for that reason. An output dim that does not divide by the axis size cannot be split
evenly: that layer's weight is gathered as GSPMD chooses, and a warning says so once per (axis,
columns, axis size).
"""

import logging
from typing import Callable, Tuple

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from int4jax.quantizers import packing

logger = logging.getLogger("int4jax")
_warned = set()


def _mesh(axis: str):
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names:
    found = "no mesh is set" if mesh.empty else f"the mesh has axes {mesh.axis_names}"
    raise ValueError(f"Int4Config(fsdp_axis={axis!r}) gathers weights over the mesh axis "
                     f"{axis!r}, but {found}: trace the step inside `with jax.set_mesh(mesh):` "
                     "with a mesh that has that axis, or set fsdp_axis=None")
  return mesh


def _placer(config, n: int):
  """place(a, *spec): a constrained (Auto mesh axes) or resharded (Explicit) to P(*spec) on the
  context mesh; None when n output columns do not split over the axis (warned once per axis,
  n and axis size)."""
  axis = config.fsdp_axis
  mesh = _mesh(axis)
  size = mesh.shape[axis]
  if n % size:
    if (axis, n, size) not in _warned:
      _warned.add((axis, n, size))
      logger.warning("int4jax: fsdp_axis=%r: a weight's %d output columns do not split over %d "
                     "devices; this layer's weight is gathered as GSPMD chooses (the float "
                     "weight or the int8 operand), not packed", axis, n, size)
    return None
  if mesh.axis_types[mesh.axis_names.index(axis)] == jax.sharding.AxisType.Explicit:
    return lambda a, *spec: jax.sharding.reshard(a, P(*spec))
  return lambda a, *spec: jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P(*spec)))


def gather_quantized_weight(wh: jax.Array, config, quantize: Callable, multipliers: Callable):
  """(wv, sw, shards): `quantize(wh)`'s int8 operand (Kp, N) and scale, computed on column shards
  of `wh` over `config.fsdp_axis` and all-gathered packed (see the module doc); `multipliers(wh)`
  gives the group multipliers `quantize` applied (None with one level); `shards` are the
  packed column shards (None when the columns do not split), which the backward gathers again
  (`regather`) instead of keeping the whole operand."""
  axis = config.fsdp_axis
  kp, n = wh.shape
  place = _placer(config, n)
  if place is None:
    return quantize(wh) + (None,)
  wh = place(wh, None, axis)
  wv, sw = quantize(wh)
  group_mults = multipliers(wh)
  per_column = sw.ndim == 2
  sw = place(place(sw, None, axis), None, None) if per_column else sw
  if config.forward_bits == 8:
    shards = (place(wv, None, axis),)
  else:
    shards = tuple(None if a is None else place(a, axis, None)
                   for a in packing.pack_weight_operand(wv, group_mults))
  return regather(shards, config, kp), sw, shards


def regather(shards, config, padded: int) -> jax.Array:
  """The whole int8 operand (padded, N) from its packed column shards: all-gathered (packed
  bytes on the wire), then unpacked."""
  place = _placer(config, shards[0].shape[1] if config.forward_bits == 8 else shards[0].shape[0])
  gathered = [None if a is None else place(a, None, None) for a in shards]
  if config.forward_bits == 8:
    return gathered[0]
  return packing.unpack_weight_operand(*gathered, padded, config.scale_group)


def shard_columns(a: jax.Array, config) -> jax.Array:
  """A (Kp, N) weight-shaped array split on its columns over config.fsdp_axis: H W as the op
  takes it, and dL/d(H W), so that GSPMD reduce-scatters the token-summed partial products (or
  gathers the activations) instead of all-reducing it whole. On an Explicit mesh both then have
  the same type, as a custom_vjp's input and its gradient must."""
  place = _placer(config, a.shape[1])
  return a if place is None else place(a, None, config.fsdp_axis)
