"""quantize_model on an unmodified linen model built from Flax's own attention and MLP layers."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import int4jax
from int4jax import Int4Config, QuantRule
from int4jax import nn as inn
from int4jax.nn.transformer import EncoderClassifier, count_linear_layers, cross_entropy

from helpers import all_dots, integer_dots, rel_err

D, C = 32, 3


class Block(nn.Module):
  """A plain Flax transformer block: nothing in it knows about int4jax."""

  @nn.compact
  def __call__(self, x):
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(nn.LayerNorm()(x))
    h = nn.gelu(nn.Dense(64, name="mlp_in")(nn.LayerNorm()(x)))
    return x + nn.Dense(D, name="mlp_out")(h)


class Model(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(20, D, name="embed")(tokens)
    x = Block(name="block_0")(x)
    x = Block(name="block_1")(x)
    return nn.Dense(C, name="head")(jnp.mean(x, axis=1))


TOKENS = jax.random.randint(jax.random.key(0), (4, 8), 0, 20)
LABELS = jnp.array([0, 1, 2, 1])
LINEARS = ["attn/query", "attn/key", "attn/value", "attn/out", "mlp_in", "mlp_out"]


def train_step_jaxpr(model, params):
  def loss(p):
    logits = model.apply({"params": p}, TOKENS, rngs={"quant": jax.random.key(1)})
    return cross_entropy(logits, LABELS)

  return jax.make_jaxpr(jax.value_and_grad(loss))(params)


def test_every_targeted_layer_runs_three_int_gemms_and_the_head_stays_float():
  model = Model()
  params = model.init(jax.random.key(1), TOKENS)["params"]
  qmodel = int4jax.quantize_model(model, exclude=[r".*head"])
  plan = qmodel.plan(TOKENS)
  quantized = [p for p, c in plan.items() if c is not None]
  assert sorted(quantized) == sorted(f"block_{i}/{n}" for i in range(2) for n in LINEARS)
  assert plan["head"] is None
  jaxpr = train_step_jaxpr(qmodel, params)
  assert len(integer_dots(jaxpr)) == 3 * len(quantized)
  head_dots = [e for e in all_dots(jaxpr)
               if any(v.aval.shape == (D, C) for v in e.invars + e.outvars)]
  assert head_dots and all(v.aval.dtype == jnp.float32 for e in head_dots for v in e.invars)
  assert not integer_dots(train_step_jaxpr(model, params))  # the original model is untouched


def test_param_tree_is_the_float_models_and_float_params_load():
  model = Model()
  variables = jax.jit(model.init)(jax.random.key(1), TOKENS)
  qmodel = int4jax.quantize_model(model)
  chex.assert_trees_all_equal(jax.jit(qmodel.init)(jax.random.key(1), TOKENS), variables)
  # 12 INT4 layers in a row at random init, D=32: each adds ~0.15-0.2 relative error
  assert rel_err(jax.jit(qmodel.apply)(variables, TOKENS),
                 jax.jit(model.apply)(variables, TOKENS)) < 0.5


def test_first_matching_rule_wins_and_unmatched_layers_stay_float():
  rules = [QuantRule(path=r"block_0/attn/.*", config=None),
           QuantRule(path=r"block_0/.*", config=Int4Config(grad_mode="int4")),
           QuantRule(path=r"block_1/mlp_.*")]
  plan = int4jax.quantize_model(Model(), rules).plan(TOKENS)
  assert all(plan[f"block_0/{n}"] is None for n in LINEARS[:4])
  assert plan["block_0/mlp_in"].grad_mode == "int4"
  assert plan["block_1/mlp_in"] == Int4Config() and plan["block_1/attn/query"] is None
  assert plan["head"] is None


def test_lsq_rules_add_only_the_documented_quant_subtree():
  model = Model()
  qmodel = int4jax.quantize_model(model, config=Int4Config.paper(), exclude=[r"head"])
  params = jax.jit(qmodel.init)(jax.random.key(1), TOKENS)["params"]
  ref = jax.jit(model.init)(jax.random.key(1), TOKENS)["params"]
  assert set(params["block_0"]["mlp_in"]) == {"kernel", "bias", inn.QUANT_PARAMS}
  stripped = jax.tree_util.tree_map_with_path(lambda p, a: a, params)
  for b in ("block_0", "block_1"):
    for n in ("mlp_in", "mlp_out"):
      del stripped[b][n][inn.QUANT_PARAMS]
    for n in ("query", "key", "value", "out"):
      del stripped[b]["attn"][n][inn.QUANT_PARAMS]
  chex.assert_trees_all_equal_shapes(stripped, ref)


def test_int4_rules_context_manager_equals_the_wrapper():
  model = Model()
  variables = jax.jit(model.init)(jax.random.key(1), TOKENS)
  with inn.int4_rules(exclude=["head"]):  # traced inside the context
    y = jax.jit(model.apply)(variables, TOKENS)
  chex.assert_trees_all_equal(y, jax.jit(int4jax.quantize_model(model, exclude=["head"]).apply)(
      variables, TOKENS))


def test_bad_rules_fail_early():
  with pytest.raises(Exception, match="unterminated|missing"):
    QuantRule(path="block_0/(")
  with pytest.raises(TypeError, match="Int4Config"):
    QuantRule(config={"hadamard_block": 32})
  with pytest.raises(ValueError, match="either rules= or exclude="):
    int4jax.quantize_model(Model(), [QuantRule()], exclude=["head"])
  with pytest.raises(TypeError, match="flax"):
    int4jax.quantize_model(lambda x: x)


@pytest.mark.slow  # over 20 s: the slow run (.ci/run)
def test_scan_and_remat_over_int4_layers():
  kw = dict(vocab_size=20, num_classes=C, dim=32, num_heads=2, mlp_dim=64, num_layers=3)
  tokens = TOKENS
  scanned = EncoderClassifier(**kw, scan_layers=True)
  unrolled = EncoderClassifier(**kw, scan_layers=False)
  sp = scanned.init(jax.random.key(1), tokens)["params"]
  assert sp["layers"]["layer"]["mlp_in"]["kernel"].shape == (3, 32, 64)
  up = {k: v for k, v in sp.items() if k != "layers"}
  for i in range(3):
    up[f"layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], sp["layers"]["layer"])
  chex.assert_trees_all_close(scanned.apply({"params": sp}, tokens),
                              unrolled.apply({"params": up}, tokens), atol=1e-5)

  def loss(p):
    return cross_entropy(scanned.apply({"params": p}, tokens, rngs={"quant": jax.random.key(2)}),
                         LABELS)

  jaxpr = jax.make_jaxpr(jax.grad(loss))(sp)
  per_layer = count_linear_layers(1)
  # the scan body appears once: forward 6, backward 12, and the remat recompute of the forward
  # minus mlp_out's output (its product is not needed to differentiate it, so XLA drops it)
  assert len(integer_dots(jaxpr)) == 3 * per_layer + per_layer - 1
  chex.assert_tree_all_finite(jax.jit(jax.grad(loss))(sp))


def test_a_pattern_that_matches_no_layer_warns_or_raises_linen():
  """A typo in an exclude pattern would quantize the head silently: it warns, naming the
  pattern and the layers; strict=True raises. A pattern that matches stays quiet."""
  with pytest.warns(UserWarning, match=r"match no layer.*did you mean: head\?"):
    plan = int4jax.quantize_model(Model(), exclude=[r".*haed"]).plan(TOKENS)
  assert plan["head"] is not None  # what the typo did
  with pytest.raises(ValueError, match="haed"):
    int4jax.quantize_model(Model(), exclude=[r".*haed"], strict=True).plan(TOKENS)
  quantized = int4jax.quantize_model(Model(), exclude=[r"head"], strict=True)
  params = jax.jit(quantized.init)(jax.random.key(0), TOKENS)["params"]
  with pytest.raises(ValueError, match="blok"):  # the check also runs when apply traces
    jax.jit(int4jax.quantize_model(Model(), [QuantRule(path="blok_0/.*", config=None),
                                             QuantRule()], strict=True).apply)(
        {"params": params}, TOKENS)


def test_a_call_that_runs_part_of_the_model_does_not_warn_about_the_rest():
  """An encoder-only call traces no decoder layer; a rule for the decoder still matches the
  decoder's params, so it stays quiet, while a typo still raises."""

  class EncoderDecoder(nn.Module):
    @nn.compact
    def __call__(self, x, decode=True):
      h = nn.Dense(8, name="encoder")(x)
      return nn.Dense(4, name="decoder")(h) if decode else h

  x = jnp.ones((2, 8))
  rules = [QuantRule(path="decoder", config=None), QuantRule()]
  model = int4jax.quantize_model(EncoderDecoder(), rules, strict=True)
  params = model.init(jax.random.key(0), x)
  assert model.apply(params, x, decode=False).shape == (2, 8)
  typo = int4jax.quantize_model(EncoderDecoder(), [QuantRule(path="decodr", config=None),
                                                   QuantRule()], strict=True)
  with pytest.raises(ValueError, match="decodr"):
    typo.apply(params, x, decode=False)


def test_a_pattern_that_matches_no_layer_warns_or_raises_nnx():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.body, self.head = nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

  with pytest.warns(UserWarning, match="haed"):
    int4jax.quantize_model(Net(nnx.Rngs(0)), exclude=["haed"])
  net = Net(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"haed.*body, head"):
    int4jax.quantize_model(net, exclude=["haed"], strict=True)
  assert type(net.head) is nnx.Linear  # nothing was replaced before the error
  int4jax.quantize_model(net, exclude=["head"], strict=True)
  assert int4jax.quantization_plan(net) == {"body": Int4Config(), "head": None}


def test_error_messages_name_their_fix():
  """LSQ (the paper's config) on float params points to calibrate; a plan without an example
  input says to pass one; an NNX gradient without a key says where rngs= goes."""
  from flax import nnx
  params = Model().init(jax.random.key(0), TOKENS)["params"]
  paper = int4jax.quantize_model(Model(), exclude=["head"], config=Int4Config.paper())
  with pytest.raises(ValueError, match=r"int4jax.nn.calibrate\(model, variables, batch\)"):
    paper.apply({"params": params}, TOKENS)
  calibrated = inn.calibrate(paper, {"params": params}, TOKENS)
  assert paper.apply(calibrated, TOKENS).shape == (4, C)
  with pytest.raises(TypeError, match="pass an example input"):
    int4jax.quantization_plan(paper)
  net = nnx.Linear(8, 4, rngs=nnx.Rngs(0))

  class Net(nnx.Module):
    def __init__(self):
      self.body = net

  model = int4jax.quantize_model(Net())  # no rngs=
  with pytest.raises(ValueError, match=r"quantize_model\(model, rngs=nnx.Rngs\(quant=0\)\)"):
    nnx.grad(lambda m: m.body(jnp.ones((2, 8))).sum())(model)
