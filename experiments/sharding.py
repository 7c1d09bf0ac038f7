"""Data, tensor and FSDP parallelism for the experiments, with JAX's own SPMD machinery.

A mesh from "data=4,model=2"; params (and the optimizer state that mirrors them) placed by
NamedSharding; batches split over "data"; one jit over it all, with GSPMD inserting the
collectives. INT4 layers need nothing special: the op is a jnp program, so the sharded step
computes what the one-device step computes, up to the order of float reductions.

Placement of a param with module path M and name N (kernel, bias, ...):
- tensor parallel (mesh axis "model"): a task's `tensor_parallel` maps path regexes to "column"
  (kernel (in, out) split on out, bias split) or "row" (kernel split on in, bias replicated).
  Column then row, as in Megatron, so an MLP or attention block needs one reduction.
- FSDP (fsdp=True, mesh axis "data"): a kernel's output (last) dimension, or else every param's
  largest dimension that is not already split and divides by the data axis, is split over
  "data"; GSPMD gathers it where it is used. INT4 layers gather packed INT4 instead of floats
  when `gathers_int4(config)` (int4jax/fsdp.py: shards are quantized where they live, which
  needs the output-dim split). A DenseGeneral kernel (d, heads, head_dim) is split on head_dim,
  which interleaves the flattened output columns: the INT4 gather then reshards the float
  kernel to contiguous columns first (an all-to-all in the HLO), a cost the Dense kernels of the
  experiments' own models do not have.
A dimension that does not divide by its axis stays whole, and `describe` lists it. The column/row
rule assumes Dense kernels (in, out); DenseGeneral kernels (Flax's attention: (d, heads,
head_dim) and (heads, head_dim, d)) are split on their first or last dim, which is correct but
makes GSPMD reshard between the layers.
"""

import re
from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "model")


def parse_mesh(spec: str) -> Dict[str, int]:
  """"data=4,model=2" -> {"data": 4, "model": 2}."""
  sizes = {}
  for part in spec.split(","):
    name, _, size = part.partition("=")
    name = name.strip()
    if name not in AXES or not size.strip().isdigit() or int(size) < 1 or name in sizes:
      raise ValueError(f"mesh {spec!r}: expected comma-separated axis=size with axes from {AXES}, "
                       f"e.g. 'data=4,model=2'")
    sizes[name] = int(size)
  return sizes


def make_mesh(spec: str, devices=None) -> Mesh:
  """A mesh over the first prod(sizes) devices."""
  sizes = parse_mesh(spec)
  devices = jax.devices() if devices is None else devices
  n = int(np.prod(list(sizes.values())))
  if n > len(devices):
    raise ValueError(f"mesh {spec!r} needs {n} devices, there are {len(devices)} (on CPU, set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before importing jax)")
  return Mesh(np.array(devices[:n]).reshape(tuple(sizes.values())), tuple(sizes))


def _module_path(path) -> Tuple[Tuple[str, ...], Optional[str]]:
  """(('params', 'block_0', 'attn', 'query'), 'kernel') from a pytree path: its dict keys only,
  so an optimizer state's mu/nu trees give the path of the param they mirror."""
  keys = tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
  return keys[:-1], (keys[-1] if keys else None)


def _tensor_parallel_kind(module: Tuple[str, ...], tensor_parallel: Mapping[str, str]):
  """The kind of the first pattern matching a tail of the module path (so the layer's path
  matches inside a train state {"params": ..., "opt": ...} too)."""
  tails = ["/".join(module[i:]) for i in range(len(module))]
  return next((k for pattern, k in tensor_parallel.items()
               if any(re.fullmatch(pattern, t) for t in tails)), None)


def spec_for(path, shape, mesh: Mesh, tensor_parallel: Mapping[str, str], fsdp: bool) -> P:
  module, name = _module_path(path)
  spec = [None] * len(shape)
  sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
  model = sizes.get("model", 1)
  kind = _tensor_parallel_kind(module, tensor_parallel)
  if model > 1 and kind is not None and name in ("kernel", "bias"):
    dim = {("column", "kernel"): -1, ("column", "bias"): 0, ("row", "kernel"): 0}.get(
        (kind, name))
    if dim is not None and len(shape) and shape[dim] % model == 0:
      spec[dim] = "model"
  data = sizes.get("data", 1)
  if fsdp and data > 1:
    free = [i for i, s in enumerate(shape) if spec[i] is None and s % data == 0 and s >= data]
    if name == "kernel" and len(shape) - 1 in free:
      spec[-1] = "data"
    elif free:
      spec[max(free, key=lambda i: shape[i])] = "data"
  return P(*spec)


def gathers_int4(config) -> bool:
  """Whether a run's INT4 layers all-gather packed INT4 weights (Int4Config.fsdp_axis="data"):
  FSDP with config.fsdp_int4_wire on a mesh without a "model" axis over 1 device (with tensor
  parallelism the kernels are split on "model" too, and the INT4 gather keeps to FSDP alone)."""
  if not (config.mesh and config.fsdp and config.fsdp_int4_wire):
    return False
  sizes = parse_mesh(config.mesh)
  return sizes.get("data", 1) > 1 and sizes.get("model", 1) == 1


def tree_shardings(tree, mesh: Mesh, tensor_parallel: Mapping[str, str] = None,
                   fsdp: bool = False):
  """NamedShardings for every leaf of `tree` (params, optimizer state, a whole train state)."""
  tensor_parallel = tensor_parallel or {}
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, spec_for(path, np.shape(x), mesh, tensor_parallel,
                                                   fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Split the leading (example) dimension over "data"; whole on a mesh without it."""
  return NamedSharding(mesh, P("data") if "data" in mesh.axis_names else P())


def shard_batch(batch, mesh: Mesh):
  data = dict(zip(mesh.axis_names, mesh.devices.shape)).get("data", 1)
  for key, x in batch.items():
    if np.ndim(x) and np.shape(x)[0] % data:
      raise ValueError(f"batch[{key!r}] has {np.shape(x)[0]} examples, not a multiple of the "
                       f"mesh's data axis ({data}): change batch_size or the mesh")
  return jax.device_put(batch, batch_sharding(mesh))


def describe(tree, shardings) -> str:
  """One line per leaf: its path, shape and PartitionSpec."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  specs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  return "\n".join(f"{jax.tree_util.keystr(p)} {tuple(np.shape(x))} {s.spec}"
                   for (p, x), s in zip(leaves, specs))
