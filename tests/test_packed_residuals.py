"""Int4Config(pack_residuals=True) keeps the forward's INT4 operands for the backward packed (two
INT4 values per byte plus packed group multipliers) and changes no bit of the gradients (the
float backward, grad_mode="float", to float rounding: its float GEMMs are summed in the order XLA
picks per program), for every quantizer setting, with padding, one token and zero rows; it saves about half
of the residual bytes, and configs that cannot pack raise."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import Int4Config, int4_linear
from int4jax import linear as op

KEY = jax.random.key(7)
_slow = lambda c: pytest.param(c, marks=pytest.mark.slow)  # the slow run (.ci/run)
CONFIGS = [Int4Config(), Int4Config(scale_levels=1), Int4Config(forward_rounding="stochastic"),
           Int4Config(lss="bernoulli"), _slow(Int4Config(int_range="full")),
           _slow(Int4Config(scale_search=2)), _slow(Int4Config(scale_mode="tensor")),
           _slow(Int4Config(grad_mode="float")), _slow(Int4Config(backend="reference"))]


def _grads(config, x, w, b):
  @jax.jit
  def run(x, w, b):
    loss = lambda x, w, b: jnp.sum(jnp.sin(int4_linear(x, w, b, key=KEY, config=config)))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, b)
  return run(x, w, b)


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
@pytest.mark.parametrize("m,k,n", [(24, 72, 20), pytest.param(1, 32, 8, marks=pytest.mark.slow)])
def test_packed_residuals_give_the_same_bits(config, m, k, n):  # K 72 padded to 96; one token
  x = jax.random.normal(jax.random.key(0), (m, k)) * jnp.linspace(0.1, 4.0, k)[None]
  if m > 1:
    x = x.at[3].set(0.0)  # a zero row (padding)
  w = jax.random.normal(jax.random.key(1), (k, n)) * 0.1
  b = jnp.zeros((n,))
  plain = _grads(config, x, w, b)
  packed = _grads(dataclasses.replace(config, pack_residuals=True), x, w, b)
  for a, c in zip(jax.tree.leaves(plain), jax.tree.leaves(packed)):
    if config.grad_mode == "float":  # float GEMMs, summed in the order XLA picks per program
      np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)
    else:  # the integer GEMMs are exact in any order
      np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_lsq_packed_residuals_give_the_same_bits():
  config = Int4Config.paper(lss="off")
  x = jax.random.normal(jax.random.key(0), (16, 64))
  w = jax.random.normal(jax.random.key(1), (64, 8)) * 0.1
  scales = (jnp.float32(0.3), jnp.float32(0.02))

  def grads(c):
    loss = lambda x, w, s: jnp.sum(int4_linear(x, w, key=KEY, config=c, scales=s) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w, scales)

  for a, c in zip(jax.tree.leaves(grads(config)),
                  jax.tree.leaves(grads(dataclasses.replace(config, pack_residuals=True)))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def _residual_bytes(config, m=256, k=512, n=384):
  xh, wh = jnp.ones((m, k)), jnp.ones((k, n))
  shapes = jax.eval_shape(lambda a, b: op._forward(config, a, b, None, KEY)[1], xh, wh)
  return sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes))


def test_packed_residuals_take_about_half_the_bytes():
  plain, packed = _residual_bytes(Int4Config()), _residual_bytes(Int4Config(pack_residuals=True))
  operands = 256 * 512 + 512 * 384  # the int8 X and W operands
  assert plain - packed == pytest.approx(operands * (1 - 4.25 / 8), rel=0.01)


@pytest.mark.parametrize("changes", [dict(forward_bits=8, scale_levels=1),
                                     dict(scale_levels=18)])
def test_configs_that_cannot_pack_raise_naming_the_fix(changes):
  with pytest.raises(ValueError, match="pack_residuals=False"):
    Int4Config(pack_residuals=True, **changes)


@pytest.mark.slow  # the interpreted Pallas kernels take over a minute on 2 cores: the slow run
def test_a_k_major_backend_packs_the_transposed_operands_to_the_same_bits():
  """Pallas keeps Xq^T (K, M) for dW (K-major): packed and unpacked the same way."""
  config = Int4Config(backend="pallas")
  x = jax.random.normal(jax.random.key(0), (8, 40))
  w = jax.random.normal(jax.random.key(1), (40, 16)) * 0.1
  b = jnp.zeros((16,))
  plain = _grads(config, x, w, b)
  packed = _grads(dataclasses.replace(config, pack_residuals=True), x, w, b)
  for a, c in zip(jax.tree.leaves(plain), jax.tree.leaves(packed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
