"""Contractions a module writes itself, `lax.dot_general(x, self.weight)` (Hugging Face-style
Conv1D) and `jnp.einsum(spec, x, self.kernel)` (MaxText-style DenseGeneral), become INT4 by
rules on the module's path: listed in the plan, three integer GEMMs each in a training step,
forward equal to the op; contractions without a weight are logged as skipped and stay float."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import int4jax
from int4jax import Int4Config, QuantRule
from tests.helpers import integer_dots, rel_err


class Conv1D(nn.Module):  # GPT-2's Conv1D: y = x W + b, W (in, out)
  features: int

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.initializers.normal(0.2), (x.shape[-1], self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ()))) + b[None, None]


class HeadsProjection(nn.Module):  # MaxText-style DenseGeneral to (heads, head_dim) by einsum
  heads: int
  head_dim: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.normal(0.2),
                        (x.shape[-1], self.heads, self.head_dim))
    return jnp.einsum("btd,dhk->bthk", x, kernel)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    q = HeadsProjection(2, 16, name="q_proj")(x)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, q)  # activations only: not a weight GEMM
    mixed = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores), q).reshape(x.shape)
    return Conv1D(32, name="c_proj")(mixed)


X = jax.random.normal(jax.random.key(0), (2, 8, 32))


def _model(rules=None, **kw):
  return int4jax.quantize_model(Block(), rules, intercept_raw=True, **kw)


def test_the_plan_lists_the_weight_contractions_by_module_path():
  plan = _model().plan(X)
  assert plan == {"q_proj": Int4Config(), "c_proj": Int4Config()}
  excluded = _model(exclude=["c_proj"]).plan(X)
  assert excluded == {"q_proj": Int4Config(), "c_proj": None}


def test_a_training_step_runs_three_integer_gemms_per_contraction():
  model = _model()
  params = jax.jit(model.init)(jax.random.key(1), X)["params"]
  loss = lambda p: jnp.sum(model.apply({"params": p}, X, rngs={"quant": jax.random.key(2)}) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss))(params)
  assert len(integer_dots(jaxpr)) == 3 * 2
  grads = jax.jit(jax.grad(loss))(params)
  float_grads = jax.jit(jax.grad(lambda p: jnp.sum(Block().apply({"params": p}, X) ** 2)))(
      params)
  assert rel_err(grads["c_proj"]["weight"], float_grads["c_proj"]["weight"]) < 0.3
  assert jax.lax.dot_general.__name__ == "dot_general"  # restored after the trace


def test_the_forward_equals_the_op_on_the_same_operands():
  model = _model([QuantRule(path="q_proj", config=None), QuantRule()])
  params = jax.jit(model.init)(jax.random.key(1), X)["params"]
  captured = {}

  class Spy(nn.Module):  # the float model, recording c_proj's input
    @nn.compact
    def __call__(self, x):
      q = HeadsProjection(2, 16, name="q_proj")(x)
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, q)
      mixed = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores), q).reshape(x.shape)
      captured["x"] = mixed
      return Conv1D(32, name="c_proj")(mixed)

  Spy().apply({"params": params}, X)
  w = params["c_proj"]["weight"]
  expected = int4jax.int4_linear(captured["x"].reshape(-1, 32), w).reshape(2, 8, 32)
  np.testing.assert_array_equal(model.apply({"params": params}, X),
                                expected + params["c_proj"]["bias"][None, None])


# the root's rule matches only the weightless contraction, no layer: that warning is expected
@pytest.mark.filterwarnings("ignore:.*match no layer")
def test_contractions_without_a_weight_are_logged_once_at_info_and_stay_float(caplog, monkeypatch):
  """Attention's QK^T and PV are expected to stay float: one INFO line per model, no WARNING."""
  from int4jax.nn import raw_contractions
  monkeypatch.setattr(raw_contractions, "_skipped", set())  # "once" is per process
  monkeypatch.setattr(raw_contractions, "_reported", set())
  model = _model([QuantRule(path="", config=Int4Config()), QuantRule(config=None)])
  with caplog.at_level(logging.INFO, logger="int4jax"):
    params = model.init(jax.random.key(1), X)["params"]
    out = model.apply({"params": params}, X)
    model.apply({"params": params}, X)
  skipped = [r for r in caplog.records if "float" in r.getMessage()]
  assert len(skipped) == 1 and skipped[0].levelno == logging.INFO
  assert "activations only" in skipped[0].getMessage()
  np.testing.assert_array_equal(out, Block().apply({"params": params}, X))


@pytest.mark.filterwarnings("ignore:.*match no layer")
def test_the_plan_lists_skipped_contractions_with_the_reason():
  plan = int4jax.plan(_model([QuantRule(path="", config=Int4Config()), QuantRule(config=None)]), X)
  assert plan == {"q_proj": None, "c_proj": None}
  assert set(plan.skipped) == {""} and "activations only" in plan.skipped[""]
  assert "<root>: skipped, stays float: 2 contractions: activations only" in plan.describe()


def test_flax_attention_lists_its_projections_int4_and_its_score_contractions_skipped():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=32, name="attn")(x)

  plan = int4jax.plan(int4jax.quantize_model(Net(), intercept_raw=True), X)
  assert {p for p, c in plan.items() if c is not None} == {
      f"attn/{n}" for n in ("query", "key", "value", "out")}
  assert set(plan.skipped) == {"attn"}  # QK^T and PV: no weight operand
  lines = plan.describe().splitlines()
  assert "attn/query: INT4 (hadamard_block=32, scale_mode=row, scale_levels=16, " \
      "grad_mode=bitsplit)" in lines
  assert any(line.startswith("attn: skipped, stays float: ") for line in lines)


def test_a_config_with_quantizer_state_names_the_fix():
  model = _model(config=Int4Config(hadamard_block="search"))
  with pytest.raises(ValueError, match="cannot hold quantizer state"):
    model.init(jax.random.key(1), X)


def test_it_is_on_by_default():
  """Qwix-style: a module's own contractions on its params are INT4 without a flag."""
  plan = int4jax.plan(int4jax.quantize_model(Block()), X)
  assert {p for p, c in plan.items() if c is not None} == {"q_proj", "c_proj"}


@pytest.mark.filterwarnings("ignore:.*match no layer")  # Block has no Dense layer: expected
def test_intercept_raw_false_leaves_them_float():
  """With intercept_raw=False, a module's own contractions stay float, as they were before."""
  model = int4jax.quantize_model(Block(), intercept_raw=False)
  assert model.plan(X) == {}
  params = model.init(jax.random.key(1), X)["params"]
  np.testing.assert_array_equal(model.apply({"params": params}, X),
                                Block().apply({"params": params}, X))
