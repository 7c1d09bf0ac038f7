"""The backend switch: one place decides, 'auto' says what it picked, unknown names fail."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import Int4Config, backend, int4_linear, resolve_backend
from tests.helpers import make_xw


def test_auto_resolves_to_xla_and_logs_the_choice(caplog):
  backend._reported.clear()
  with caplog.at_level(logging.INFO, logger="int4jax"):
    assert resolve_backend("auto") == "xla"
    resolve_backend("auto")
  lines = [r.getMessage() for r in caplog.records if "backend 'auto'" in r.getMessage()]
  assert len(lines) == 1 and "'xla'" in lines[0]


def test_explicit_backends_agree_bit_for_bit():
  x, w = make_xw(33, 100, 17)
  outs = [int4_linear(x, w, config=Int4Config(backend=b)) for b in ("xla", "reference", "auto")]
  for out in outs[1:]:
    np.testing.assert_array_equal(out, outs[0])


def test_unknown_backend_is_rejected():
  with pytest.raises(ValueError, match="backend"):
    Int4Config(backend="pallas")
  with pytest.raises(ValueError, match="unknown int4jax backend"):
    resolve_backend("cuda")
