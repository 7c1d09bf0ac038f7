"""Data, tensor and FSDP parallel training steps on a device mesh: step time and the bytes each
step's collectives move, read from the compiled HLO.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m experiments.benchmarks.mesh_scaling [--size cpu] [--repeats 10] [--tiny]

The step is experiments.train's own (the shakespeare GPT), built per row:
  dp           mesh data=8
  tp           mesh data=2,model=4 (Megatron column/row split of every block layer)
  fsdp         mesh data=8, every param split over data (kernels on their output dim)
and per model:
  fp32         the float model (f32 params)
  int4-float   INT4 layers, fsdp_int4_wire=False: GSPMD gathers the weights as it chooses
  int4         INT4 layers; under FSDP the packed INT4 weights are gathered (Int4Config.fsdp_axis)

Bytes: every collective in the optimized HLO (all-gather, all-reduce, reduce-scatter, all-to-all,
collective-permute; XLA:CPU's sync forms, see _collectives) counted once per step at the size of
its result on one device. "block
weights" are the all-gathers of the INT4 layers' weights, told apart by shape: a gather with as
many elements as one of those kernels (K x N, or Kp x N after padding; any dtype, any reshape of
it) whose first or last dim is one of that kernel's, the packed INT4 gathers (u8) and their
per-column scales (f32 (1, N); biases are 1-D). A heuristic: an activation gather of the same
size and a matching edge dim would count too. "vs bf16" divides
that by 2 bytes x the elements of every INT4-layer kernel: gathering each once in bf16. The
float model keeps f32 params, so its gathers are f32. Step time is the median over `repeats`
steps, rows interleaved; on forced CPU devices it says little about real interconnects, so read
the bytes, not the milliseconds. Writes experiments/results/mesh_scaling.{json,md}.
"""

import argparse
import math
import re
from typing import Dict, List

import jax
import numpy as np

from experiments import sharding, tasks, train
from experiments.benchmarks import timer
from experiments.configs import get_config

ROWS = (("dp", "data=8", False, ("fp32", "int4")),
        ("tp", "data=2,model=4", False, ("fp32", "int4")),
        ("fsdp", "data=8", True, ("fp32", "int4-float", "int4")))
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}
# --tiny: a GPT small enough for a test (data unchanged)
TINY = dict(num_layers=1, hidden_size=64, num_heads=2, seq_len=16, batch_size=8)


def _collectives(hlo: str):
  """(kind, [(dtype, shape)] of its result) for every collective op in compiled HLO text, each
  counted once: sync ops, and the -start of all-gather / collective-permute, whose tuple holds
  (operands, results), counted by its results. (XLA:CPU, which made the committed table, emits
  sync ops; other async forms, such as GPU's async-start wrappers, are not read.)"""
  pattern = re.compile(r"= (\(.*?\)|\S+) (" + "|".join(COLLECTIVES) + r")(-start)?\(")
  for line in hlo.splitlines():
    match = pattern.search(line)
    if match:
      shapes = [(d, tuple(int(x) for x in dims.split(",") if x))
                for d, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1))]
      halved = match.group(3) and match.group(2) in ("all-gather", "collective-permute")
      yield match.group(2), shapes[len(shapes) // 2:] if halved else shapes


def _nbytes(dtype: str, shape) -> int:
  return _DTYPE_BYTES[dtype] * math.prod(shape)


def collective_bytes(hlo: str) -> Dict[str, int]:
  """Bytes of each collective kind in compiled HLO text: the sizes of its results on one device."""
  totals = dict.fromkeys(COLLECTIVES, 0)
  for kind, shapes in _collectives(hlo):
    totals[kind] += sum(_nbytes(d, s) for d, s in shapes)
  return totals


def weight_gather_bytes(hlo: str, kernels) -> int:
  """Bytes of the all-gathers that carry the (K, N, Kp) `kernels`' weights (module doc)."""
  columns = {n for _, n, _ in kernels}

  def is_weight(shape):
    dims = tuple(d for d in shape if d != 1)
    return bool(dims) and any(math.prod(dims) in (k * n, kp * n) and
                              (dims[0] in (k, kp, n) or dims[-1] in (k, kp, n))
                              for k, n, kp in kernels)
  total = 0
  for kind, shapes in _collectives(hlo):
    for dtype, shape in shapes if kind == "all-gather" else ():
      scale = dtype == "f32" and len(shape) == 2 and shape[0] == 1 and shape[1] in columns
      if dtype == "u8" or scale or is_weight(shape):
        total += _nbytes(dtype, shape)
  return total


def int4_kernels(task, config, data, params):
  """(K, N, Kp) of every 2-D kernel the int4 variant quantizes (its plan); Kp is K padded as the
  op pads it."""
  model = train.build_model(task, config, data, "int4")
  plan = model.plan(*task.model_inputs(task.train_batch(config, data, 0, 0)))
  kernels = []
  for path, layer_config in plan.items():
    node = params
    for name in path.split("/"):
      node = node[name]
    if layer_config is not None and np.ndim(node["kernel"]) == 2:
      k, n = np.shape(node["kernel"])
      multiple = layer_config.contraction_multiple
      kernels.append((k, n, -(-k // multiple) * multiple))
  return kernels


def _build(task, config, data, model_kind: str):
  """(jitted step, placed state, sharded batch, mesh) of one row."""
  variant = "fp32" if model_kind == "fp32" else "int4"
  config = config.replace(fsdp_int4_wire=model_kind != "int4-float")
  model = train.build_model(task, config, data, variant)
  tx, _ = task.optimizer(config, 100)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    state, others = train.initial_state(task, config, data, model, variant, 0, tx)
  placement = sharding.tree_shardings(state, mesh, task.tensor_parallel, config.fsdp)
  step = train.make_train_step(task, config, model, tx, others, 0, placement)
  batch = sharding.shard_batch(task.train_batch(config, data, 0, 0), mesh)
  return step, jax.device_put(state, placement), batch, mesh


def run(config, repeats: int) -> List[dict]:
  task = tasks.task_for(config)
  data = task.load(config)
  rows, fns, kernels = [], {}, None
  for name, mesh_spec, fsdp, kinds in ROWS:
    for kind in kinds:
      row_config = config.replace(mesh=mesh_spec, fsdp=fsdp)
      step, state, batch, mesh = _build(task, row_config, data, kind)
      if kernels is None:
        kernels = int4_kernels(task, row_config, data, state["params"])
      with jax.set_mesh(mesh):
        hlo = step.lower(state, batch).compile().as_text()
      moved = collective_bytes(hlo)
      weights = weight_gather_bytes(hlo, kernels)
      bf16 = 2 * sum(k * n for k, n, _ in kernels)
      rows.append({"parallelism": name, "mesh": mesh_spec, "model": kind,
                   **{k.replace("-", "_") + "_bytes": v for k, v in moved.items()},
                   "total_bytes": sum(moved.values()), "block_weight_gather_bytes": weights,
                   "block_weight_gather_vs_bf16": round(weights / bf16, 4)})

      def call(step=step, state=state, batch=batch, mesh=mesh):  # the same state every call
        with jax.set_mesh(mesh):
          return step(state, batch)
      fns[f"{name} {kind}"] = call
  ms = timer.time_interleaved(fns, [()], repeats) if repeats else {}
  for r in rows:
    r["median_ms"] = round(ms[f"{r['parallelism']} {r['model']}"], 2) if ms else None
  return rows


def markdown(result) -> str:
  lines = [f"{result['device']}, jax {result['jax_version']}, {result['date']}; the "
           f"`{result['task']}` GPT ({result['num_layers']} blocks, width "
           f"{result['hidden_size']}), batch {result['batch_size']} x {result['seq_len']} "
           f"tokens, 8 devices; bytes per step from the compiled HLO (one device's collective "
           f"results, experiments/benchmarks/mesh_scaling.py), ms/step median of "
           f"{result['repeats']}, rows interleaved", "",
           "| parallelism | mesh | model | all-gather MB | of which block weights MB | "
           "block weights vs bf16 | all-reduce MB | reduce-scatter MB | other MB | total MB | "
           "ms/step |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    other = r["all_to_all_bytes"] + r["collective_permute_bytes"]
    ms = "—" if r["median_ms"] is None else f"{r['median_ms']:.1f}"
    lines.append(f"| {r['parallelism']} | {r['mesh']} | {r['model']} | "
                 f"{r['all_gather_bytes'] / 1e6:.3f} | "
                 f"{r['block_weight_gather_bytes'] / 1e6:.3f} | "
                 f"{r['block_weight_gather_vs_bf16']:.3f} | {r['all_reduce_bytes'] / 1e6:.3f} | "
                 f"{r['reduce_scatter_bytes'] / 1e6:.3f} | {other / 1e6:.3f} | "
                 f"{r['total_bytes'] / 1e6:.3f} | {ms} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="cpu")
  parser.add_argument("--repeats", type=int, default=10, help="timed steps per row (0: none)")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--tiny", action="store_true", help="a one-block GPT (tests)")
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  if len(jax.devices()) < 8:
    parser.error("needs 8 devices: set XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                 "(on CPU) before running")
  config = get_config("shakespeare", args.size)
  if args.data_dir:
    config = config.replace(data_dir=args.data_dir)
  if args.tiny:
    config = config.replace(**TINY)
  rows = run(config, args.repeats)
  for r in rows:
    print(f"{r['parallelism']:5s} {r['model']:11s} all-gather {r['all_gather_bytes']:>11,d} B "
          f"(block weights {r['block_weight_gather_bytes']:>10,d} B, "
          f"{r['block_weight_gather_vs_bf16']:.3f}x bf16)  total {r['total_bytes']:>11,d} B  "
          f"{r['median_ms']} ms/step")
  timer.write_results(rows, "mesh_scaling", args.out,
                      {"task": config.task, "batch_size": config.batch_size,
                       "seq_len": config.seq_len, "num_layers": config.num_layers,
                       "hidden_size": config.hidden_size, "repeats": args.repeats}, markdown)


if __name__ == "__main__":
  main()
