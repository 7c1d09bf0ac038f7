"""Linear layer fwd+bwd benchmark, all quantization included: bf16 XLA vs int4_linear per backend.

  python -m experiments.benchmarks.linear [--shapes 8192,4096,4096 16384,4096,16384] [--out DIR]

One timed unit is y = layer(x, W) plus both backward GEMMs (dX, dW) for a random cotangent,
jitted. FLOPs counted as 6 * tokens * in * out (three GEMMs) for every row, so TFLOP/s compare
like for like. int4 rows use the default config (HQ block 32, per-row scales, bit-split
gradients, stochastic rounding). Writes <out>/bench_linear.json and bench_linear.md.
"""

import argparse

import jax
import jax.numpy as jnp

from experiments.benchmarks import timer
import int4jax
from int4jax import Int4Config, backend, int4_linear


def _fwd_bwd(layer):
  def step(x, w, cot, key):
    y, vjp = jax.vjp(lambda x, w: layer(x, w, key), x, w)
    return y, vjp(cot)
  return step


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--shapes", nargs="+", default=["8192,4096,4096", "16384,4096,16384"])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--backends", nargs="+",
                      default=["xla", "pallas", "triton", "mosaic", "auto"])
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  rows = []
  for spec in args.shapes:
    t, i, o = (int(v) for v in spec.split(","))
    flops = 6.0 * t * i * o
    sets = []
    for seed in range(timer.ROTATE):
      kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
      sets.append((jax.random.normal(kx, (t, i), jnp.bfloat16),
                   (jax.random.normal(kw, (i, o)) / i ** 0.5).astype(jnp.bfloat16),
                   jax.random.normal(kc, (t, o), jnp.bfloat16), jax.random.fold_in(kc, 1)))
    bf16 = _fwd_bwd(lambda x, w, key: x @ w)
    bf16_ms = timer.median_ms(bf16, sets, args.repeats)
    rows.append(timer.row("linear fwd+bwd", "xla-bf16", (t, i, o), bf16_ms, flops, bf16_ms))
    print(rows[-1], flush=True)
    for name in args.backends:
      try:
        backend.describe_backend(name)  # raises, with the reason, where it cannot run
        cfg = Int4Config(backend=name)
        step = _fwd_bwd(lambda x, w, key, cfg=cfg: int4_linear(x, w, key=key, config=cfg))
        tuned = int4jax.tune(step, *sets[0])  # "auto" and Pallas tiles: tuned before timing
        if tuned:
          print(f"int4-{name}: tuned {tuned}", flush=True)
        ms = timer.median_ms(step, sets, args.repeats)
        rows.append(timer.row("linear fwd+bwd", f"int4-{name}", (t, i, o), ms, flops,
                              bf16_ms))
      except Exception as e:
        rows.append(timer.failed_row("linear fwd+bwd", f"int4-{name}", (t, i, o), e))
      print(rows[-1], flush=True)
  path = timer.write_results(rows, "bench_linear", args.out)
  print(open(path.replace(".json", ".md")).read())


if __name__ == "__main__":
  main()
