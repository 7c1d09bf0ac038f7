"""GEMM benchmark, all in one run: XLA bf16, XLA int8 (cuBLAS), XLA fp8 e4m3, and our kernels.

  python -m experiments.benchmarks.gemm [--sizes 2048 4096 8192] [--repeats 30] [--out DIR]

Every integer row computes C = (A_int8 @ B_int8) * row_scale * col_scale -> bf16, so the XLA
int8 row includes its separate dequantization pass ("xla-int8+dequant") as well as the bare GEMM
("xla-int8"). Operands hold INT4 values; layouts are the forward GEMM's (A (M, K), B given
K-major as (N, K)). "mosaic" is the backend as a call gets it (nothing is tuned here, so its
first variant); "mosaic:<variant>" rows time each of mosaic_gemm.VARIANTS at the largest size. Also records the HLO custom-call target of XLA's int8 dot. Writes
<out>/bench_gemm.json and bench_gemm.md.
"""

import argparse
import re

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from experiments.benchmarks import timer
from int4jax import backend
from int4jax.backends.mosaic import is_hopper
from int4jax.kernels import mosaic_gemm

NT = ((1,), (1,))  # A (M, K) . B^T (N, K)


def _inputs(n, dtype_fn, seed):
  rng = np.random.default_rng(seed)
  return [dtype_fn(rng, (n, n)) for _ in range(2)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--backends", nargs="+", default=["pallas", "triton", "mosaic"])
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  rows, hlo_targets = [], {}
  for n in args.sizes:
    flops = 2.0 * n ** 3
    shape = (n, n, n)
    int4 = lambda rng, s: jnp.asarray(rng.integers(-8, 8, s), jnp.int8)
    sets_i8 = [(*_inputs(n, int4, seed), jnp.asarray(np.random.default_rng(seed).random((n, 1)),
                                                     jnp.float32) + 0.5,
                jnp.full((1, n), 0.01, jnp.float32)) for seed in range(timer.ROTATE)]
    sets_bf16 = [tuple(x.astype(jnp.bfloat16) for x in s[:2]) for s in sets_i8]
    sets_fp8 = [tuple(x.astype(jnp.float8_e4m3fn) for x in s[:2]) for s in sets_i8]

    def dot(a, b, out=None):
      return lax.dot_general(a, b, (NT, ((), ())), preferred_element_type=out)

    bf16_ms = timer.median_ms(lambda a, b: dot(a, b), sets_bf16, args.repeats)
    rows.append(timer.row("gemm", "xla-bf16", shape, bf16_ms, flops, bf16_ms))
    candidates = {
        "xla-fp8-e4m3": (lambda a, b: dot(a, b, jnp.float32).astype(jnp.bfloat16), sets_fp8),
        "xla-int8": (lambda a, b, r, c: dot(a, b, jnp.int32), sets_i8),
        "xla-int8+dequant": (lambda a, b, r, c: (dot(a, b, jnp.int32).astype(jnp.float32) * r * c
                                                 ).astype(jnp.bfloat16), sets_i8),
    }
    for name in args.backends:
      candidates[name] = (lambda a, b, r, c, name=name: backend.scaled_gemm(name)(
          a, b, NT, r, c).astype(jnp.bfloat16), sets_i8)
      if name == "mosaic" and n == max(args.sizes):  # each variant `int4jax.tune` tries
        for variant, blocks in mosaic_gemm.VARIANTS.items():
          candidates[f"mosaic:{variant}"] = (
              lambda a, b, r, c, blocks=blocks: mosaic_gemm.scaled_gemm_mosaic(
                  a, b, r, c, blocks=blocks).astype(jnp.bfloat16), sets_i8)
    for name, (fn, sets) in candidates.items():
      try:
        if name.startswith("mosaic") and not is_hopper():
          raise RuntimeError("the Mosaic GPU kernel needs a Hopper GPU")
        if name in args.backends:
          backend.describe_backend(name)  # raises, with the reason, where it cannot run
        if name not in ("xla-int8", "xla-int8+dequant", "xla-fp8-e4m3"):
          a, b, r, c = sets[0]  # a kernel must be right before it is timed
          want = (dot(a, b, jnp.int32).astype(jnp.float32) * r * c).astype(jnp.bfloat16)
          if not bool(jnp.array_equal(fn(a, b, r, c), want)):
            raise RuntimeError("result differs from XLA's")
        ms = timer.median_ms(fn, sets, args.repeats)
        rows.append(timer.row("gemm", name, shape, ms, flops, bf16_ms))
      except Exception as e:  # a backend that fails is reported as a row, not dropped
        rows.append(timer.failed_row("gemm", name, shape, e))
      print(rows[-1], flush=True)
    hlo = jax.jit(lambda a, b: dot(a, b, jnp.int32)).lower(*sets_i8[0][:2]).compile().as_text()
    hlo_targets[str(n)] = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
  path = timer.write_results(rows, "bench_gemm", args.out,
                             {"xla_int8_dot_custom_call_targets": hlo_targets})
  print(open(path.replace(".json", ".md")).read())


if __name__ == "__main__":
  main()
