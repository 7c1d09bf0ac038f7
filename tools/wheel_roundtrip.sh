#!/usr/bin/env bash
# Builds the sdist and wheel, installs the wheel into a fresh venv (not the source tree), imports
# int4jax there and runs one INT4 linear layer, then checks that the optional extras resolve.
# Usage: tools/wheel_roundtrip.sh [WORKDIR]   (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
python -m pip install --quiet build
python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/int4jax-*.whl)
sdist=$(ls "$work"/dist/int4jax-*.tar.gz)
echo "built: $(basename "$wheel") $(basename "$sdist")"

# The wheel ships the package with its kernels; the sdist carries the sources the wheel needs.
python - "$wheel" "$sdist" <<'PY'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = set(zipfile.ZipFile(wheel).namelist())
for need in ["int4jax/__init__.py", "int4jax/kernels/int_gemm.py", "int4jax/nn/dense.py",
             "int4jax/nnx/linear.py", "int4jax/quantizers/hadamard.py"]:
  assert need in names, f"wheel lacks {need}"
assert not any(n.startswith(("tests/", "experiments/")) for n in names), "wheel ships tests"
members = tarfile.open(sdist).getnames()
assert any(m.endswith("/int4jax/kernels/int_gemm.py") for m in members), "sdist lacks kernels"
print(f"wheel: {len(names)} files; sdist: {len(members)} members")
PY

python -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$wheel"
# Run from an empty directory, so the import cannot come from this source tree.
mkdir -p "$work/run" && cd "$work/run"
JAX_PLATFORMS=cpu "$work/venv/bin/python" - <<'PY'
import jax, jax.numpy as jnp
import int4jax
from int4jax import Int4Config, int4_linear
assert "site-packages" in int4jax.__file__, int4jax.__file__
x = jax.random.normal(jax.random.key(0), (4, 64))
w = jax.random.normal(jax.random.key(1), (64, 32)) / 8
y = int4_linear(x, w, None, key=jax.random.key(2), config=Int4Config())
err = float(jnp.linalg.norm(y - x @ w) / jnp.linalg.norm(x @ w))
assert y.shape == (4, 32) and err < 0.3, err
print(f"int4jax {int4jax.__version__} from {int4jax.__file__}; jax {jax.__version__}; "
      f"int4 vs float rel. error {err:.3f}")
PY

# Optional extras resolve (pip's resolver, nothing installed).
for extra in gpu triton experiments test; do
  "$work/venv/bin/pip" install --quiet --dry-run "${wheel}[${extra}]" > "$work/extra_$extra.log" 2>&1 \
    || { echo "extra [$extra] does not resolve:"; cat "$work/extra_$extra.log"; exit 1; }
  echo "extra [$extra] resolves"
done
echo "wheel round trip OK"
