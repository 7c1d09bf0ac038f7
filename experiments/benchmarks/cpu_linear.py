"""CPU timing: jitted fwd+bwd of int4_linear vs the same float32 `x @ kernel`, one process.

  python -m experiments.benchmarks.cpu_linear [--tokens 4096] [--size 2048] [--repeats 20] \\
      [--out FILE]

Prints a table and writes JSON (date, device, jax version, per-config median ms and the ratio
to float32). On CPU the int8 x int8 -> int32 dot runs through XLA's integer GEMM.
"""

import argparse
import datetime
import json
import platform

import jax

from experiments.benchmarks import timer
from int4jax import Int4Config, int4_linear


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--tokens", type=int, default=4096)
  parser.add_argument("--size", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  m, n = args.tokens, args.size
  inputs = []
  for seed in range(3):
    kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
    inputs.append((jax.random.normal(kx, (m, n)), jax.random.normal(kw, (n, n)) / n ** 0.5,
                   jax.random.normal(kc, (m, n)), jax.random.fold_in(kc, 1)))

  def fwd_bwd(linear):
    def step(x, w, cot, key):
      y, vjp = jax.vjp(lambda x, w: linear(x, w, key), x, w)
      return y, vjp(cot)
    return jax.jit(step)

  variants = {
      "float32": lambda x, w, key: x @ w,
      "int4 default": lambda x, w, key: int4_linear(x, w, key=key),
      "int4 per-row (scale_levels=1)": lambda x, w, key: int4_linear(
          x, w, key=key, config=Int4Config(scale_levels=1)),
      "int4 scale_search=2": lambda x, w, key: int4_linear(
          x, w, key=key, config=Int4Config(scale_search=2)),
      "int4 lss=systematic 0.5": lambda x, w, key: int4_linear(
          x, w, key=key, config=Int4Config(lss="systematic", lss_budget=0.5)),
      "int4 grad_mode=float": lambda x, w, key: int4_linear(
          x, w, key=key, config=Int4Config(grad_mode="float")),
  }
  rows = timer.time_interleaved({name: fwd_bwd(fn) for name, fn in variants.items()}, inputs,
                                args.repeats)
  base = rows["float32"]
  result = {
      "date": datetime.date.today().isoformat(),
      "device": f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
                f"{jax.local_device_count()} device, os.cpu_count={__import__('os').cpu_count()})",
      "jax_version": jax.__version__,
      "shape": {"x": [m, n], "kernel": [n, n]},
      "default_config": repr(Int4Config()),
      "rows": [{"op": "linear fwd+bwd", "variant": k, "median_ms": round(v, 2),
                "ratio_vs_float32": round(v / base, 3)} for k, v in rows.items()],
  }
  print(f"fwd+bwd, x ({m}, {n}) @ kernel ({n}, {n}), jit, median of {args.repeats}, "
        "variants interleaved")
  print(f"{'variant':30s} {'ms':>9s} {'x float32':>10s}")
  for row in result["rows"]:
    print(f"{row['variant']:30s} {row['median_ms']:9.2f} {row['ratio_vs_float32']:10.3f}")
  print(f"date {result['date']}, jax {result['jax_version']}, {result['device']}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
