"""BUILD names every library module and every test file, so Bazel and pytest see the same tree."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_module_and_test_is_in_build():
  named = set(re.findall(r'"([\w/]+\.py)"', (ROOT / "BUILD").read_text()))
  on_disk = {str(p.relative_to(ROOT)) for d in ("int4jax", "tests")
             for p in (ROOT / d).rglob("*.py")}
  assert on_disk - named == set(), f"missing from BUILD: {sorted(on_disk - named)}"
  assert named - on_disk == set(), f"in BUILD but not on disk: {sorted(named - on_disk)}"
