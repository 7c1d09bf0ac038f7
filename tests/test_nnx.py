"""int4jax.nnx.Linear and quantize_model on NNX models: the same contract as the linen layers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import int4jax
from int4jax import Int4Config, int4_linear
from int4jax.nnx import Linear
from int4jax.quantizers import hadamard, lsq_init_scale

from helpers import integer_dots, rel_err

X = jax.random.normal(jax.random.key(0), (4, 10, 48))


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.up = nnx.Linear(48, 64, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(64, 64, rngs=rngs) for _ in range(2)])
    self.head = nnx.Linear(64, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.up(x))
    for block in self.blocks:
      x = nnx.relu(block(x))
    return self.head(x)


def params_of(module):
  return nnx.state(module, nnx.Param)


def test_params_and_initial_values_equal_nnx_linear():
  ref, ours = nnx.Linear(48, 24, rngs=nnx.Rngs(1)), Linear(48, 24, rngs=nnx.Rngs(1))
  chex.assert_trees_all_equal(params_of(ours), params_of(ref))
  assert rel_err(ours(X), ref(X)) < 0.3


def test_equals_the_functional_op():
  layer = Linear(48, 24, config=Int4Config(stochastic_rounding=False), rngs=nnx.Rngs(1))
  y = int4_linear(X, layer.kernel[...], layer.bias[...],
                  config=Int4Config(stochastic_rounding=False))
  chex.assert_trees_all_equal(layer(X), y)


def test_lsq_and_block_search_are_set_by_the_first_eager_call():
  layer = Linear(48, 24, config=Int4Config.paper(hadamard_block="search"),
                 rngs=nnx.Rngs(1, quant=2))
  x = X.at[..., :2].multiply(40.0)
  with pytest.raises(ValueError, match="calibrate"):
    nnx.jit(lambda m, x: m(x))(layer, x)  # uncalibrated under a transform
  int4jax.nnx.calibrate(layer, x)
  b = layer.hadamard_block
  assert isinstance(b, int) and b > 1
  xh = hadamard.block_hadamard(hadamard.pad_to_block(x.reshape(-1, 48), b, 1), b, 1)
  np.testing.assert_allclose(layer.x_scale[...], lsq_init_scale(xh, 7), rtol=1e-6)
  assert set(params_of(layer)) == {"kernel", "bias", "x_scale", "kernel_scale"}
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(layer)
  assert float(jnp.abs(grads["x_scale"][...])) > 0


def test_quantize_model_in_place_with_exclusions():
  model = MLP(nnx.Rngs(0))
  before = jax.tree.map(jnp.copy, params_of(model))
  y_float = model(X)
  out = int4jax.quantize_model(model, exclude=[r"head"], rngs=nnx.Rngs(quant=3))
  assert out is model
  plan = int4jax.quantization_plan(model)
  assert plan == {"up": Int4Config(), "blocks/0": Int4Config(), "blocks/1": Int4Config(),
                  "head": None}
  assert type(model.head) is nnx.Linear and type(model.blocks[1]) is Linear
  chex.assert_trees_all_equal(params_of(model), before)  # same Params, same values
  assert rel_err(model(X), y_float) < 0.4

  def loss(m):
    return jnp.sum(m(X) ** 2)

  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s: nnx.grad(loss)(nnx.merge(graphdef, s)))(state)
  assert len(integer_dots(jaxpr)) == 3 * 3


def test_missing_quant_rng_raises_at_grad_and_rngs_at_call_time_work():
  model = MLP(nnx.Rngs(0))
  int4jax.quantize_model(model)  # no rngs
  model(X)  # forward is fine
  with pytest.raises(ValueError, match="Rngs"):
    nnx.grad(lambda m: jnp.sum(m(X) ** 2))(model)
  layer = model.up
  g = jax.grad(lambda k: jnp.sum(layer(X, rngs=nnx.Rngs(quant=5)) * k))(1.0)
  assert np.isfinite(g)


def test_same_rng_same_gradients_and_the_stream_advances():
  def grads(seed):
    model = MLP(nnx.Rngs(0))
    int4jax.quantize_model(model, rngs=nnx.Rngs(quant=seed))
    step = nnx.jit(nnx.grad(lambda m: jnp.sum(m(X) ** 2)))
    return step(model), step(model)

  (a1, a2), (b1, _) = grads(3), grads(3)
  chex.assert_trees_all_equal(a1, b1)
  assert not np.array_equal(a1["up"]["kernel"][...], a2["up"]["kernel"][...])


def test_custom_dot_general_is_refused():
  with pytest.raises(ValueError, match="dot_general"):
    Linear(4, 4, dot_general=jax.lax.dot_general, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="nnx.Module|flax"):
    int4jax.quantize_model(object())
