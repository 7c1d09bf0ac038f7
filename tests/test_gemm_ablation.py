"""The GEMM ablation (experiments.gemm_ablation) quantizes exactly the GEMMs it names: with every
part it is the float reference of the INT4 op, with one part that GEMM matches the reference's
and every other GEMM is the float one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import gemm_ablation
from experiments.gemm_ablation import AblatedModel, ablated_matmul
from int4jax import Int4Config
from int4jax.reference import int4_linear_reference

CONFIG = Int4Config()
X = jax.random.normal(jax.random.key(0), (24, 40))  # K = 40: zero-padded to 64
W = jax.random.normal(jax.random.key(1), (40, 12)) * 0.2
DY = jax.random.normal(jax.random.key(2), (24, 12))
KEY = jax.random.key(3)


def _vjp(f):
  @jax.jit
  def run(x, w, dy):
    y, pull = jax.vjp(f, x, w)
    return (y,) + pull(dy)
  return run(X, W, DY)


def _ablated(parts):
  return _vjp(lambda x, w: ablated_matmul(x, w, KEY, tuple(sorted(parts)), CONFIG))


REF = _vjp(lambda x, w: int4_linear_reference(x, w, key=KEY, config=CONFIG))
FLOAT = _vjp(lambda x, w: jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST))
close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5,
                                                atol=2e-5)


def test_every_part_is_the_int4_reference():
  for ours, ref in zip(_ablated(gemm_ablation.PARTS), REF):
    close(ours, ref)


def test_the_int4_reference_is_far_from_float():  # so the tests below can tell them apart
  for ref, fl in zip(REF, FLOAT):
    assert np.abs(np.asarray(ref - fl)).max() > 1e-2


@pytest.mark.parametrize("part,index", [("dx", 1), ("dw", 2)])
def test_one_backward_part_is_that_gemm_of_the_reference_and_float_elsewhere(part, index):
  ours = _ablated({part})
  for i in range(3):
    close(ours[i], REF[i] if i == index else FLOAT[i])


def test_the_forward_parts_change_the_output_only():
  both = _ablated({"fwd_x", "fwd_w"})
  close(both[0], REF[0])
  for part in ("fwd_x", "fwd_w"):
    y, dx, dw = _ablated({part})
    assert np.abs(np.asarray(y - FLOAT[0])).max() > 1e-2  # quantized
    assert not np.allclose(np.asarray(y), np.asarray(REF[0]), atol=1e-3)  # but not both
    close(dx, FLOAT[1])
    close(dw, FLOAT[2])


def test_bad_parts_and_unsupported_configs_raise():
  with pytest.raises(ValueError, match="subset"):
    ablated_matmul(X, W, KEY, ("fwd",), CONFIG)
  with pytest.raises(ValueError, match="lss='off'"):
    ablated_matmul(X, W, KEY, ("dw",), Int4Config.paper())
  with pytest.raises(ValueError, match="forward_rounding='nearest'"):
    ablated_matmul(X, W, KEY, ("fwd_x",), Int4Config(forward_rounding="stochastic"))
  with pytest.raises(ValueError, match="needs a key"):
    jax.grad(lambda w: jnp.sum(ablated_matmul(X, w, None, ("dx",), CONFIG)))(W)


def test_the_model_wrapper_ablates_every_dense_but_the_excluded_head():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(5, name="head")(nn.gelu(nn.Dense(40, name="body")(x)))

  x = X[:, None, :]  # a leading batch dim: the wrapper flattens and restores it
  params = Net().init(jax.random.key(4), x)
  model = AblatedModel(Net(), ("fwd_x", "fwd_w"), exclude=("head",))
  assert jax.tree.structure(model.init(jax.random.key(4), x)) == jax.tree.structure(params)
  body = params["params"]["body"]
  h = ablated_matmul(X, body["kernel"], None, ("fwd_w", "fwd_x"), CONFIG) + body["bias"][None]
  head = params["params"]["head"]
  expected = nn.gelu(h) @ head["kernel"] + head["bias"][None]
  close(jax.jit(model.apply)(params, x)[:, 0], expected)
  loss = lambda p: jnp.sum(AblatedModel(Net(), ("dx", "dw"), exclude=("head",)).apply(
      p, x, rngs={"quant": KEY}))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(jax.jit(jax.grad(loss))(params)))
