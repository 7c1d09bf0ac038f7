"""Where a training step's time goes: a profile of a few steps, summed by kernel.

  python -m experiments.benchmarks.profile_step --task shakespeare --size gpu --variant int4
      [--steps 3] [--data_dir DIR] [--tiny] [--out DIR] [--name NAME]

Builds the variant's jitted step as experiments.train does (benchmarks.train_step.step_fn), runs
it twice to compile and warm up, then records `--steps` steps with `jax.profiler.trace` and reads
the Perfetto trace it writes. Every complete event on a device (processes named "/device:...")
is summed by name; on a machine without device events (CPU) the XLA ops of the host's compute
threads are summed instead (not the runtime spans around them), and the JSON says which; XLA:CPU
names integer and float dots alike ("dot.N"), so there the categories are rough. Each kernel gets a category from its name
(integer GEMM, float GEMM, other: fusions such as the quantizers, copies, transposes): from the
HLO instruction the event names (its `hlo_op`), looked up in the compiled step's HLO with its
operand types, else from the kernel's name; so the table reads as the step's breakdown. Writes <out>/<name>.{json,md} (benchmarks.timer) and keeps
the raw trace under --trace_dir (default <out>/<name>_trace/).
"""

import collections
import glob
import gzip
import json
import os
import re
from typing import Dict, List, Tuple

import jax

from experiments import tasks, train
from experiments.benchmarks import timer, train_step

# First match wins. Names of cuBLAS/CUTLASS kernels carry their element types (s8, i8, imma);
# XLA:CPU's ops are named after the HLO (dot, fusion).
CATEGORIES = (("GEMM (XLA:CPU dot, int or float)", re.compile(r"^dot(\.\d+)?$")),
              ("int GEMM", re.compile(r"(?i)(imma|igemm|s8|i8_|int8|_i8|u8s8)")),
              ("float GEMM", re.compile(r"(?i)(gemm|cublas|cutlass|xmma|matmul|\bdot)")),
              ("other", re.compile(r".")))
_HOST_THREADS = re.compile(r"(?i)(eigen|xla|pjrt)")
_HOST_WRAPPERS = re.compile(r"::|Execute|Await|wait")  # runtime spans that enclose the ops


def category(name: str, hlo_kind: str = None) -> str:
  """The kernel's category: from the HLO instruction it ran (hlo_kind, when the trace names one
  that `gemm_kinds` recognized), else from its name."""
  if hlo_kind is not None:
    return hlo_kind
  return next(label for label, pattern in CATEGORIES if pattern.search(name))


def gemm_kinds(hlo_text: str) -> Dict[str, str]:
  """{HLO instruction name: "int GEMM" or "float GEMM"} for the compiled program's GEMMs: cuBLAS /
  cuBLASLt custom calls and dots (also inside fusions, which are then named for their caller),
  by their operands' element types (printed with the operands, or else their definitions')."""
  kinds, computations, types = {}, {}, {}
  current = None
  for line in hlo_text.splitlines():
    head = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      continue
    inst = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$", line)
    if not inst:
      continue
    name, rest = inst.groups()
    types[(current, name)] = rest.split(" ", 1)[0]
    gemm = (re.search(r'custom_call_target="[^"]*(gemm|matmul)', rest, re.I)
            or re.search(r"\bdot\(", rest))
    if gemm:
      call = re.search(r"\b(?:custom-call|dot|fusion)\(([^)]*)\)", rest)
      operands = call.group(1) if call else ""
      operands += " " + " ".join(types.get((current, o), "")
                                 for o in re.findall(r"%([\w.\-]+)", operands))
      kind = "int GEMM" if re.search(r"\b[su]8\[", operands) else "float GEMM"
      kinds[name] = kind
      computations.setdefault(current, kind)
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    if called and called.group(1) in computations:
      kinds.setdefault(name, computations[called.group(1)])
  return kinds


def kernel_times(trace_events: List[dict]) -> Tuple[Dict[str, float], str, Dict[str, str]]:
  """({event name: total microseconds}, "device" or "host", {event name: the HLO instruction
  it ran, where the event says}) from Perfetto trace events."""
  process, thread = {}, {}
  for e in trace_events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      process[e.get("pid")] = e["args"]["name"]
    if e.get("ph") == "M" and e.get("name") == "thread_name":
      thread[(e.get("pid"), e.get("tid"))] = e["args"]["name"]
  devices = {pid for pid, name in process.items() if name.startswith("/device:")}
  source = "device" if devices else "host"
  keep = ((lambda e: e.get("pid") in devices) if devices else
          (lambda e: bool(_HOST_THREADS.search(thread.get((e.get("pid"), e.get("tid")), "")))
           and not _HOST_WRAPPERS.search(e["name"])))
  totals: Dict[str, float] = collections.defaultdict(float)
  ops: Dict[str, str] = {}
  for e in trace_events:
    if e.get("ph") == "X" and keep(e):
      totals[e["name"]] += float(e.get("dur", 0.0))
      op = (e.get("args") or {}).get("hlo_op")
      if op:
        ops.setdefault(e["name"], op)
  return dict(totals), source, ops


def profile(config, variant: str, steps: int, trace_dir: str):
  """kernel_times of `steps` steps of `variant`, and the compiled step's HLO text."""
  task = tasks.task_for(config)
  data = task.load(config)
  batch = task.train_batch(config, data, 0, 0)
  fn, state = train_step.step_fn(task, config, data, variant)
  train.tune_step(variant, fn, state, batch)  # the kernels the timed and trained steps use
  compiled = fn.lower(state, batch).compile()  # one compile: the executable run and read
  for _ in range(2):
    jax.block_until_ready(compiled(state, batch))
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(compiled(state, batch))
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  return kernel_times(events) + (compiled.as_text(),)


def rows_from(times: Dict[str, float], steps: int, top: int,
              kinds: Dict[str, str] = None) -> Tuple[List[dict], Dict]:
  """The `top` kernels and the per-category sums; `kinds` {kernel name: category} (from the
  HLO) overrides the name patterns."""
  kinds = kinds or {}
  total = sum(times.values()) or 1.0
  ranked = sorted(times.items(), key=lambda kv: -kv[1])
  rows = [{"kernel": name, "category": category(name, kinds.get(name)),
           "ms_per_step": round(us / steps / 1e3, 4), "share": round(us / total, 4)}
          for name, us in ranked[:top]]
  by_category = collections.defaultdict(float)
  for name, us in times.items():
    by_category[category(name, kinds.get(name))] += us
  summary = {label: {"ms_per_step": round(us / steps / 1e3, 4), "share": round(us / total, 4)}
             for label, us in sorted(by_category.items(), key=lambda kv: -kv[1])}
  return rows, summary


def markdown(result) -> str:
  lines = [f"{result['device']}, jax {result['jax_version']}, {result['date']}; `{result['task']}` "
           f"{result['variant']}, {result['steps']} steps profiled, {result['source']} events; "
           "shares are of the summed event time, not of the step's wall time", "",
           "| category | ms/step | share |", "|---|---:|---:|"]
  lines += [f"| {label} | {v['ms_per_step']:.3f} | {100 * v['share']:.1f}% |"
            for label, v in result["categories"].items()]
  lines += ["", "| kernel | category | ms/step | share |", "|---|---|---:|---:|"]
  lines += [f"| `{r['kernel'][:80]}` | {r['category']} | {r['ms_per_step']:.3f} | "
            f"{100 * r['share']:.1f}% |" for r in result["rows"]]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = train_step.config_parser(__doc__)
  parser.add_argument("--variant", default="int4")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=25, help="kernels listed")
  parser.add_argument("--trace_dir", default=None, help="raw trace (default <out>/<name>_trace)")
  args = parser.parse_args(argv)
  config = train_step.config_from(args, parser)
  name = args.name or f"profile_{config.task}"
  times, source, ops, hlo = profile(config, args.variant, args.steps,
                                    args.trace_dir or os.path.join(args.out, f"{name}_trace"))
  if not times:
    raise SystemExit("the trace holds no kernel events")
  gemms = gemm_kinds(hlo)
  kinds = {kernel: gemms[op] for kernel, op in ops.items() if op in gemms}
  rows, summary = rows_from(times, args.steps, args.top, kinds)
  for label, v in summary.items():
    print(f"{label:12s} {v['ms_per_step']:9.3f} ms/step  {100 * v['share']:5.1f}%")
  timer.write_results(rows, name, args.out,
                      {"task": config.task, "variant": args.variant, "steps": args.steps,
                       "source": source, "categories": summary}, markdown)


if __name__ == "__main__":
  main()
