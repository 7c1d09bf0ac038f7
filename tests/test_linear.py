"""int4_linear: the INT4 op against its fake-quant reference, full precision, and JAX transforms."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import Int4Config, int4_linear, int4_linear_reference
from tests.helpers import (all_dots, cosine, integer_dots, intermediate_shapes, make_xw,
                           rel_err)

KEY = jax.random.key(42)
CONFIGS = {
    "default": Int4Config(),
    "tensor": Int4Config(scale_mode="tensor"),
    "full-range": Int4Config(int_range="full"),
    "int4-grads": Int4Config(grad_mode="int4"),
    "float-grads": Int4Config(grad_mode="float"),
    "bernoulli": Int4Config(lss="bernoulli", lss_budget=0.5),
    "systematic": Int4Config(lss="systematic", lss_budget=0.5),
    "nonzero": Int4Config(lss="nonzero"),
    "bernoulli-2-blocks": Int4Config(lss="bernoulli", lss_blocks=2),
    "systematic-2-blocks": Int4Config(lss="systematic", lss_blocks=2),
    "unfused": Int4Config(fuse_bitsplit=False),
    "no-hadamard": Int4Config(hadamard_block=1),
    "reference-backend": Int4Config(backend="reference"),
    "per-row-one-level": Int4Config(scale_levels=1),
    "g64-hq16-systematic": Int4Config(scale_group=64, hadamard_block=16, lss="systematic"),
    "g8-l4-int4-grads-full-range": Int4Config(scale_group=8, scale_levels=4, grad_mode="int4",
                                              int_range="full"),
    "tensor-two-level-clipped": Int4Config(scale_mode="tensor", scale_clip=2.5),
    "row-clipped-bernoulli": Int4Config(scale_clip=2.7, lss="bernoulli"),
    "int8-forward": Int4Config(forward_bits=8, scale_levels=1),
    "int8-forward-full-range-int4-grads": Int4Config(forward_bits=8, scale_levels=1,
                                                     int_range="full", grad_mode="int4"),
    "forward-stochastic": Int4Config(forward_rounding="stochastic"),
    "forward-stochastic-tensor-one-level": Int4Config(forward_rounding="stochastic",
                                                      scale_mode="tensor", scale_levels=1),
    "search": Int4Config(scale_search=2),
    "search-3-tensor-g32": Int4Config(scale_search=3, scale_mode="tensor", scale_group=32),
    "search-forward-stochastic": Int4Config(scale_search=2, forward_rounding="stochastic"),
}


def grads(fn, x, w, b, cot, **kw):
  def loss(x, w, b):
    return jnp.sum(fn(x, w, b, **kw) * cot)
  return jax.grad(loss, argnums=(0, 1, 2))(x, w, b)


def float_grads(x, w, b, cot):
  return jax.grad(lambda x, w, b: jnp.sum((x @ w + b[None, :]) * cot), argnums=(0, 1, 2))(x, w, b)


# The default run compares these configs at one shape; the slow run (.ci/run) every config at
# every shape, one token and odd sizes included.
DEFAULT_RUN = ("default", "tensor", "full-range", "float-grads", "systematic", "int8-forward",
               "forward-stochastic", "per-row-one-level", "systematic-2-blocks", "search")


def _reference_cases():
  for name in sorted(CONFIGS):
    for shape in [(64, 96, 48), (1, 137, 1), (50, 40, 137)]:
      if shape[0] % CONFIGS[name].lss_blocks:
        continue  # blocks must divide the tokens (tests/test_bad_input.py)
      fast = name in DEFAULT_RUN and shape == (64, 96, 48)
      yield pytest.param(name, *shape, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("name,m,k,n", list(_reference_cases()))
def test_matches_fake_quant_reference(name, m, k, n):
  config = CONFIGS[name]
  x, w = make_xw(m, k, n, seed=m + k)
  b = jnp.linspace(-1, 1, n)
  cot = jax.random.normal(jax.random.key(7), (m, n))
  y = int4_linear(x, w, b, key=KEY, config=config)
  y_ref = int4_linear_reference(x, w, b, key=KEY, config=config)
  # Same integers; only the float epilogue's order of multiplication differs.
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(y_ref))))
  got = grads(int4_linear, x, w, b, cot, key=KEY, config=config)
  want = grads(int4_linear_reference, x, w, b, cot, key=KEY, config=config)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


@pytest.mark.slow  # over 20 s: the slow run (.ci/run)
def test_lsq_matches_reference_including_scale_gradients():
  config = Int4Config.paper()
  x, w = make_xw(32, 64, 24, seed=3)
  from int4jax.quantizers import block_hadamard, lsq_init_scale
  scales = (lsq_init_scale(block_hadamard(x, 32), 7) * 1.5,  # some values clip
            lsq_init_scale(block_hadamard(w, 32, 0), 7))
  cot = jax.random.normal(jax.random.key(8), (32, 24))

  def loss(fn, x, w, scales):
    return jnp.sum(fn(x, w, key=KEY, config=config, scales=scales) * cot)

  got = jax.grad(functools.partial(loss, int4_linear), argnums=(0, 1, 2))(x, w, scales)
  want = jax.grad(functools.partial(loss, int4_linear_reference), argnums=(0, 1, 2))(x, w, scales)
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)
  assert all(float(jnp.abs(s)) > 0 for s in got[2])


@pytest.mark.parametrize("int_range,lowest", [("symmetric", -127), ("full", -128)])
def test_8bit_forward_uses_the_int8_range_and_cuts_the_error(int_range, lowest):
  """forward_bits=8 (for layers a policy keeps at 8 bits): operands span the int8 range, the
  forward error drops by well over the 16x finer grid's worth of 4 (noise ~ step size)."""
  from int4jax.linear import forward_quantize
  config = Int4Config(forward_bits=8, scale_levels=1, int_range=int_range)
  assert config.forward_qrange == (lowest, 127) and config.qrange[1] == 7  # dY keeps INT4 parts
  x, w = make_xw(256, 512, 256)
  xq, _, wq, _ = forward_quantize(x, w, config, None)
  assert xq.dtype == jnp.int8 and int(jnp.max(jnp.abs(xq))) == 127
  assert int(jnp.min(xq)) >= lowest and int(jnp.min(wq)) >= lowest
  err8 = rel_err(int4_linear(x, w, config=config), x @ w)
  err4 = rel_err(int4_linear(x, w, config=Int4Config(scale_levels=1)), x @ w)
  assert err8 < err4 / 8, (err8, err4)


def test_8bit_forward_needs_one_scale_level():
  with pytest.raises(ValueError, match="scale_levels=1"):
    Int4Config(forward_bits=8)
  with pytest.raises(ValueError, match="forward_bits"):
    Int4Config(forward_bits=6, scale_levels=1)


@pytest.mark.slow  # over 20 s: the slow run (.ci/run)
def test_forward_stochastic_rounding_is_unbiased():
  """forward_rounding='stochastic': X^ and W^ are rounded with independent unbiased noise, so the
  output's mean over keys converges to x @ w; one draw's error does not shrink. Round-to-nearest
  is deterministic, so its error is all bias."""
  config = Int4Config(forward_rounding="stochastic")
  x, w = make_xw(64, 128, 32, seed=5)
  exact = x @ w
  keys = jax.random.split(jax.random.key(3), 64)
  ys = jax.vmap(lambda k: int4_linear(x, w, key=k, config=config))(keys)
  one_draw = rel_err(ys[0], exact)
  mean_err = rel_err(jnp.mean(ys, axis=0), exact)
  nearest_err = rel_err(int4_linear(x, w), exact)
  assert mean_err < one_draw / 4, (mean_err, one_draw)  # 1/sqrt(64) = 1/8 for pure noise
  assert mean_err < nearest_err / 4, (mean_err, nearest_err)
  assert not np.array_equal(ys[0], ys[1])


def test_forward_stochastic_rounding_without_a_key_rounds_to_nearest():
  """Evaluation (no key, e.g. no 'quant' rng) rounds to nearest; a gradient without a key raises
  and names the setting that draws."""
  x, w = make_xw(16, 64, 8, seed=2)
  stochastic = Int4Config(forward_rounding="stochastic", grad_mode="float")
  np.testing.assert_array_equal(int4_linear(x, w, config=stochastic),
                                int4_linear(x, w, config=stochastic.replace(
                                    forward_rounding="nearest")))
  with pytest.raises(ValueError, match="forward_rounding='stochastic'"):
    jax.grad(lambda w: int4_linear(x, w, config=stochastic).sum())(w)


def test_forward_stochastic_rounding_is_refused_with_lsq():
  with pytest.raises(ValueError, match="forward_rounding='nearest'"):
    Int4Config.paper(forward_rounding="stochastic")
  with pytest.raises(ValueError, match="forward_rounding"):
    Int4Config(forward_rounding="dither")


def test_forward_error_on_gaussian_data_is_small():
  x, w = make_xw(256, 512, 256)
  err = rel_err(int4_linear(x, w), x @ w)
  assert err < 0.25, err


@pytest.mark.parametrize("magnitude,max_ratio", [(20, 0.6), (100, 0.8)])
def test_hadamard_beats_plain_per_tensor_rtn_on_outlier_channels(magnitude, max_ratio):
  """8 of 512 activation channels scaled up: HQ's output error is clearly below plain RTN's.

  Measured (seed 0): x20: 0.21 vs 0.42; x100: 0.18 vs 0.24. At x100 the gain is smaller: one
  scale per row cannot serve a 100x channel and the normal ones, with or without Hadamard.
  """
  x, w = make_xw(256, 512, 256, outliers=True, outlier_scale=magnitude)
  exact = x @ w
  err_hq = rel_err(int4_linear(x, w), exact)
  plain = Int4Config(hadamard_block=1, scale_mode="tensor", scale_levels=1)
  err_rtn = rel_err(int4_linear(x, w, config=plain), exact)
  assert err_hq < max_ratio * err_rtn, (err_hq, err_rtn)


@pytest.mark.parametrize("name,min_cos", [("default", 0.97), ("int4-grads", 0.9),
                                           ("float-grads", 0.97), ("bernoulli", 0.9),
                                           ("systematic", 0.9), ("per-row-one-level", 0.97)])
def test_gradients_close_to_full_precision(name, min_cos):
  """Token gradients of unequal size (as in real training), where sampling half the rows by
  leverage score keeps the gradient direction. See the next test for equal rows."""
  x, w = make_xw(256, 256, 128, seed=1)
  b = jnp.zeros(128)
  row_size = jnp.exp(1.5 * jax.random.normal(jax.random.key(10), (256, 1)))
  cot = jax.random.normal(jax.random.key(9), (256, 128)) * row_size
  got = grads(int4_linear, x, w, b, cot, key=KEY, config=CONFIGS[name])
  want = float_grads(x, w, b, cot)
  for g, r in zip(got, want):
    chex.assert_tree_all_finite(g)
    assert cosine(g, r) > min_cos, (name, cosine(g, r))
  np.testing.assert_allclose(got[2], want[2], rtol=1e-5)  # dbias stays float


def test_sampling_half_of_equal_rows_costs_gradient_accuracy():
  """With equal row norms every p is 0.5: dW's variance is about its own size (cosine ~0.7),
  which is why sampling is opt-in (Int4Config.lss) rather than the default."""
  x, w = make_xw(256, 256, 128, seed=1)
  cot = jax.random.normal(jax.random.key(9), (256, 128))
  dw = lambda c: jax.vjp(lambda w: int4_linear(x, w, key=KEY, config=c), w)[1](cot)[0]
  exact = x.T @ cot
  cos_off, cos_lss = cosine(dw(Int4Config()), exact), cosine(dw(CONFIGS["bernoulli"]), exact)
  assert cos_off > 0.97 and 0.5 < cos_lss < 0.85, (cos_off, cos_lss)


@pytest.mark.parametrize("lss,levels,zero_rows,blocks", [
    (lss, 16, zero_rows, 1) for lss in ("off", "nonzero", "bernoulli", "systematic")
    for zero_rows in (0, 44)] + [("bernoulli", 1, 44, 1), ("systematic", 1, 44, 1),
                                 ("bernoulli", 16, 44, 4), ("systematic", 16, 44, 4),
                                 ("bernoulli", 16, 0, 4), ("systematic", 16, 0, 4)])
def test_dw_is_unbiased_over_keys(lss, levels, zero_rows, blocks):
  """E over keys of dW (stochastic bit split + sampling) = the unquantized-dY estimator, also on
  a padded batch: 44 of 64 dY rows exactly zero, fewer non-zero rows than the budget of 16. With
  4 blocks of 16 rows (per-block budgets of 4) and padding, two blocks are all padding and one
  has 4 rows; without, every block samples 4 of its 16 rows (row norms vary by key 11)."""
  x, w = make_xw(64, 32, 16, seed=5)
  cot = jax.random.normal(jax.random.key(10), (64, 16)) * jnp.exp(
      jax.random.normal(jax.random.key(11), (64, 1)))
  cot = cot.at[64 - zero_rows:].set(0.0)
  config = Int4Config(lss=lss, lss_budget=0.25, scale_levels=levels, scale_group=8,
                      lss_blocks=blocks)
  float_grads_config = config.replace(grad_mode="float", lss="off")
  target = jax.vjp(lambda w: int4_linear(x, w, config=float_grads_config), w)[1](cot)[0]
  n = 4000
  keys = jax.random.split(jax.random.key(12), n)
  draws = jax.jit(jax.vmap(
      lambda k: jax.vjp(lambda w: int4_linear(x, w, key=k, config=config), w)[1](cot)[0]))(keys)
  var = float(jnp.sum(jnp.var(draws, 0)))
  err = float(jnp.sum((draws.mean(0) - target) ** 2))
  ratio = float(jnp.sum(draws.mean(0) * target) / jnp.sum(target * target))
  assert err < 4 * var / n + 1e-10 * float(jnp.sum(target ** 2)), (err, var / n, ratio)


@pytest.mark.slow  # over 20 s: the slow run (.ci/run)
def test_fused_and_two_int4_gemm_bit_split_are_identical():
  x, w = make_xw(48, 64, 40)
  cot = jax.random.normal(jax.random.key(13), (48, 40))
  fused = grads(int4_linear, x, w, jnp.zeros(40), cot, key=KEY, config=Int4Config())
  split = grads(int4_linear, x, w, jnp.zeros(40), cot, key=KEY,
                config=Int4Config(fuse_bitsplit=False))
  chex.assert_trees_all_equal(fused, split)


@pytest.mark.parametrize("config", [Int4Config(), Int4Config(scale_levels=1),
                                    Int4Config(scale_group=32, lss="systematic")])
def test_grad_jaxpr_has_three_integer_gemms(config):
  """One int8 x int8 -> int32 GEMM per product for every scale setting, and no per-group partial
  products: no value is larger than the biggest operand or output (a (G, M, N) stack would be)."""
  m, k, n = 32, 128, 48
  x, w = make_xw(m, k, n)
  loss = lambda x, w: jnp.sum(int4_linear(x, w, key=KEY, config=config) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)
  int_dots = integer_dots(jaxpr)
  assert len(int_dots) == 3, [str(e) for e in all_dots(jaxpr)]
  largest = max(math.prod(s) for s in intermediate_shapes(jaxpr))
  assert largest <= max(m * k, k * n, m * n), largest
  # The float dot_generals left are the 32-wide Hadamard blocks, never the big product.
  for eqn in all_dots(jaxpr):
    if eqn not in int_dots:
      assert eqn.invars[1].aval.shape == (32, 32) or eqn.invars[0].aval.shape == (32, 32)


def _fused_computations(hlo: str):
  """The bodies of the fused computations in a compiled HLO module's text."""
  return [block for block in hlo.split("\n\n") if block.lstrip().startswith("%fused_")]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion and dot layouts")
@pytest.mark.parametrize("config", [Int4Config(), Int4Config(scale_levels=1),
                                    Int4Config(lss="systematic")])
def test_cpu_backward_copies_the_int8_operand_instead_of_requantizing_it(config):
  """dW's GEMM needs Xq transposed (XLA:CPU's int8 dot is slow when the lhs contracts its first
  dim). The copy must read the int8 Xq: a fusion that transposes while rounding recomputes the
  quantizer in column order, the largest cost of the backward after the GEMMs. And no int8 dot
  may be left with its lhs contracting dim 0."""
  x, w = make_xw(512, 256, 128)
  loss = lambda x, w: jnp.sum(int4_linear(x, w, key=KEY, config=config) ** 2)
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  fused = _fused_computations(hlo)
  assert fused, "no fused computations found in the compiled HLO"
  for body in fused:
    rounds = "round-nearest-even(" in body or "floor(" in body
    int8_transpose = any(" = s8[" in line and " transpose(" in line for line in body.splitlines())
    assert not (rounds and int8_transpose), body
  slow = [line for line in hlo.splitlines()
          if " dot(" in line and "s8[" in line and "lhs_contracting_dims={0}" in line]
  assert not slow, slow


class TestTransforms(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_no_jit_agree(self):
    x, w = make_xw(16, 64, 8)
    fn = self.variant(lambda x, w, k: jax.grad(
        lambda x, w: jnp.sum(jnp.tanh(int4_linear(x, w, key=k))), argnums=(0, 1))(x, w))
    got = fn(x, w, KEY)
    want = jax.grad(lambda x, w: jnp.sum(jnp.tanh(int4_linear_reference(x, w, key=KEY))),
                    argnums=(0, 1))(x, w)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)

  @pytest.mark.slow  # over 20 s: the slow run (.ci/run)
  def test_vmap_equals_loop(self):
    xs = jax.random.normal(jax.random.key(1), (3, 10, 64))
    _, w = make_xw(10, 64, 8)
    cot = jnp.ones((10, 8))
    fn = lambda x, w: jax.vjp(lambda x, w: int4_linear(x, w, key=KEY), x, w)[1](cot)
    batched = jax.vmap(fn, in_axes=(0, None))(xs, w)
    looped = [fn(x, w) for x in xs]
    for i, one in enumerate(looped):
      # Equal up to float32 summation order in the batched Hadamard matmuls.
      chex.assert_trees_all_close(jax.tree.map(lambda t: t[i], batched), one, rtol=1e-5,
                                  atol=1e-5)

  def test_grad_through_scan_and_checkpoint(self):
    x, w = make_xw(8, 32, 32)
    keys = jax.random.split(KEY, 4)

    def loss(w, remat):
      layer = lambda h, k: (jnp.tanh(int4_linear(h, w, key=k)), None)
      layer = jax.checkpoint(layer) if remat else layer
      h, _ = jax.lax.scan(layer, x, keys)
      return jnp.sum(h ** 2)

    g_plain = jax.grad(loss)(w, False)
    g_remat = jax.jit(jax.grad(loss), static_argnums=1)(w, True)
    chex.assert_tree_all_finite(g_plain)
    chex.assert_trees_all_close(g_plain, g_remat, rtol=1e-5, atol=1e-6)
    g_float = jax.grad(lambda w: jnp.sum(jax.lax.scan(
        lambda h, _: (jnp.tanh(h @ w), None), x, keys)[0] ** 2))(w)
    assert cosine(g_plain, g_float) > 0.9

  def test_same_key_same_bits_other_key_other_noise(self):
    x, w = make_xw(32, 64, 16)
    g = lambda k: jax.grad(lambda w: jnp.sum(int4_linear(x, w, key=k) ** 2))(w)
    chex.assert_trees_all_equal(g(KEY), g(KEY))
    assert bool(jnp.any(g(KEY) != g(jax.random.key(1))))
    raw = jax.random.PRNGKey(3)  # legacy uint32 keys work too
    chex.assert_tree_all_finite(g(raw))


def test_multi_dim_batch_and_dtypes():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 64))
  _, w = make_xw(1, 64, 24)
  y = int4_linear(x, w)
  assert y.shape == (2, 3, 5, 24)
  for dtype in (jnp.bfloat16, jnp.float16):
    yd = int4_linear(x.astype(dtype), w.astype(dtype))
    assert yd.dtype == dtype
    assert rel_err(yd, x @ w) < 0.25
    gx, gw = jax.grad(lambda x, w: jnp.sum(int4_linear(x, w, key=KEY).astype(jnp.float32)),
                      argnums=(0, 1))(x.astype(dtype), w.astype(dtype))
    assert gx.dtype == dtype and gw.dtype == dtype
    chex.assert_tree_all_finite((gx, gw))
