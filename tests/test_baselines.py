"""The bf16 and FP8 speed baselines (experiments.baselines): their GEMMs run on the formats they
claim, stay close to float32, and replace exactly the layers the INT4 variants quantize."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from experiments import baselines, tasks, train
from experiments.configs import get_config
from tests import experiment_fixtures as fx
from tests.helpers import make_xw, rel_err


def _dot_operand_dtypes(jaxpr):
  """[(lhs dtype, rhs dtype)] of every dot_general, sub-jaxprs included."""
  import jax.extend as jex
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for sub in jex.core.jaxprs_in_params(eqn.params):
      found += _dot_operand_dtypes(sub)
  return found


@pytest.mark.parametrize("kind,fwd_tol,grad_tol", [("bf16", 0.01, 0.01), ("fp8", 0.08, 0.15)])
def test_the_gemms_use_their_format_and_stay_close_to_float32(kind, fwd_tol, grad_tol):
  matmul = baselines._MATMULS[kind]
  x, w = make_xw(64, 128, 48)
  cot = jax.random.normal(jax.random.key(3), (64, 48))
  assert rel_err(matmul(x, w), x @ w) < fwd_tol
  got = jax.grad(lambda x, w: jnp.sum(matmul(x, w) * cot), argnums=(0, 1))(x, w)
  assert rel_err(got[0], cot @ w.T) < grad_tol and rel_err(got[1], x.T @ cot) < grad_tol
  dtypes = _dot_operand_dtypes(jax.make_jaxpr(
      jax.grad(lambda x, w: jnp.sum(matmul(x, w) * cot), argnums=(0, 1)))(x, w).jaxpr)
  if kind == "bf16":
    assert dtypes and all(d == "bfloat16" for pair in dtypes for d in pair), dtypes
  else:  # forward e4m3 x e4m3; backward e5m2 dY against the saved e4m3 operands
    assert sorted(dtypes) == sorted([("float8_e4m3fn", "float8_e4m3fn"),
                                     ("float8_e5m2", "float8_e4m3fn"),
                                     ("float8_e4m3fn", "float8_e5m2")]), dtypes


@pytest.mark.parametrize("kind", baselines.BASELINES)
def test_gradients_come_back_in_the_inputs_dtypes(kind):
  x, w = make_xw(8, 32, 4)
  dx, dw = jax.grad(lambda x, w: jnp.sum(baselines._MATMULS[kind](x, w)), argnums=(0, 1))(
      x.astype(jnp.bfloat16), w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32


def test_fp8_of_zeros_is_zeros_not_nan():
  zeros = jnp.zeros((4, 16))
  w = jnp.ones((16, 8))
  y, grads = jax.value_and_grad(lambda x: jnp.sum(baselines.fp8_matmul(x, w)))(zeros)
  assert float(y) == 0.0 and bool(jnp.all(jnp.isfinite(grads)))


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
  data_dir = fx.build_shakespeare(str(tmp_path_factory.mktemp("baselines")))
  config = get_config("shakespeare").replace(
      data_dir=data_dir, vocab_size=300, seq_len=16, num_layers=1, hidden_size=32, num_heads=2,
      batch_size=4)
  task = tasks.task_for(config)
  return config, task, task.load(config)


@pytest.mark.parametrize("kind,dtype", [("bf16", "bfloat16"), ("fp8", "float8_e4m3fn")])
def test_a_baseline_variant_runs_the_block_layers_in_its_format_and_keeps_the_head(lm, kind,
                                                                                     dtype):
  """The GPT's 6 block layers (q, k, v, output, fc, proj) run as `kind` GEMMs in the train
  step's forward; the float lm_head and the attention's own contractions stay float32; the
  param tree is the float model's."""
  config, task, data = lm
  model = train.build_model(task, config, data, kind)
  float_model = train.build_model(task, config, data, "fp32")
  (tokens,) = task.model_inputs(task.train_batch(config, data, 0, 0))
  params = float_model.init(jax.random.key(0), tokens)
  assert (jax.tree.structure(model.init(jax.random.key(0), tokens))
          == jax.tree.structure(params))
  pairs = _dot_operand_dtypes(jax.make_jaxpr(lambda p: model.apply(p, tokens))(params).jaxpr)
  assert sum(pair == (dtype, dtype) for pair in pairs) == 6, pairs
  assert sum(pair == ("float32", "float32") for pair in pairs) == 3, pairs  # QK^T, PV, head
  y, y_float = model.apply(params, tokens), float_model.apply(params, tokens)
  assert rel_err(y, y_float) < (0.02 if kind == "bf16" else 0.2)


def test_a_baseline_refuses_a_layer_it_does_not_cover():
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.DenseGeneral((2, 4), name="proj")(nn.Dense(8, name="fc")(x))

  x = jnp.ones((2, 8))
  wrapped = baselines.LowPrecisionModel(Model(), "bf16")
  params = Model().init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="proj is a DenseGeneral: exclude it"):
    wrapped.apply(params, x)
  assert wrapped.clone(exclude=("proj",)).apply(params, x).shape == (2, 2, 4)
