import os

# 8 CPU devices for the sharding tests (tests/test_shard_map.py); single-device tests use the
# first, as before. Set before jax initialises its backend.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
# The 8 devices' threads meet at every collective; XLA:CPU aborts the process when one arrives
# over 40 s after the others (the default), which a loaded 2-core machine can reach (seen: a
# mesh-step test aborted while a training run shared the CPU). Wait 10 minutes instead.
if "xla_cpu_collective_call_terminate_timeout_seconds" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=600"

import jax  # noqa: E402

# Shapes must broadcast on purpose, never by accident.
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  """Tests marked `gpu` run only where jax's default backend is a GPU; elsewhere they are
  reported as skipped (never silently passed)."""
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs a CUDA GPU (pytest marker 'gpu')")
  for item in items:
    if item.get_closest_marker("gpu") is not None:
      item.add_marker(skip)
