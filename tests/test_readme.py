"""The README's Python blocks run as written, and its first lines are the CI test command."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_readme_has_python_blocks():
  assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))  # one test each: xdist spreads them
def test_python_blocks_run(index):
  exec(compile(BLOCKS[index], "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
  first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
  test_command = first_block.strip().splitlines()[1].split("#")[0].strip()
  assert test_command in (ROOT / ".ci" / "run").read_text()


def test_measured_tables_are_generated_from_the_results_files():
  from experiments import readme_tables
  assert readme_tables.render(README) == README, "run python -m experiments.readme_tables"
