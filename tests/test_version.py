"""The import-time jax version check."""

import pytest

import int4jax
from int4jax import _version


def test_version_string():
  assert int4jax.__version__ == _version.__version__
  assert _version.parse_version(int4jax.__version__) >= (0, 1, 0)


@pytest.mark.parametrize("installed,ok", [("0.10.2", True), ("0.11.2", True), ("0.12.0.1", True),
                                          ("0.10.1", False), ("0.4.38", False),
                                          ("0.10.2.dev20260101", True)])
def test_old_jax_is_refused_with_a_clear_message(installed, ok):
  if ok:
    _version.check_jax_version(installed)
  else:
    with pytest.raises(ImportError, match=r"needs jax >= 0.10.2.*pip install -U"):
      _version.check_jax_version(installed)
