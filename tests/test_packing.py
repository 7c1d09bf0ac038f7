"""Two INT4 values per byte: exact round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import quantizers as qz


def test_round_trip_every_value_pair():
  a, b = np.meshgrid(np.arange(-8, 8), np.arange(-8, 8))
  q = jnp.asarray(np.stack([a.ravel(), b.ravel()], -1).reshape(16, 32), jnp.int8)
  p = qz.pack_int4(q)
  assert p.dtype == jnp.uint8 and p.shape == (16, 16)
  np.testing.assert_array_equal(qz.unpack_int4(p), q)


def test_round_trip_random_batch_under_jit():
  q = jax.random.randint(jax.random.key(0), (3, 5, 64), -8, 8).astype(jnp.int8)
  np.testing.assert_array_equal(jax.jit(lambda q: qz.unpack_int4(qz.pack_int4(q)))(q), q)


def test_nibble_order():
  assert int(qz.pack_int4(jnp.array([1, -1], jnp.int8))[0]) == 0xF1


def test_bad_input():
  with pytest.raises(ValueError, match="even"):
    qz.pack_int4(jnp.zeros((3,), jnp.int8))
  with pytest.raises(TypeError, match="int8"):
    qz.pack_int4(jnp.zeros((4,), jnp.int32))
  with pytest.raises(TypeError, match="uint8"):
    qz.unpack_int4(jnp.zeros((4,), jnp.int8))
