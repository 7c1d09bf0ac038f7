"""The kernel backends' GEMMs under a mesh (int4jax/kernels/partitioning.py), on 8 CPU devices with
the Pallas kernel interpreted: sharded operands stay sharded (no all-gather in the HLO), a split
contraction is summed in int32, and the results equal the unsharded kernel bit for bit."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from int4jax import Int4Config, backend, backends, int4_linear
from int4jax.kernels import partitioning

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (XLA_FLAGS)")

MESH = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
PALLAS = backends.get("pallas").scaled_gemm(jax.default_backend())


def _put(x, *spec):
  return jax.device_put(x, NamedSharding(MESH, P(*spec)))


def _collectives(hlo):
  return [m.group(1) for m in re.finditer(r"= \S+ (all-gather|all-reduce|all-to-all)\(", hlo)]


@pytest.mark.parametrize("a_spec,b_spec,moved", [
    (("data",), (), []),  # tokens split: each device its rows
    ((), (None, "data"), []),  # output features split: each device its columns
    ((None, "data"), ("data",), ["all-reduce"]),  # contraction split: an int32 sum
    # tokens and output features on the same axis (FSDP's weight columns, data-parallel tokens):
    # one result dim can take the axis, so B's columns are gathered
    (("data",), (None, "data"), ["all-gather"]),
], ids=["rows", "columns", "contraction", "rows-and-columns-on-one-axis"])
def test_a_sharded_gemm_stays_sharded_and_equals_the_kernel(a_spec, b_spec, moved):
  a = jax.random.randint(jax.random.key(0), (64, 128), -7, 8, dtype=jnp.int8)
  b = jax.random.randint(jax.random.key(1), (128, 32), -7, 8, dtype=jnp.int8)
  rows = jax.random.uniform(jax.random.key(2), (64, 1))
  cols = jax.random.uniform(jax.random.key(3), (1, 32))
  gemm = jax.jit(lambda a, b, r, c: partitioning.scaled_gemm(PALLAS)(a, b, ((1,), (0,)), r, c))
  args = (_put(a, *a_spec), _put(b, *b_spec), _put(rows, a_spec[0] if a_spec else None),
          _put(cols))
  np.testing.assert_array_equal(gemm(*args), PALLAS(a, b, ((1,), (0,)), rows, cols))
  assert _collectives(gemm.lower(*args).compile().as_text()) == moved


def test_the_op_on_the_pallas_backend_under_data_parallelism_gathers_nothing():
  """Every GEMM of int4_linear (forward, dX, dW) through the partitioned Pallas kernel: x split by
  tokens, the same loss and gradients as one device, and no all-gather."""
  assert backend.scaled_gemm("pallas") is not PALLAS  # wrapped: 8 devices are visible
  config = Int4Config(backend="pallas", stochastic_rounding=False)
  x = jax.random.normal(jax.random.key(4), (64, 64))
  w = jax.random.normal(jax.random.key(5), (64, 32)) * 0.1
  step = jax.jit(jax.value_and_grad(lambda w, x: (int4_linear(x, w, key=jax.random.key(6),
                                                              config=config) ** 2).sum(),
                                    argnums=(0, 1)))
  args = (_put(w), _put(x, "data"))
  many, one = jax.tree.leaves(step(*args)), jax.tree.leaves(step(w, x))
  for a, b in zip(many, one):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  assert "all-gather" not in _collectives(step.lower(*args).compile().as_text())
