"""The benchmarks' one timer, and the GPU benchmarks' device description and JSON + markdown output.

GPU timing (median_ms): each candidate is jitted over ROTATE different input sets inside one
call (so launch overhead is amortised and no two consecutive GEMMs read the same, L2-resident
operands), warmed up, then timed `repeats` times with block_until_ready; the median is divided
by ROTATE. Inputs are random, never zeros (a GEMM of zeros can run faster on some hardware).

CPU timing (time_interleaved): several jitted variants timed round-robin, one call each per
round, so that a slow spell of a shared CPU hits every variant alike.
"""

import datetime
import json
import os
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Sequence

import jax

ROTATE = 4


def elapsed_ms(fn: Callable, args: Sequence) -> float:
  """Wall milliseconds of one call `fn(*args)`, up to its results being ready."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) * 1e3


def median_ms(fn: Callable, args: Sequence, repeats: int, warmup: int = 3) -> float:
  """Median milliseconds of one application of `fn` (called on ROTATE input sets per timing)."""
  many = jax.jit(lambda sets: [fn(*s) for s in sets])
  for _ in range(warmup):
    jax.block_until_ready(many(args))
  return statistics.median(elapsed_ms(many, (args,)) / len(args) for _ in range(repeats))


def time_interleaved(fns: Dict[str, Callable], args_list: Sequence, repeats: int
                     ) -> Dict[str, float]:
  """Median ms of each of `fns` (name -> jitted fn), timed round-robin so that a slow spell of a
  shared CPU hits every variant alike."""
  for fn in fns.values():  # compile and warm up
    for args in args_list:
      jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for i in range(repeats):
    args = args_list[i % len(args_list)]  # rotate inputs
    for name, fn in fns.items():
      times[name].append(elapsed_ms(fn, args))
  return {name: statistics.median(t) for name, t in times.items()}


def device_info() -> Dict[str, str]:
  dev = jax.devices()[0]
  driver = "n/a"
  try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.strip() or "n/a"
  except (OSError, subprocess.SubprocessError):
    pass
  cc = getattr(dev, "compute_capability", None)
  kind = dev.device_kind + (f" (sm_{str(cc).replace('.', '')})" if cc else "")
  return {"device": kind, "driver": driver, "jax_version": jax.__version__,
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_results(rows: List[dict], name: str, out_dir: str, extra: Dict = None,
                  table: Callable[[Dict], str] = None) -> str:
  """Writes <out_dir>/<name>.json and <name>.md (the table is generated from the JSON by
  `table`, default markdown_table: the GEMM benchmarks' rows)."""
  os.makedirs(out_dir, exist_ok=True)
  result = {**device_info(), **(extra or {}), "rows": rows}
  path = os.path.join(out_dir, f"{name}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write((table or markdown_table)(result))
  return path


def markdown_table(result: Dict) -> str:
  lines = [f"{result['device']}, driver {result['driver']}, jax {result['jax_version']}, "
           f"{result['date']}", "",
           "| op | backend | shape | median ms | TFLOP/s | vs bf16 |",
           "|---|---|---|---:|---:|---:|"]
  for r in result["rows"]:
    if r.get("median_ms") is None:
      lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | — | — | "
                   f"{r.get('error', 'n/a')} |")
      continue
    lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | {r['median_ms']:.3f} | "
                 f"{r['tflops']:.1f} | {r['speedup_vs_bf16']:.2f}x |")
  return "\n".join(lines) + "\n"


def row(op: str, backend: str, shape, ms: float, flops: float, bf16_ms: float) -> dict:
  return {"op": op, "backend": backend, "shape": list(shape), "median_ms": round(ms, 4),
          "tflops": round(flops / ms / 1e9, 2), "speedup_vs_bf16": round(bf16_ms / ms, 3)}


def failed_row(op: str, backend: str, shape, error: Exception) -> dict:
  """A backend that could not run is a row saying why, never a missing row."""
  return {"op": op, "backend": backend, "shape": list(shape), "median_ms": None, "tflops": None,
          "speedup_vs_bf16": None, "error": f"{type(error).__name__}: {str(error)[:200]}"}
