"""Serving export: packed INT4 weights (two per byte) with their scales, and the forward that
consumes them, equal to the training-time forward bit for bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import int4jax
from int4jax import Int4Config, int4_linear, serving
from tests.helpers import make_xw

CONFIGS = {
    "default": Int4Config(),
    "one-level": Int4Config(scale_levels=1),
    "tensor": Int4Config(scale_mode="tensor"),
    "hq128-full-range": Int4Config(hadamard_block=128, int_range="full"),
    "group32-levels8": Int4Config(scale_group=32, scale_levels=8),
    "search": Int4Config(scale_search=2),  # searched multipliers: some groups clip
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("m,k,n", [(24, 100, 48), (1, 64, 5)])
def test_packed_forward_equals_the_training_forward(name, m, k, n):
  config = CONFIGS[name]
  x, w = make_xw(m, k, n, seed=k)
  bias = jnp.linspace(-1, 1, n)
  packed = serving.export_weight(w, config)
  assert packed.values.dtype == jnp.uint8
  # Compiled, both run the same integers through the same epilogue. (Eagerly, the training op
  # is compiled as one custom-VJP call and the serving ops one by one, so XLA may multiply the
  # two per-tensor scales in another order: a last-bit difference.)
  serve = jax.jit(lambda x, p: serving.packed_linear(x, p, bias))
  train = jax.jit(lambda x, w: int4_linear(x, w, bias, config=config))
  np.testing.assert_array_equal(serve(x, packed), train(x, w))


def test_the_packed_operand_is_the_forward_operand():
  """Unpacking rebuilds the exact int8 operand m * q the forward quantizer makes."""
  from int4jax.linear import quantize_operand
  from int4jax.quantizers import hadamard
  _, w = make_xw(4, 256, 32, seed=3)
  config = Int4Config()
  wq, sw = quantize_operand(hadamard.block_hadamard(w, 32, 0), 0, config)
  packed = serving.export_weight(w, config)
  np.testing.assert_array_equal(serving.unpacked_operand(packed), wq)
  np.testing.assert_array_equal(packed.scale, sw)
  assert int(jnp.max(jnp.abs(wq))) > 7  # the multipliers are really used and recovered


def test_packed_weights_take_under_0_3x_the_memory_of_bf16():
  _, w = make_xw(4, 1024, 1024)
  for config in (Int4Config(), Int4Config(scale_levels=1)):
    packed = serving.export_weight(w, config)
    assert packed.nbytes <= 0.3 * w.size * 2, (config, packed.nbytes / (w.size * 2))


@pytest.mark.slow  # over 20 s: the slow run (.ci/run)
def test_a_quantized_linen_model_serves_from_exported_params():
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.gelu(nn.Dense(512, name="up")(x))
      return nn.Dense(3, name="head")(nn.Dense(256, name="down")(h))

  x = jax.random.normal(jax.random.key(0), (8, 256))
  model = int4jax.quantize_model(Model(), exclude=["head"])
  params = model.init(jax.random.key(1), x)["params"]
  served = int4jax.export(params, model.plan(x))
  assert isinstance(served["up"]["kernel"], int4jax.PackedWeight)
  assert not isinstance(served["head"]["kernel"], int4jax.PackedWeight)  # float layers stay
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(apply({"params": served}, x), apply({"params": params}, x))
  int4_bytes = sum(served[n]["kernel"].nbytes for n in ("up", "down"))
  assert int4_bytes <= 0.3 * 2 * (256 * 512 + 512 * 256)


def test_export_refuses_what_it_cannot_pack():
  _, w = make_xw(4, 64, 8)
  with pytest.raises(ValueError, match="dynamic-scale"):
    serving.export_weight(w, Int4Config.paper())
  with pytest.raises(ValueError, match="contracted dims first"):
    serving.export_weight(jnp.ones((4, 16, 8)), contracted_dims=3)  # no output dim left
  with pytest.raises(ValueError, match="features"):
    serving.packed_linear(jnp.ones((2, 32)), serving.export_weight(w))


def test_a_quantized_nnx_model_serves_from_its_export():
  """int4jax.nnx.export: a copy whose INT4 Linear layers hold packed kernels; compiled, it
  answers bit for bit as the training model's forward, and the original is untouched."""
  from flax import nnx

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.up, self.down = nnx.Linear(128, 256, rngs=rngs), nnx.Linear(256, 64, rngs=rngs)
      self.head = nnx.Linear(64, 3, rngs=rngs)

    def __call__(self, x):
      return self.head(self.down(nnx.gelu(self.up(x))))

  model = int4jax.quantize_model(Model(nnx.Rngs(0)), exclude=["head"], rngs=nnx.Rngs(quant=1))
  served = int4jax.nnx.export(model)
  assert isinstance(served.up.kernel.get_value(), int4jax.PackedWeight)
  assert not isinstance(served.head.kernel.get_value(), int4jax.PackedWeight)
  assert not isinstance(model.up.kernel.get_value(), int4jax.PackedWeight)
  x = jax.random.normal(jax.random.key(2), (8, 128))
  forward = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(forward(served, x), forward(model, x))
  assert served.up.kernel.get_value().nbytes + served.down.kernel.get_value().nbytes <= 0.3 * 2 * (
      128 * 256 + 256 * 64)


def _attention_inputs():
  return jax.random.normal(jax.random.key(0), (2, 8, 64))


@pytest.mark.slow  # over 20 s: the slow run (.ci/run), to keep the default run under 10 min
def test_linen_attention_projections_einsums_and_dense_layers_all_serve_packed():
  """nn.MultiHeadDotProductAttention's DenseGeneral projections ((64, 4, 16) and (4, 16, 64)
  kernels), an Einsum whose kernel contracts its middle dim (packed transposed) and a Dense layer
  are all packed; an Einsum with a batch dim keeps its float kernel and still runs INT4.
  Compiled, the served model equals the training forward bit for bit."""
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(x)
      h = nn.Einsum((4, 64, 16), "btd,hdk->bthk", name="split")(h)  # kernel (h, d, k)
      h = nn.Einsum((4, 16, 16), "bthk,hkj->bthj", name="per_head")(h)  # h is a batch dim
      return nn.Dense(64, name="mlp")(h.reshape(h.shape[:2] + (-1,)))

  x = _attention_inputs()
  model = int4jax.quantize_model(Model())
  params = model.init(jax.random.key(1), x)["params"]
  plan = int4jax.plan(model, x)
  assert plan.contracted_dims == {"attn/query": 1, "attn/key": 1, "attn/value": 1,
                                  "attn/out": 2, "split": 1, "mlp": 1}
  assert plan.kernel_perms == {"split": (1, 0, 2)}
  served = int4jax.export(params, plan)
  packed = {p: served["attn"][p]["kernel"] for p in ("query", "key", "value", "out")}
  packed.update(split=served["split"]["kernel"], mlp=served["mlp"]["kernel"])
  assert all(isinstance(k, int4jax.PackedWeight) for k in packed.values())
  assert packed["out"].kernel_shape == (4, 16, 64) and packed["out"].contracted_dims == 2
  assert packed["split"].flat_shape == (64, 4, 16)
  assert not isinstance(served["per_head"]["kernel"], int4jax.PackedWeight)
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(apply({"params": served}, x), apply({"params": params}, x))
  floats = sum(np.size(params["attn"][p]["kernel"]) for p in ("query", "key", "value", "out"))
  floats += np.size(params["split"]["kernel"]) + np.size(params["mlp"]["kernel"])
  assert sum(k.nbytes for k in packed.values()) <= 0.3 * 2 * floats


def test_nnx_attention_projections_serve_packed():
  from flax import nnx

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=64, decode=False, rngs=rngs)
      self.split = nnx.Einsum("btd,hdk->bthk", (4, 64, 16), (4, 16), rngs=rngs)
      self.mlp = nnx.Linear(64, 64, rngs=rngs)

    def __call__(self, x):
      h = self.split(self.attn(x))
      return self.mlp(h.reshape(h.shape[:2] + (-1,)))

  model = int4jax.quantize_model(Model(nnx.Rngs(0)), rngs=nnx.Rngs(quant=1))
  plan = int4jax.plan(model)
  assert plan.contracted_dims == {"attn/query": 1, "attn/key": 1, "attn/value": 1,
                                  "attn/out": 2, "split": 1, "mlp": 1}
  assert plan.kernel_perms == {"split": (1, 0, 2)}
  served = int4jax.nnx.export(model)
  names = ("query", "key", "value", "out")
  packed = [getattr(served.attn, n).kernel.get_value() for n in names]
  assert all(isinstance(k, int4jax.PackedWeight) for k in packed)
  assert served.split.kernel.get_value().kernel_perm == (1, 0, 2)
  assert not isinstance(model.attn.query.kernel.get_value(), int4jax.PackedWeight)
  forward = nnx.jit(lambda m, x: m(x))
  x = _attention_inputs()
  np.testing.assert_array_equal(forward(served, x), forward(model, x))
  assert sum(k.nbytes for k in packed) <= 0.3 * 2 * 4 * 64 * 64


def test_a_packed_kernel_checks_the_dims_it_contracts():
  packed = serving.export_weight(jax.random.normal(jax.random.key(0), (4, 16, 64)),
                                 contracted_dims=2)
  assert packed.in_features == 64 and packed.scale.shape == (1, 64)
  y = serving.packed_contraction(jnp.ones((3, 4, 16)), packed)
  assert y.shape == (3, 64)
  with pytest.raises(ValueError, match="contracts dims"):
    serving.packed_contraction(jnp.ones((3, 16, 4)), packed)
