import jax

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
