#!/usr/bin/env bash
# The project's one GPU script: everything that needs a GPU, in one call of at most 10 minutes.
#
#   experiments/benchmarks/gpu_check.sh                  # on the GPU machine, from the repo root
#   SIZE=tiny experiments/benchmarks/gpu_check.sh        # the same stages at tiny sizes; runs on
#                                                        # CPU too (XLA, interpreted Pallas)
#
# Stages, each run under `timeout` so that one failure or hang does not lose the rest:
#   env         date, nvidia-smi, jax version and devices
#   tests       the GPU-marked tests (tests/test_gpu_kernels.py)
#   gemm        bf16, fp8 e4m3 and int8 via XLA, and each kernel, at 2048/4096/8192^3
#   linear      int4_linear fwd+bwd at (16384, 4096, 16384) per backend, against bf16
#   step_gpt2   a GPT training step at GPT-2-small width (shakespeare --size gpu): bf16, FP8
#               via XLA (experiments.baselines) and int4, the goals' comparison
#   step_h4096  the same at hidden 4096 (--size gpu-h4096)
#   profile     where the int4 GPT-2-small step's time goes, summed by kernel (profile_step)
#   sass        int8 tensor-core instructions (IGMMA) in the Mosaic kernels' SASS (each variant)
# The limits add up to 495 s (535 s with each stage's 5 s kill grace). Everything goes to $OUT
# (default experiments/results/gpu): <stage>.txt per stage, stages.txt (each stage's exit
# status and seconds; 124 = timed out), and the raw JSON with device, driver,
# jax version and date: bench_gemm.json, bench_linear.json, bench_train_step_{gpt2,h4096}.json,
# profile_step_gpt2.json
# (each with a generated .md table).
#
# The GPU machine has no network. Bring along, in the working tree:
#   .whl/jax_triton-0.3.1-*.whl  optional, for the "triton" backend:
#       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp -d .whl jax-triton==0.3.1
#   .device_data/                the train-step stages' tokenized data:
#       python -m experiments.pack_for_device        (or set DATA_DIR)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-experiments/results/gpu}"
SIZE="${SIZE:-full}"
DATA_DIR="${DATA_DIR:-.device_data/data}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/jax_triton-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
SCALE=1
if [ "$SIZE" = tiny ]; then
  SCALE=3  # a loaded CPU compiling every kernel: three times each stage's GPU limit
  GEMM=(--sizes 64 --repeats 2); LINEAR=(--shapes 64,32,32 --repeats 2 --backends xla pallas)
  STEP=(--size cpu-char --tiny --repeats 2 --variants bf16 fp8 int4); STEP_H4096=("${STEP[@]}")
  PROFILE=(--size cpu-char --tiny --steps 2)
else
  GEMM=(--sizes 2048 4096 8192); LINEAR=(--shapes 16384,4096,16384)
  STEP=(--size gpu --repeats 10 --variants bf16 fp8 int4)
  STEP_H4096=(--size gpu-h4096 --repeats 10 --variants bf16 fp8 int4)
  PROFILE=(--size gpu --steps 3)
fi
: > "$OUT/stages.txt"
status=0

# stage NAME SECONDS CMD...: runs CMD under a time limit (SECONDS on a GPU, times SCALE), logs
# to $OUT/NAME.txt, records the exit status; the script goes on either way and fails at the end
# if any stage failed.
stage() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout --kill-after=5 $((limit * SCALE)) "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start)) limit=$((limit * SCALE)) gpu_limit=$limit" \
    | tee -a "$OUT/stages.txt"
  [ $rc -eq 0 ] || status=1
}

stage env 15 sh -c 'date -u; nvidia-smi || echo "no nvidia-smi"; python3 -c "import jax; print(\"jax\", jax.__version__, jax.devices())"'
# pytest exits 5 when every test is skipped (no GPU): that is not a failure here.
# -o addopts="": not the repository's default options (pytest-xdist may not be installed here).
stage tests 70 sh -c 'python3 -m pytest -q -rs -o addopts="" -m gpu tests/test_gpu_kernels.py; rc=$?; [ $rc -eq 5 ] && rc=0; exit $rc'
stage gemm 100 python3 -m experiments.benchmarks.gemm "${GEMM[@]}" --out "$OUT"
stage linear 70 python3 -m experiments.benchmarks.linear "${LINEAR[@]}" --out "$OUT"
stage step_gpt2 80 python3 -m experiments.benchmarks.train_step --task shakespeare \
  "${STEP[@]}" --data_dir "$DATA_DIR" --name bench_train_step_gpt2 --out "$OUT"
stage step_h4096 80 python3 -m experiments.benchmarks.train_step --task shakespeare \
  "${STEP_H4096[@]}" --data_dir "$DATA_DIR" --name bench_train_step_h4096 --out "$OUT"
stage profile 45 python3 -m experiments.benchmarks.profile_step --task shakespeare \
  "${PROFILE[@]}" --data_dir "$DATA_DIR" --name profile_step_gpt2 --out "$OUT" \
  --trace_dir "${TMPDIR:-/tmp}/int4jax_profile"
# Mosaic GPU prints the SASS of each kernel it compiles when asked to (Hopper only).
stage sass 35 env MOSAIC_GPU_DUMP_SASS=1 python3 -c '
import jax.numpy as jnp
from int4jax.backends.mosaic import is_hopper
from int4jax.kernels import mosaic_gemm
if not is_hopper():
  print("skipped: no Hopper GPU, the Mosaic kernel cannot compile here")
  raise SystemExit(0)
a = jnp.ones((512, 512), jnp.int8)
for name, blocks in mosaic_gemm.VARIANTS.items():
  out = mosaic_gemm.scaled_gemm_mosaic(a, a[:128], 1.0, 1.0, blocks=blocks)
  print(name, out.block_until_ready().shape)'
igmma=$(grep -c IGMMA "$OUT/sass.txt")
echo "IGMMA instructions in the Mosaic kernels' SASS: $igmma" | tee -a "$OUT/stages.txt"
# On Hopper the kernel must use the int8 tensor cores.
if ! grep -q "^skipped" "$OUT/sass.txt" && [ "$igmma" -eq 0 ]; then status=1; fi
exit $status
