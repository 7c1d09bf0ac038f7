"""A third-party-style model in and out (tests/gemma_style.py, written as gemma writes its linen
Transformer): quantize_model's default puts every projection in INT4 with three integer GEMMs
each in a train step, names each contraction by its param so one GEMM of a fused scope can stay
float, plans calls with non-array arguments, forwards the model's attributes and methods, logs
the expected float contractions once at INFO, and serves from packed weights bit for bit."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import int4jax
from int4jax import Int4Config, QuantRule
from tests.gemma_style import Config, Einsum, Transformer
from tests.helpers import integer_dots, rel_err

TOKENS = jax.random.randint(jax.random.key(0), (2, 8), 0, Config().vocab)
PROJECTIONS = {f"layer_{i}/{name}" for i in range(Config().layers) for name in (
    "attn/q_einsum", "attn/kv_einsum", "attn/attn_vec_einsum", "mlp/gating_einsum",
    "mlp/linear")}


def _params(model=Transformer()):
  return jax.jit(model.init)(jax.random.key(1), TOKENS)


def _loss(model, params, tokens=TOKENS):
  logits, _ = model.apply(params, tokens[:, :-1], rngs={"quant": jax.random.key(2)})
  labels = jax.nn.one_hot(tokens[:, 1:], Config().vocab)
  return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))


def test_the_default_puts_every_projection_in_int4_and_lists_the_float_ones():
  plan = int4jax.plan(int4jax.quantize_model(Transformer()), TOKENS)
  assert set(plan) == PROJECTIONS and set(plan.values()) == {Int4Config()}
  assert set(plan.skipped) == {"", "layer_0/attn", "layer_1/attn"}  # head; QK^T and PV
  assert plan.skipped["layer_0/attn"].startswith("2 contractions: activations only")


def test_a_train_step_runs_three_integer_gemms_per_projection():
  model = int4jax.quantize_model(Transformer())
  params = _params(model)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: _loss(model, p)))(params)
  assert len(integer_dots(jaxpr)) == 3 * len(PROJECTIONS)
  float_grads = jax.jit(jax.grad(lambda p: _loss(Transformer(), p)))(params)
  grads = jax.jit(jax.grad(lambda p: _loss(model, p)))(params)
  for path in ("layer_0/mlp/linear", "layer_1/attn/kv_einsum/w"):
    keys = path.split("/")
    g, f = grads["params"], float_grads["params"]
    for k in keys:
      g, f = g[k], f[k]
    assert rel_err(g, f) < 0.35, path


def test_a_rule_on_one_contraction_keeps_one_gemm_of_a_fused_scope_float():
  rules = [QuantRule(path="layer_0/mlp/linear", config=None), QuantRule()]
  model = int4jax.quantize_model(Transformer(), rules)
  plan = model.plan(TOKENS)
  assert plan["layer_0/mlp/linear"] is None and plan["layer_0/mlp/gating_einsum"] == Int4Config()
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: _loss(model, p)))(_params(model))
  assert len(integer_dots(jaxpr)) == 3 * (len(PROJECTIONS) - 1)
  # a rule on the module's path covers both of its contractions
  scoped = int4jax.plan(int4jax.quantize_model(
      Transformer(), [QuantRule(path="layer_0/mlp", config=None), QuantRule()]), TOKENS)
  assert scoped["layer_0/mlp/linear"] is None and scoped["layer_0/mlp/gating_einsum"] is None


def test_plan_takes_positional_and_keyword_non_array_arguments():
  einsum = int4jax.quantize_model(Einsum((32, 16)))
  x = jnp.ones((2, 4, 32))
  assert int4jax.plan(einsum, "btd,df->btf", x) == {"": Int4Config()}
  assert int4jax.plan(einsum, eqn="btd,df->btf", x=x) == {"": Int4Config()}
  assert int4jax.plan(einsum, "btd,df->btf", jax.ShapeDtypeStruct(x.shape, x.dtype)) == {
      "": Int4Config()}


def test_the_quantized_model_is_a_drop_in_for_code_that_drives_the_model():
  model = int4jax.quantize_model(Transformer())
  assert model.config == Config()
  cache = model.init_cache(2)  # unbound, as a sampler asks for it
  assert len(cache) == Config().layers and cache[0]["k"].shape == (2, 0, 2, 16)
  params = _params(model)
  bound_cache = model.apply(params, 2, method="init_cache")
  assert jax.tree.map(jnp.shape, bound_cache) == jax.tree.map(jnp.shape, cache)
  tokens = _greedy(model, params, TOKENS[:, :4], steps=4)
  assert tokens.shape == (2, 8) and bool(jnp.all((tokens >= 0) & (tokens < Config().vocab)))


def _greedy(model, params, prompt, steps):
  """A sampler's loop: prefill the prompt into the cache, then one token per call."""
  cache = model.init_cache(prompt.shape[0])
  logits, cache = model.apply(params, prompt, cache)
  tokens = [prompt]
  for _ in range(steps):
    nxt = jnp.argmax(logits[:, -1:], -1)
    tokens.append(nxt)
    logits, cache = model.apply(params, nxt, cache)
  return jnp.concatenate(tokens, axis=1)


def test_expected_float_contractions_are_logged_once_per_model_at_info(caplog):
  from int4jax.nn import raw_contractions
  raw_contractions._reported.clear()  # "once" is per process
  model = int4jax.quantize_model(Transformer())
  params = _params(model)
  with caplog.at_level(logging.INFO, logger="int4jax"):
    model.apply(params, TOKENS)
    model.apply(params, TOKENS[:, :5])
  float_lines = [r for r in caplog.records if "stay float" in r.getMessage()]
  assert len(float_lines) == 1 and float_lines[0].levelno == logging.INFO
  assert "4 contractions activations only" in float_lines[0].getMessage()
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_weight_on_the_left_is_a_warning():
  import flax.linen as nn

  class Left(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.initializers.normal(0.1), (16, x.shape[-2]))
      return jnp.einsum("fs,bsd->bfd", w, x)

  from int4jax.nn import raw_contractions
  raw_contractions._reported.clear()
  model = int4jax.quantize_model(Left())
  x = jnp.ones((2, 8, 32))
  assert model.plan(x).skipped[""].startswith("1 contraction: the weight is the left operand")


@pytest.mark.parametrize("module, eqn, x_shape", [
    (Einsum((4, 64, 16)), "BTD,NDH->BTNH", (2, 8, 64)),  # q: the contraction in the middle
    (Einsum((2, 2, 64, 16)), "BSD,CKDH->CBSKH", (2, 8, 64)),  # the fused kv
    (Einsum((4, 16, 64)), "BTNH,NHD->BTD", (2, 8, 4, 16)),  # the output: two dims contracted
])
def test_each_packed_raw_contraction_serves_bit_for_bit(module, eqn, x_shape):
  model = int4jax.quantize_model(module)
  x = jax.random.normal(jax.random.key(3), x_shape)
  params = model.init(jax.random.key(4), eqn, x)
  packed = int4jax.export(params["params"], model.plan(eqn, x))
  assert type(packed["w"]).__name__ == "PackedWeight"
  forward = jax.jit(model.apply, static_argnums=1)
  np.testing.assert_array_equal(forward({"params": packed}, eqn, x), forward(params, eqn, x))


@pytest.mark.slow  # over 15 s on 2 busy cores: the slow run (.ci/run)
def test_the_fused_mlp_serves_both_of_its_params_packed_bit_for_bit():
  from tests.gemma_style import FeedForward
  model = int4jax.quantize_model(FeedForward(Config()))
  x = jax.random.normal(jax.random.key(3), (2, 8, Config().width))
  params = jax.jit(model.init)(jax.random.key(4), x)
  packed = int4jax.export(params["params"], model.plan(x))
  assert {type(v).__name__ for v in packed.values()} == {"PackedWeight"}
  forward = jax.jit(model.apply)
  np.testing.assert_array_equal(forward({"params": packed}, x), forward(params, x))


def test_the_quantized_model_serves_from_packed_weights_and_samples():
  """The whole model: every projection packed; the logits equal training's forward up to the
  float rounding of the norms around them (XLA compiles their reductions per program), and
  greedy sampling gives the same text."""
  model = int4jax.quantize_model(Transformer())
  params = _params(model)
  packed = int4jax.export(params["params"], model.plan(TOKENS))
  for path in PROJECTIONS:
    node = packed
    for key in path.split("/"):
      node = node[key]
    node = node["w"] if isinstance(node, dict) else node
    assert type(node).__name__ == "PackedWeight", path
  assert type(packed["embedder"]).__name__ != "PackedWeight"  # the float head's table
  served = {"params": packed}
  forward = jax.jit(lambda p, t: model.apply(p, t)[0])
  assert rel_err(forward(served, TOKENS), forward(params, TOKENS)) < 1e-5
  np.testing.assert_array_equal(_greedy(model, served, TOKENS[:, :4], 4),
                                _greedy(model, params, TOKENS[:, :4], 4))


@pytest.mark.slow  # over 15 s on 2 busy cores: the slow run (.ci/run)
def test_config_a_then_config_b_in_one_process_gives_b():
  params = _params()
  float_logits = Transformer().apply(params, TOKENS)[0]
  a = int4jax.quantize_model(Transformer(), config=Int4Config()).apply(params, TOKENS)[0]
  b_config = Int4Config(forward_bits=8, scale_levels=1)
  b = int4jax.quantize_model(Transformer(), config=b_config).apply(params, TOKENS)[0]
  jax.clear_caches()
  fresh = int4jax.quantize_model(Transformer(), config=b_config).apply(params, TOKENS)[0]
  np.testing.assert_array_equal(b, fresh)
  assert rel_err(b, float_logits) < 0.5 * rel_err(a, float_logits)
