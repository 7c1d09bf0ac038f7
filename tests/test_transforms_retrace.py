"""A quantized model gives its own config's numbers under every Flax transform, whatever ran
before it in the process: a float model, then config A, then config B must give B's numbers for
B (never a cached trace of the float model or of A), for linen's nn.jit, nn.remat, nn.scan and
nn.vmap and NNX's nnx.jit, nnx.remat, nnx.scan and nnx.vmap. Each case is checked against B run
first in a process-fresh state (jax.clear_caches()), bit for bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import int4jax
from int4jax import Int4Config
from tests.helpers import rel_err

A = Int4Config()  # INT4 forward
B = Int4Config(forward_bits=8, scale_levels=1)  # an 8-bit forward: far closer to float
X = jax.random.normal(jax.random.key(0), (2, 8, 32))


class RawEinsum(nn.Module):  # gemma-style: its own module, jnp.einsum on its param
  shape: tuple

  @nn.compact
  def __call__(self, eqn, x):
    return jnp.einsum(eqn, x, self.param("w", nn.initializers.normal(0.2), self.shape))


def _block(x):  # a Dense layer and a raw weight einsum, inside a compact method
  h = jax.nn.gelu(nn.Dense(64, name="up")(x))
  return x + RawEinsum((64, 32), name="down")("...d,df->...f", h)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _block(x)


class JitCallBlock(nn.Module):  # gemma wraps Transformer.__call__ in nn.jit like this
  @nn.jit
  @nn.compact
  def __call__(self, x):
    return _block(x)


class Scanned(nn.Module):
  @nn.compact
  def __call__(self, x):
    stack = nn.scan(lambda block, carry, _: (block(carry), None),
                    variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    return stack(Block(name="blocks"), x, None)[0]


LINEN = {
    "nn.jit": lambda: nn.jit(Block)(),
    "nn.jit on __call__": JitCallBlock,
    "nn.remat": lambda: nn.remat(Block)(),
    "nn.scan": Scanned,
    "nn.vmap": lambda: nn.vmap(Block, variable_axes={"params": None},
                               split_rngs={"params": False})(),
}


def _apply(model, config, params, x=X):
  return int4jax.quantize_model(model, config=config, intercept_raw=True).apply(params, x)


# over 15 s each on 2 busy cores (eager applies under four interceptions): the slow run
# (.ci/run); the jit cases, gemma's, run by default
_SLOW = {"nn.remat", "nn.scan", "nn.vmap", "nnx.remat", "nnx.vmap"}
_params = lambda names: [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n
                         for n in sorted(names)]


@pytest.mark.parametrize("transform", _params(LINEN))
def test_linen_float_then_a_then_b_gives_b(transform):
  model = LINEN[transform]()
  params = model.init(jax.random.key(1), X)
  float_out = model.apply(params, X)
  out_a = _apply(model, A, params)
  out_b = _apply(model, B, params)
  plan_b = int4jax.plan(int4jax.quantize_model(model, config=B, intercept_raw=True), X)
  jax.clear_caches()
  fresh_b = _apply(model, B, params)
  np.testing.assert_array_equal(out_b, fresh_b)
  assert rel_err(out_b, float_out) < 0.5 * rel_err(out_a, float_out)  # B is not A
  assert plan_b and set(plan_b.values()) == {B}


def test_linen_separate_outer_jits_each_trace_their_config():
  model = JitCallBlock()
  params = model.init(jax.random.key(1), X)
  float_out = model.apply(params, X)
  jax.jit(model.apply)(params, X)
  qa = int4jax.quantize_model(model, config=A, intercept_raw=True)
  qb = int4jax.quantize_model(model, config=B, intercept_raw=True)
  out_a = jax.jit(qa.apply)(params, X)
  out_b = jax.jit(qb.apply)(params, X)
  jax.clear_caches()
  np.testing.assert_array_equal(out_a, jax.jit(qa.apply)(params, X))
  np.testing.assert_array_equal(out_b, jax.jit(qb.apply)(params, X))
  assert rel_err(out_b, float_out) < 0.5 * rel_err(out_a, float_out)


def test_linen_plan_after_a_float_init_lists_the_layers():
  """The reported case: a float init of an nn.jit-wrapped model, then a plan."""
  model = JitCallBlock()
  model.init(jax.random.key(1), X)
  quantized = int4jax.quantize_model(model, intercept_raw=True)
  assert int4jax.plan(quantized, X) == {"up": Int4Config(), "down": Int4Config()}
  assert int4jax.plan(quantized, X) == {"up": Int4Config(), "down": Int4Config()}  # again


def test_linen_int4_rules_context_is_part_of_the_trace_key():
  model = JitCallBlock()
  params = model.init(jax.random.key(1), X)
  float_out = model.apply(params, X)
  with int4jax.nn.int4_rules(config=A, intercept_raw=True):
    out_a = model.apply(params, X)
  assert rel_err(out_a, float_out) > 1e-3
  np.testing.assert_array_equal(model.apply(params, X), float_out)  # float again outside


def test_linen_repeated_calls_under_nn_jit_raise_no_false_typo_warning(recwarn):
  """A call that replays a cached trace visits no layer; the rules still match."""
  model = JitCallBlock()
  params = model.init(jax.random.key(1), X)
  # the raw einsum's param is "w", not "kernel": only a trace tells that "down" is a layer
  quantized = int4jax.quantize_model(model, [int4jax.QuantRule(path="down")], intercept_raw=True)
  quantized.apply(params, X)
  quantized.apply(params, X)
  assert not [w for w in recwarn if "match no layer" in str(w.message)]


# ---- NNX: quantize_model changes the model in place --------------------------------------------


class NnxBlock(nnx.Module):
  def __init__(self, rngs):
    self.up = nnx.Linear(32, 64, rngs=rngs)
    self.down = nnx.Linear(64, 32, rngs=rngs)

  def __call__(self, x):
    return x + self.down(jax.nn.gelu(self.up(x)))


def _nnx_stack(seed):
  @nnx.split_rngs(splits=2)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return NnxBlock(rngs)

  return create(nnx.Rngs(seed))


@nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
def _scan_blocks(block, x):
  return block(x)


NNX = {
    "nnx.jit": (lambda seed: NnxBlock(nnx.Rngs(seed)), nnx.jit(lambda m, x: m(x))),
    "nnx.remat": (lambda seed: NnxBlock(nnx.Rngs(seed)), nnx.remat(lambda m, x: m(x))),
    "nnx.scan": (_nnx_stack, nnx.jit(_scan_blocks)),
    "nnx.vmap": (lambda seed: NnxBlock(nnx.Rngs(seed)),
                 nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))),
}


@pytest.mark.parametrize("transform", _params(NNX))
def test_nnx_float_then_a_then_b_gives_b(transform):
  make, run = NNX[transform]
  model = make(0)
  float_out = run(model, X)
  int4jax.quantize_model(model, config=A)
  out_a = run(model, X)
  int4jax.quantize_model(model, config=B)  # re-quantized in place: B's config, A's gone
  out_b = run(model, X)
  assert set(int4jax.plan(model).values()) == {B}
  jax.clear_caches()
  fresh = make(0)
  int4jax.quantize_model(fresh, config=B)
  np.testing.assert_array_equal(out_b, run(fresh, X))
  assert rel_err(out_b, float_out) < 0.5 * rel_err(out_a, float_out)


def test_nnx_requantizing_to_float_in_place_raises_naming_the_fix():
  model = NnxBlock(nnx.Rngs(0))
  int4jax.quantize_model(model, config=A)
  with pytest.raises(ValueError, match="nnx.clone"):
    int4jax.quantize_model(model, exclude=["down"])


def test_nnx_layers_int4_by_construction_keep_their_own_config():
  model = NnxBlock(nnx.Rngs(0))
  model.down = int4jax.nnx.Linear(64, 32, config=B, rngs=nnx.Rngs(1))
  int4jax.quantize_model(model, config=A)
  assert int4jax.plan(model) == {"up": A, "down": B}
