"""int4jax.nn.Dense / DenseGeneral / Int4DotGeneral: drop-in for Flax's layers."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import int4jax
from int4jax import Int4Config, int4_linear
from int4jax import nn as inn
from int4jax.quantizers import hadamard, lsq_init_scale

from helpers import rel_err

X = jax.random.normal(jax.random.key(0), (4, 10, 48))
QKEY = jax.random.key(7)

LAYER_PAIRS = [
    (nn.Dense, inn.Dense, dict(features=24), (4, 10, 48)),
    (nn.Dense, inn.Dense, dict(features=5, use_bias=False, param_dtype=jnp.bfloat16), (3, 37)),
    (nn.DenseGeneral, inn.DenseGeneral, dict(features=(3, 8), axis=(-2, -1)), (4, 10, 48)),
    (nn.DenseGeneral, inn.DenseGeneral, dict(features=6, axis=1), (4, 10, 48)),
    (nn.DenseGeneral, inn.DenseGeneral, dict(features=7, batch_dims=(0,)), (4, 10, 48)),
]


def shapes_dtypes(tree):
  return jax.tree.map(lambda a: (a.shape, a.dtype), tree)


@pytest.mark.parametrize("flax_cls,int4_cls,kwargs,shape", LAYER_PAIRS)
def test_param_tree_and_initial_values_equal_flax(flax_cls, int4_cls, kwargs, shape):
  x = jax.random.normal(jax.random.key(1), shape)
  ref = flax_cls(**kwargs).init(jax.random.key(2), x)
  ours = int4_cls(**kwargs).init(jax.random.key(2), x)
  assert shapes_dtypes(ours) == shapes_dtypes(ref)
  chex.assert_trees_all_equal(ours, ref)


@pytest.mark.parametrize("flax_cls,int4_cls,kwargs,shape", LAYER_PAIRS)
def test_float_params_load_and_output_is_close(flax_cls, int4_cls, kwargs, shape):
  x = jax.random.normal(jax.random.key(1), shape)
  float_layer = flax_cls(**kwargs)
  params = float_layer.init(jax.random.key(2), x)
  y_float = float_layer.apply(params, x)
  y_int4 = int4_cls(**kwargs).apply(params, x)  # the float checkpoint, unchanged
  assert y_int4.shape == y_float.shape and y_int4.dtype == y_float.dtype
  assert rel_err(y_int4, y_float) < 0.3


def test_dense_equals_the_functional_op_bit_for_bit():
  layer = inn.Dense(24)
  params = layer.init(jax.random.key(2), X)

  def loss_module(p):
    return jnp.sum(jnp.sin(layer.apply(p, X, rngs={"quant": QKEY})))

  # A linen module draws make_rng('quant') once per call: the key int4_linear gets.
  key = nn.apply(lambda m: m.make_rng("quant"), inn.Dense(24))(params, rngs={"quant": QKEY})

  def loss_op(p):
    return jnp.sum(jnp.sin(int4_linear(X, p["params"]["kernel"], p["params"]["bias"], key=key)))

  chex.assert_trees_all_equal(layer.apply(params, X), int4_linear(X, params["params"]["kernel"],
                                                                  params["params"]["bias"]))
  chex.assert_trees_all_equal(jax.grad(loss_module)(params), jax.grad(loss_op)(params))


@pytest.mark.parametrize("how", ["dot_general", "dot_general_cls"])
def test_dot_general_injection_matches_int4_dense(how):
  cfg = Int4Config(hadamard_block=16)
  if how == "dot_general":
    layer = nn.Dense(24, dot_general=inn.Int4DotGeneral(cfg))
  else:
    layer = nn.Dense(24, dot_general_cls=functools.partial(inn.Int4DotGeneral, config=cfg))
  params = layer.init(jax.random.key(2), X)
  assert shapes_dtypes(params) == shapes_dtypes(nn.Dense(24).init(jax.random.key(2), X))
  chex.assert_trees_all_equal(layer.apply(params, X),
                              inn.Dense(24, config=cfg).apply(params, X))
  grads = jax.grad(lambda p: jnp.sum(layer.apply(p, X, rngs={"quant": QKEY}) ** 2))(params)
  chex.assert_tree_all_finite(grads)


def test_lsq_state_is_a_quant_subtree_initialised_from_the_init_batch():
  cfg = Int4Config.paper()
  x = X * 3.0
  params = inn.Dense(24, config=cfg).init(jax.random.key(2), x)["params"]
  assert set(params) == {"kernel", "bias", "quant"}
  assert set(params["quant"]) == {"x_scale", "kernel_scale"}
  qmax = cfg.qrange[1]
  xh = hadamard.block_hadamard(hadamard.pad_to_block(x.reshape(-1, 48), 32, 1), 32, 1)
  wh = hadamard.block_hadamard(hadamard.pad_to_block(params["kernel"], 32, 0), 32, 0)
  np.testing.assert_allclose(params["quant"]["x_scale"], lsq_init_scale(xh, qmax), rtol=1e-6)
  np.testing.assert_allclose(params["quant"]["kernel_scale"], lsq_init_scale(wh, qmax), rtol=1e-6)
  # 2 * mean|XH| / sqrt(Qp), written out
  np.testing.assert_allclose(params["quant"]["x_scale"],
                             2 * jnp.mean(jnp.abs(xh)) / jnp.sqrt(7.0), rtol=1e-5)


def test_lsq_scales_receive_gradients_and_train():
  layer = inn.Dense(24, config=Int4Config.paper())
  params = layer.init(jax.random.key(2), X)
  grads = jax.grad(lambda p: jnp.sum(layer.apply(p, X, rngs={"quant": QKEY}) ** 2))(params)
  g = grads["params"]["quant"]
  assert float(jnp.abs(g["x_scale"])) > 0 and float(jnp.abs(g["kernel_scale"])) > 0


def test_searched_block_lives_in_quant_state_and_is_reused():
  x = X.at[..., :2].multiply(40.0)  # outlier channels: the search should pick a real block
  layer = inn.Dense(24, config=Int4Config(hadamard_block="search"))
  variables = layer.init(jax.random.key(2), x)
  h = variables[inn.STATE_COLLECTION]["hadamard"]
  b = h.shape[0]
  assert b > 1 and b <= 48
  np.testing.assert_array_equal(h, hadamard.hadamard_matrix(b))
  y = layer.apply(variables, x)
  chex.assert_trees_all_equal(y, inn.Dense(24, config=Int4Config(hadamard_block=b)).apply(
      {"params": variables["params"]}, x))
  # under jit, the block comes from the state's shape
  chex.assert_trees_all_equal(jax.jit(layer.apply)(variables, x), y)


def test_search_under_jitted_init_raises_a_clear_error():
  layer = inn.Dense(24, config=Int4Config(hadamard_block="search"))
  with pytest.raises(ValueError, match="outside jit"):
    jax.jit(layer.init)(jax.random.key(2), X)


def test_missing_quant_state_raises_with_instructions():
  layer = inn.Dense(24, config=Int4Config(hadamard_block="search"))
  variables = layer.init(jax.random.key(2), X)
  with pytest.raises(ValueError, match="calibrate"):
    layer.apply({"params": variables["params"]}, X)


def test_calibrate_adds_quant_state_to_float_params():
  layer = inn.Dense(24, config=Int4Config.paper(hadamard_block="search"))
  float_vars = nn.Dense(24).init(jax.random.key(3), X)
  variables = inn.calibrate(layer, float_vars, X)
  assert set(variables) == {"params", inn.STATE_COLLECTION}
  kernel = float_vars["params"]["kernel"]
  chex.assert_trees_all_equal(variables["params"]["kernel"], kernel)
  b = variables[inn.STATE_COLLECTION]["hadamard"].shape[0]
  wh = hadamard.block_hadamard(hadamard.pad_to_block(kernel, b, 0), b, 0)
  np.testing.assert_allclose(variables["params"]["quant"]["kernel_scale"],
                             lsq_init_scale(wh, 7), rtol=1e-6)  # from the LOADED kernel
  layer.apply(variables, X)  # complete: applies without further state


def test_missing_quant_rng_raises_the_documented_error_at_grad():
  layer = inn.Dense(24)
  params = layer.init(jax.random.key(2), X)
  layer.apply(params, X)  # forward alone needs no rng
  with pytest.raises(ValueError, match=r"rngs=\{'quant': key\}"):
    jax.grad(lambda p: jnp.sum(layer.apply(p, X) ** 2))(params)


def test_same_quant_rng_same_gradients_other_rng_other_noise():
  layer = inn.Dense(24)
  params = layer.init(jax.random.key(2), X)

  def grad(key):
    return jax.grad(lambda p: jnp.sum(layer.apply(p, X, rngs={"quant": key}) ** 2))(params)

  chex.assert_trees_all_equal(grad(QKEY), grad(QKEY))
  a, b = grad(QKEY), grad(jax.random.key(8))
  assert not np.array_equal(a["params"]["kernel"], b["params"]["kernel"])


def test_deterministic_config_needs_no_rng():
  layer = inn.Dense(24, config=Int4Config(stochastic_rounding=False))
  params = layer.init(jax.random.key(2), X)
  grads = jax.grad(lambda p: jnp.sum(layer.apply(p, X) ** 2))(params)
  chex.assert_tree_all_finite(grads)


def test_batch_dims_run_one_int4_gemm_per_batch_slice():
  layer = inn.DenseGeneral(7, batch_dims=(0,), config=Int4Config(stochastic_rounding=False))
  params = layer.init(jax.random.key(2), X)
  y = layer.apply(params, X)
  kernel, bias = params["params"]["kernel"], params["params"]["bias"]
  for i in range(X.shape[0]):
    cfg = Int4Config(stochastic_rounding=False)
    chex.assert_trees_all_close(y[i], int4_linear(X[i], kernel[i], bias[i], config=cfg),
                                atol=1e-6)


def test_a_layer_with_its_own_dot_general_is_refused():
  with pytest.raises(ValueError, match="custom dot_general"):
    inn.Dense(4, dot_general=jax.lax.dot_general).init(jax.random.key(0), X)


def test_int_input_is_promoted_as_flax_does():
  x = jnp.arange(32, dtype=jnp.int32).reshape(4, 8)
  params = nn.Dense(4).init(jax.random.key(0), x)
  y = inn.Dense(4).apply(params, x)
  assert y.dtype == nn.Dense(4).apply(params, x).dtype == jnp.float32
  assert rel_err(y, nn.Dense(4).apply(params, x)) < 0.3


def test_bfloat16_compute_dtype_is_respected():
  layer = inn.Dense(24, dtype=jnp.bfloat16)
  params = layer.init(jax.random.key(2), X)
  assert layer.apply(params, X).dtype == jnp.bfloat16
  assert int4jax.nn.Dense is inn.Dense


def test_a_learned_step_size_pushed_below_zero_acts_as_its_magnitude():
  layer = inn.Dense(24, config=Int4Config.paper())
  params = layer.init(jax.random.key(2), X)
  flipped = jax.tree_util.tree_map_with_path(
      lambda p, a: -a if "kernel_scale" in jax.tree_util.keystr(p) else a, params)
  chex.assert_trees_all_equal(layer.apply(flipped, X), layer.apply(params, X))
  g = jax.grad(lambda p: jnp.sum(layer.apply(p, X, rngs={"quant": QKEY}) ** 2))(flipped)
  chex.assert_tree_all_finite(g)
