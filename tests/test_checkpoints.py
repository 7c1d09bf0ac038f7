"""Float <-> INT4 checkpoints with orbax, the standard patterns: a float checkpoint restores into
the quantized model and the quantized model's params restore into the float model, linen and
NNX. The quantizer's rng state is not a Param, so the NNX pattern splits on nnx.Param."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import int4jax

X = jax.random.normal(jax.random.key(9), (4, 6, 16))


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False, rngs=rngs)
    self.mlp = nnx.Linear(16, 32, rngs=rngs)
    self.head = nnx.Linear(32, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(jax.nn.gelu(self.mlp(x + self.attn(x))))


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(x)
    return nn.Dense(3, name="head")(nn.gelu(nn.Dense(32, name="mlp")(x)))


def _save(path, tree):
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, tree)


def _restore(path, target):
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(path, target)


@pytest.mark.slow  # over 20 s: the slow run (.ci/run), to keep the default run under 10 min
def test_nnx_float_checkpoint_restores_into_the_int4_model_and_back(tmp_path):
  trained = NnxNet(nnx.Rngs(0))  # stands for a trained float model
  _save(tmp_path / "float", nnx.state(trained, nnx.Param))

  model = int4jax.quantize_model(NnxNet(nnx.Rngs(1)), exclude=["head"], rngs=nnx.Rngs(quant=0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # rng state stays out of the params
  model = nnx.merge(graphdef, _restore(tmp_path / "float", params), rest)
  reference = int4jax.quantize_model(trained, exclude=["head"], rngs=nnx.Rngs(quant=0))
  np.testing.assert_array_equal(model(X), reference(X))  # forward: no randomness

  _save(tmp_path / "int4", nnx.state(model, nnx.Param))
  plain = NnxNet(nnx.Rngs(2))
  graphdef, params, rest = nnx.split(plain, nnx.Param, ...)
  plain = nnx.merge(graphdef, _restore(tmp_path / "int4", params), rest)
  chex.assert_trees_all_equal(nnx.state(plain, nnx.Param), nnx.state(trained, nnx.Param))


@pytest.mark.slow  # over 20 s: the slow run (.ci/run), to keep the default run under 10 min
def test_linen_float_checkpoint_restores_into_the_int4_model_and_back(tmp_path):
  params = LinenNet().init(jax.random.key(0), X)["params"]
  _save(tmp_path / "float", params)
  quantized = int4jax.quantize_model(LinenNet(), exclude=["head"])
  target = jax.eval_shape(quantized.init, jax.random.key(1), X)["params"]
  restored = _restore(tmp_path / "float", target)
  y = quantized.apply({"params": restored}, X)
  np.testing.assert_array_equal(y, quantized.apply({"params": params}, X))
  assert float(jnp.linalg.norm(y - LinenNet().apply({"params": params}, X))) > 0  # INT4 ran

  _save(tmp_path / "int4", restored)
  back = _restore(tmp_path / "int4", jax.eval_shape(LinenNet().init, jax.random.key(2), X)
                  ["params"])
  chex.assert_trees_all_equal(back, params)
