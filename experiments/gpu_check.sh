#!/usr/bin/env bash
# Everything that needs a GPU, in one call: the GPU-marked tests, both benchmarks, the XLA int8
# custom-call target (inside bench_gemm.json) and a look for int8 tensor-core instructions (SASS
# IGMMA) in the Mosaic GPU kernel. Raw output goes to $OUT (default experiments/results/gpu).
#
#   experiments/gpu_check.sh            # from the repository root, on the GPU machine
#
# jax-triton (the "triton" backend) is optional: put its wheel in .whl/ to include it
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp -d .whl jax-triton==0.3.1
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-experiments/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/jax_triton-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ date -u; nvidia-smi; python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } \
  > "$OUT/env.txt" 2>&1
status=0
python3 -m pytest -q -rs -m gpu tests/test_gpu_kernels.py 2>&1 | tee "$OUT/gpu_tests.txt" \
  || status=1
python3 -m experiments.benchmarks.gemm --out "$OUT" 2>&1 | tee "$OUT/bench_gemm.txt" || status=1
python3 -m experiments.benchmarks.linear --out "$OUT" 2>&1 | tee "$OUT/bench_linear.txt" || status=1
# Mosaic GPU prints the SASS of each kernel it compiles when asked to.
MOSAIC_GPU_DUMP_SASS=1 python3 - > "$OUT/mosaic_sass.txt" 2>&1 <<'PY' || status=1
import jax.numpy as jnp
from int4jax.kernels import mosaic_gemm
a = jnp.ones((256, 512), jnp.int8)
print(mosaic_gemm.scaled_gemm_mosaic(a, a[:128], 1.0, 1.0).block_until_ready().shape)
PY
echo "IGMMA instructions in the Mosaic kernel's SASS: $(grep -c IGMMA "$OUT/mosaic_sass.txt")" \
  | tee -a "$OUT/env.txt"
exit $status
