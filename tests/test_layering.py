"""Data flows one way: quantizers -> kernels -> backends -> the op -> Flax layers. Each layer
imports only from the layers below it (read from the source, so a new import that closes a cycle
fails here)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "int4jax"

# package -> the int4jax modules its files may import from (besides itself)
ALLOWED = {
    "quantizers": (),
    "kernels": ("int4jax.quantizers",),
    "backends": ("int4jax.quantizers", "int4jax.kernels", "int4jax.tuning"),
}


def _int4jax_imports(path: pathlib.Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.level:
      yield f"a relative import (level {node.level}); the package imports absolutely"
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("int4jax"):
      yield from (f"{node.module}.{a.name}" if node.module == "int4jax" else node.module
                  for a in node.names)
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith("int4jax"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_lower_layers_import_only_from_below(package):
  allowed = (f"int4jax.{package}",) + ALLOWED[package]
  for path in sorted((ROOT / package).glob("*.py")):
    for name in _int4jax_imports(path):
      assert name.startswith(allowed), f"{path.name} imports {name}"


def test_tuning_sits_beside_the_kernels():
  assert all(n.startswith("int4jax.kernels") for n in _int4jax_imports(ROOT / "tuning.py"))
