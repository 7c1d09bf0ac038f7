"""BUILD names every library module and every test file, so Bazel and pytest see the same tree."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_module_and_test_is_in_build():
  named = set(re.findall(r'"([\w/]+\.py)"', (ROOT / "BUILD").read_text()))
  on_disk = {str(p.relative_to(ROOT)) for d in ("int4jax", "tests")
             for p in (ROOT / d).rglob("*.py")}
  assert on_disk - named == set(), f"missing from BUILD: {sorted(on_disk - named)}"
  assert named - on_disk == set(), f"in BUILD but not on disk: {sorted(named - on_disk)}"


def _all_tests_slow(path):
  """True when every test function in the file carries the slow marker (itself or the module's)."""
  tree = ast.parse(path.read_text())
  module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark"
                                                      for t in n.targets)
                    and "slow" in ast.unparse(n.value) for n in tree.body)
  tests = [n for n in ast.walk(tree)
           if isinstance(n, ast.FunctionDef) and n.name.startswith("test")]
  return bool(tests) and (module_slow or all(
      any("mark.slow" in ast.unparse(d) for d in t.decorator_list) for t in tests))


def test_files_whose_tests_are_all_slow_are_tagged_slow_in_build():
  # The CI's Bazel run filters out the slow tag, and each file's target runs pytest without the
  # slow tests: a target whose tests are all slow would collect nothing and fail (pytest exit 5).
  build = (ROOT / "BUILD").read_text()
  slow_list = re.search(r"SLOW_TESTS = \[(.*?)\]", build, re.S).group(1)
  tagged = set(re.findall(r'"(tests/[\w/]+\.py)"', slow_list))
  all_slow = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
              if _all_tests_slow(p)}
  assert all_slow == tagged, (f"all-slow files not in SLOW_TESTS: {sorted(all_slow - tagged)}; "
                              f"in SLOW_TESTS with default tests: {sorted(tagged - all_slow)}")
