"""Entry point of the Bazel py_test targets: runs pytest on the test files given as arguments.

A pytest file run directly as a script would define its tests and exit 0 without running any, so
every py_test goes through this runner, which exits with pytest's status (no tests collected is a
failure too). It prints where int4jax was imported from, so a log shows that the test used the
target's runfiles rather than an installed copy.
"""

import os
import sys

import pytest

if __name__ == "__main__":
  # As tests/conftest.py: 8 CPU devices for the sharding tests, set before jax initialises.
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
  if "xla_cpu_collective_call_terminate_timeout_seconds" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=600"
  import int4jax
  print(f"int4jax {int4jax.__version__} from {int4jax.__file__}", file=sys.stderr)
  # One process per target: Bazel already runs the targets side by side.
  sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-n", "0", *sys.argv[1:]]))
