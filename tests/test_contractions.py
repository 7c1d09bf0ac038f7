"""Layers that are not plain Dense/Linear: einsum and dot_general contractions as INT4 GEMMs,
NNX LinearGeneral / Einsum / MultiHeadAttention and linen nn.Einsum under quantize_model."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import int4jax
from int4jax import Int4Config, contraction, int4_linear
from int4jax import nn as inn
from int4jax import nnx as innx
from tests.helpers import rel_err

NEAREST = Int4Config(stochastic_rounding=False)


def _ints(shape, seed):
  """Small integers as floats: every sum is exact, so einsum and dot_general agree bitwise."""
  return jnp.asarray(np.random.default_rng(seed).integers(-3, 4, shape), jnp.float32)


@pytest.mark.parametrize("spec,lhs_shape,rhs_shape", [
    ("btd,df->btf", (2, 3, 8), (8, 5)),
    ("btd,dhk->bthk", (2, 3, 8), (8, 4, 6)),   # MHA-style q/k/v projection
    ("bthk,hkd->btd", (2, 3, 4, 6), (4, 6, 8)),  # MHA-style out projection
    ("...d,df->...f", (2, 3, 8), (8, 5)),
    ("ebd,edf->ebf", (3, 4, 8), (3, 8, 5)),  # a batch dim (experts)
    ("btd,fd->bft", (2, 3, 8), (5, 8)),  # output dims reordered, weight stored (out, in)
])
def test_einsum_maps_to_one_dot_general(spec, lhs_shape, rhs_shape):
  lhs, rhs = _ints(lhs_shape, 0), _ints(rhs_shape, 1)
  dims, perm = contraction.einsum_dimension_numbers(spec, lhs.ndim, rhs.ndim)
  got = jnp.transpose(jax.lax.dot_general(lhs, rhs, dims), perm)
  np.testing.assert_array_equal(got, jnp.einsum(spec, lhs, rhs))
  x, w, unflatten = contraction.as_matmuls(lhs, rhs, dims)
  np.testing.assert_array_equal(jnp.transpose(unflatten(x @ w), perm), got)


@pytest.mark.parametrize("spec,why", [
    ("ab,cd->ad", "summed within one operand"),
    ("aab,bc->ac", "repeats"),
    ("ab,cb->abc", "contracts no dim"),
    ("ab,b...->a", "ellipsis in the weight"),
    ("ab,bc", "explicit output"),
])
def test_einsums_that_are_not_a_gemm_say_why(spec, why):
  with pytest.raises(ValueError, match=why):
    contraction.einsum_dimension_numbers(spec, 2 + (spec == "aab,bc->ac"), 2)


def _external_gpt_block(d, rngs):
  class Block(nnx.Module):  # as a user writes it, from nnx's own layers
    def __init__(self):
      self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=d, decode=False, rngs=rngs)
      self.up, self.down = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)
      self.head = nnx.Linear(d, 11, rngs=rngs)

    def __call__(self, x):
      h = self.ln1(x)
      x = x + self.attn(h, mask=nnx.make_causal_mask(x[..., 0]))
      x = x + self.down(jax.nn.gelu(self.up(self.ln2(x))))
      return self.head(x)
  return Block()


@pytest.mark.slow  # over 20 s: the slow run (.ci/run), to keep the default run under 10 min
def test_nnx_attention_and_mlp_all_become_int4():
  """An external-style NNX GPT block: q, k, v, out and both MLP layers are INT4 (the head is
  excluded); the jaxpr of a train step holds 3 integer GEMMs per quantized layer."""
  model = _external_gpt_block(32, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 8, 32))
  y_float = model(x)
  int4jax.quantize_model(model, exclude=[r"head"], rngs=nnx.Rngs(quant=0))
  plan = int4jax.quantization_plan(model)
  int4 = sorted(p for p, c in plan.items() if c is not None)
  assert int4 == ["attn/key", "attn/out", "attn/query", "attn/value", "down", "up"]
  assert plan["head"] is None
  assert isinstance(model.attn.query, innx.LinearGeneral)
  assert rel_err(model(x), y_float) < 0.3
  graphdef, state = nnx.split(model)

  def step(state, x):
    return nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(nnx.merge(graphdef, state), x)
  text = str(jax.make_jaxpr(step)(state, x))
  assert text.count("preferred_element_type=int32") == 3 * 6
  grads = jax.jit(step)(state, x)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_nnx_linear_general_equals_the_op_on_flattened_operands():
  """Contracting (heads, head_dim) like MHA's out projection: the same integers as int4_linear on
  the (tokens, heads*head_dim) @ (heads*head_dim, out) product, bias added after."""
  layer = innx.LinearGeneral((4, 6), 8, axis=(-2, -1), config=NEAREST, rngs=nnx.Rngs(0))
  layer.bias[...] = jnp.linspace(-1, 1, 8)
  x = jax.random.normal(jax.random.key(2), (2, 3, 4, 6))
  want = int4_linear(x.reshape(6, 24), layer.kernel[...].reshape(24, 8), layer.bias[...],
                     config=NEAREST).reshape(2, 3, 8)
  np.testing.assert_array_equal(layer(x), want)


def test_nnx_linear_general_batch_axis_runs_one_gemm_per_batch_index():
  layer = innx.LinearGeneral(8, 5, axis=-1, batch_axis={0: 3}, config=NEAREST,
                             rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (3, 7, 8))
  y = layer(x)
  for e in range(3):
    np.testing.assert_array_equal(
        y[e], int4_linear(x[e], layer.kernel[...][e], layer.bias[...][e], config=NEAREST))


def test_nnx_einsum_equals_the_op_and_an_unmappable_one_stays_float(caplog):
  layer = innx.Einsum("btd,dhk->bthk", (8, 4, 6), (4, 6), config=NEAREST, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(4), (2, 3, 8))
  want = (int4_linear(x.reshape(6, 8), layer.kernel[...].reshape(8, 24), config=NEAREST)
          .reshape(2, 3, 4, 6) + layer.bias[...][None, None])
  np.testing.assert_allclose(layer(x), want, rtol=1e-6, atol=1e-6)

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.proj = nnx.Einsum("btd,dhk->bthk", (8, 4, 6), rngs=rngs)
      self.diag = nnx.Einsum("btd,d->btd", (8,), kernel_init=nnx.initializers.ones,
                             rngs=rngs)  # elementwise: no GEMM

    def __call__(self, x):
      return self.proj(x).sum(axis=(2, 3)) + self.diag(x).sum(-1)

  model = Model(nnx.Rngs(0))
  with caplog.at_level(logging.WARNING, logger="int4jax"):
    int4jax.quantize_model(model, rngs=nnx.Rngs(quant=0))
  assert isinstance(model.proj, innx.Einsum) and not isinstance(model.diag, innx.Einsum)
  assert int4jax.quantization_plan(model)["diag"] is None
  assert set(int4jax.plan(model).skipped) == {"diag"}  # listed with its reason
  assert any("diag stays float" in r.getMessage() for r in caplog.records)
  assert model(x).shape == (2, 3)


def test_linen_einsum_layers_are_quantized_by_quantize_model():
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Einsum((8, 4, 6), "btd,dhk->bthk", name="qkv")(x)
      return nn.Einsum((4, 6, 8), "bthk,hkd->btd", name="out")(h)

  model = Model()
  x = jax.random.normal(jax.random.key(5), (2, 3, 8))
  variables = model.init(jax.random.key(0), x)
  quantized = int4jax.quantize_model(model, config=NEAREST)
  assert {p: c is not None for p, c in quantized.plan(x).items()} == {"qkv": True, "out": True}
  y = quantized.apply(variables, x)  # the float checkpoint's params, unchanged
  assert rel_err(y, model.apply(variables, x)) < 0.3

  def loss(params, x):
    return jnp.sum(quantized.apply({"params": params}, x, rngs={"quant": jax.random.key(1)}))
  text = str(jax.make_jaxpr(jax.grad(loss))(variables["params"], x))
  assert text.count("preferred_element_type=int32") == 3 * 2
  direct = inn.Einsum((8, 4, 6), "btd,dhk->bthk", config=NEAREST)
  sub = {"params": variables["params"]["qkv"]}
  h = jnp.einsum("btd,dhk->bthk", x, sub["params"]["kernel"]) + sub["params"]["bias"][None, None]
  assert rel_err(direct.apply(sub, x), h) < 0.3


def test_a_linen_einsum_that_is_not_a_gemm_stays_float(caplog):
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Einsum((8, 5), "btd,df->btf", name="proj")(x)
      return nn.Einsum((5,), "btf,f->btf", use_bias=False, name="scale",
                       kernel_init=nn.initializers.ones)(h)  # elementwise: no GEMM

  x = jax.random.normal(jax.random.key(6), (2, 3, 8))
  model = int4jax.quantize_model(Model())
  with caplog.at_level(logging.WARNING, logger="int4jax"):
    plan = model.plan(x)
  assert plan == {"proj": Int4Config(), "scale": None}
  assert set(plan.skipped) == {"scale"} and "contracts no dim" in plan.skipped["scale"]
  assert any("scale stays float" in r.getMessage() and "contracts no dim" in r.getMessage()
             for r in caplog.records)
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (2, 3, 5)


def test_an_nnx_plan_on_example_inputs_lists_attentions_own_contractions():
  """Traced on an input, the NNX plan also lists the module that contracts outside its layers:
  MultiHeadAttention's QK^T and weights x V (2), stay float. Without inputs it lists layers only,
  and the module classes it patched to tag the trace are restored."""
  model = _external_gpt_block(32, nnx.Rngs(0))
  int4jax.quantize_model(model, exclude=[r"head"], rngs=nnx.Rngs(quant=0))
  call = nnx.MultiHeadAttention.__call__
  plan = int4jax.plan(model, jax.ShapeDtypeStruct((2, 8, 32), jnp.float32))
  assert set(plan.skipped) == {"attn"} and plan.skipped["attn"].startswith("2 contractions ")
  assert "attn: skipped, stays float: 2 contractions outside a Dense/Einsum layer" in (
      plan.describe())
  assert sorted(p for p, c in plan.items() if c is not None) == [
      "attn/key", "attn/out", "attn/query", "attn/value", "down", "up"]
  assert int4jax.plan(model).skipped == {}
  assert nnx.MultiHeadAttention.__call__ is call


def test_a_linen_plan_lists_contractions_outside_layers_by_module():
  """Linen: attention's two activation contractions under its module's path, and a tied output
  head written as `x @ embedding.T` in the root module under <root>."""
  class Model(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      embed = nn.Embed(50, 16, name="embed")
      h = nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(embed(tokens))
      h = nn.Dense(16, name="mlp")(h)
      return h @ embed.embedding.T

  plan = int4jax.plan(int4jax.quantize_model(Model()), jnp.zeros((2, 8), jnp.int32))
  assert {p: c is not None for p, c in plan.items()} == {
      "attn/query": True, "attn/key": True, "attn/value": True, "attn/out": True, "mlp": True}
  assert set(plan.skipped) == {"attn", ""}, plan.skipped
  assert plan.skipped["attn"].startswith("2 contractions")
  assert plan.skipped[""].startswith("1 contraction ")
  assert "<root>: skipped, stays float: 1 contraction outside" in plan.describe()


def test_a_plan_traces_array_keyword_inputs_and_keeps_flags_static():
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x, *, mask, train: bool):
      h = nn.Dense(8, name="fc")(x) * mask
      return h if train else h @ h.T

  model = int4jax.quantize_model(Model())
  spec = jax.ShapeDtypeStruct((4, 8), jnp.float32)
  assert int4jax.plan(model, spec, mask=spec, train=True).skipped == {}
  assert set(int4jax.plan(model, spec, mask=jnp.ones((4, 8)), train=False).skipped) == {""}


def _scanned_stack(rngs):
  """Three Linear blocks created under nnx.vmap and run by nnx.scan (a stacked model)."""
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(16, 16, rngs=rngs)

    def __call__(self, x):
      return x + self.fc(x)

  class Stack(nnx.Module):
    def __init__(self, rngs):
      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make(rngs):
        return Block(rngs)
      self.blocks = make(rngs)
      self.head = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def body(x, block):
        return block(x)
      return self.head(body(x, self.blocks))
  return Stack(rngs)


def test_a_scanned_stack_of_nnx_layers_quantizes_with_one_rng_stream_per_layer():
  """Layers made under nnx.vmap hold stacked kernels (3, 16, 16); their INT4 versions get one
  rng stream per slice, so nnx.scan runs them: the gradient keeps the stacked shapes, the scan
  body holds the 3 integer GEMMs, and the plan lists no contraction as skipped (the scan's layer
  copies count as layers). Learned quantizer state cannot be stacked and raises."""
  model = _scanned_stack(nnx.Rngs(0))
  x = jnp.ones((2, 16))
  y_float = model(x)
  int4jax.quantize_model(model, exclude=["head"], rngs=nnx.Rngs(quant=0))
  assert rel_err(model(x), y_float) < 0.3
  plan = int4jax.plan(model, x)
  assert {p: c is not None for p, c in plan.items()} == {"blocks/fc": True, "head": False}
  assert plan.skipped == {}
  graphdef, state = nnx.split(model)

  def step(state, x):
    return nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(nnx.merge(graphdef, state), x)
  assert str(jax.make_jaxpr(step)(state, x)).count("preferred_element_type=int32") == 3
  grads = jax.jit(step)(state, x)
  assert grads["blocks"]["fc"]["kernel"].shape == (3, 16, 16)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  untouched = _scanned_stack(nnx.Rngs(0))
  with pytest.raises(ValueError, match="stack of \\(3,\\) layers"):
    int4jax.quantize_model(untouched, rules=[
        int4jax.QuantRule(path="head", config=Int4Config()),
        int4jax.QuantRule(path=".*", config=Int4Config.paper())], rngs=nnx.Rngs(quant=0))
  assert type(untouched.head) is nnx.Linear  # nothing was swapped before the error
