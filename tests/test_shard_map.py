"""int4_linear inside `shard_map` with check_vma=True (the default): gradients trace, and the
data-parallel (DP) and column tensor-parallel (TP) patterns equal the unsharded op where the math
allows. Runs on 8 CPU devices (tests/conftest.py sets XLA_FLAGS).

What is per shard: each shard quantizes its own operands. Per-row scales of X and per-column
scales of W are the same sharded or not, so the forward is bitwise equal in both patterns. The
backward's dY scales span one shard's slice: dW's (per column, over tokens) under DP and dX's
(per row, over output features) under TP. Those products are sums of per-shard quantized
partials, equal to the unsharded op only within the bit split's rounding; the others are
bitwise equal with deterministic rounding. The stochastic dither is indexed within each shard.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from int4jax import Int4Config, int4_linear
from tests.helpers import make_xw, rel_err

pytestmark = pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 devices (XLA_FLAGS)")

DETERMINISTIC = Int4Config(stochastic_rounding=False)
KEY = jax.random.key(0)


def shard_map(f, mesh, in_specs, out_specs):
  return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=True)


def _mesh(axis):
  return Mesh(np.array(jax.devices()[:4]), (axis,))


def _loss_grads(config):
  """(y, dL/dx, dL/dw) of L = sum(y * cot), on whatever shard it is given."""
  def run(x, w, cot, key):
    y, vjp = jax.vjp(lambda x, w: int4_linear(x, w, key=key, config=config), x, w)
    return (y,) + vjp(cot)
  return run


def _unsharded(config, x, w, cot):
  return jax.jit(_loss_grads(config))(x, w, cot, KEY)


def test_the_reported_reproduction_runs():
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  f = shard_map(lambda x, w, k: jax.grad(lambda w: int4_linear(x, w, key=k).sum())(w),
                mesh=mesh, in_specs=(P("data"), P(), P()), out_specs=P())
  dw = jax.jit(f)(jnp.ones((8, 64)), jnp.ones((64, 16)), KEY)
  assert dw.shape == (64, 16) and bool(jnp.all(jnp.isfinite(dw)))


@pytest.mark.parametrize("grad_mode", ["bitsplit", "float"])
def test_data_parallel_equals_one_device(grad_mode):
  """x and dY split by tokens, w replicated: y and dX bitwise; dW (summed across shards by the
  psum that check_vma's types insert) within the bit split's rounding, or float sums' order."""
  config = DETERMINISTIC.replace(grad_mode=grad_mode)
  x, w = make_xw(64, 96, 40, seed=1)
  cot = jax.random.normal(jax.random.key(2), (64, 40))
  f = shard_map(_loss_grads(config), _mesh("data"), in_specs=(P("data"), P(), P("data"), P()),
                out_specs=(P("data"), P("data"), P()))
  y, dx, dw = jax.jit(f)(x, w, cot, KEY)
  y1, dx1, dw1 = _unsharded(config, x, w, cot)
  np.testing.assert_array_equal(y, y1)
  np.testing.assert_array_equal(dx, dx1)
  if grad_mode == "float":
    np.testing.assert_allclose(dw, dw1, rtol=1e-5, atol=1e-5 * float(jnp.abs(dw1).max()))
  else:
    assert 0 < rel_err(dw, dw1) < 0.02, rel_err(dw, dw1)  # per-shard dY column scales
    assert rel_err(dw, x.T @ cot) < 0.3  # and still the INT4 op's gradient


def test_column_tensor_parallel_equals_one_device():
  """w and dY split by output features, x replicated: y and dW bitwise; dX (partials over the
  feature shards, summed by the psum of x's replicated type) within the bit split's rounding."""
  x, w = make_xw(48, 96, 64, seed=3)
  cot = jax.random.normal(jax.random.key(4), (48, 64))
  f = shard_map(_loss_grads(DETERMINISTIC), _mesh("model"),
                in_specs=(P(), P(None, "model"), P(None, "model"), P()),
                out_specs=(P(None, "model"), P(), P(None, "model")))
  y, dx, dw = jax.jit(f)(x, w, cot, KEY)
  y1, dx1, dw1 = _unsharded(DETERMINISTIC, x, w, cot)
  np.testing.assert_array_equal(y, y1)
  np.testing.assert_array_equal(dw, dw1)
  assert 0 < rel_err(dx, dx1) < 0.02, rel_err(dx, dx1)


def test_stochastic_rounding_traces_under_shard_map():
  """The default config (stochastic bit split): gradients within its noise of the deterministic."""
  x, w = make_xw(64, 96, 40, seed=5)
  cot = jax.random.normal(jax.random.key(6), (64, 40))
  f = shard_map(_loss_grads(Int4Config()), _mesh("data"),
                in_specs=(P("data"), P(), P("data"), P()), out_specs=(P("data"), P("data"), P()))
  _, dx, dw = jax.jit(f)(x, w, cot, KEY)
  _, dx1, dw1 = _unsharded(DETERMINISTIC, x, w, cot)
  assert rel_err(dx, dx1) < 0.1 and rel_err(dw, dw1) < 0.1


def test_sampling_and_forward_rounding_stay_unbiased_under_shard_map():
  """Bernoulli leverage-score sampling (each shard samples its own token rows), stochastic
  forward rounding and the stochastic bit split: every step is unbiased, so the mean of dW over
  keys converges to the float gradient x^T cot (32 draws: ~1/sqrt(32) of one draw's error)."""
  config = Int4Config(lss="bernoulli", forward_rounding="stochastic")
  x, w = make_xw(64, 96, 40, seed=5)
  cot = jax.random.normal(jax.random.key(6), (64, 40))
  f = jax.jit(shard_map(_loss_grads(config), _mesh("data"),
                        in_specs=(P("data"), P(), P("data"), P()),
                        out_specs=(P("data"), P("data"), P())))
  dws = jnp.stack([f(x, w, cot, k)[2] for k in jax.random.split(KEY, 32)])
  exact = x.T @ cot
  one, mean = rel_err(dws[0], exact), rel_err(dws.mean(0), exact)
  assert bool(jnp.all(jnp.isfinite(dws))) and mean < one / 3, (mean, one)
