"""Two-level scales: what int4_linear's forward quantizer guarantees, including awkward inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import Int4Config, int4_linear
from int4jax.kernels.int_gemm import max_exact_contraction
from int4jax.quantizers import int4_quant, two_level
from tests.helpers import make_xw, rel_err


def _varied_rows(m=37, k=96, seed=0):
  """Rows whose 16-element groups differ in magnitude by up to ~50x (as after a Hadamard of
  activations with a few large channels)."""
  kx, ks = jax.random.split(jax.random.key(seed))
  group_scale = jnp.exp(2.0 * jax.random.normal(ks, (m, k // 16, 1)))
  return (jax.random.normal(kx, (m, k // 16, 16)) * group_scale).reshape(m, k)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("qrange", [(-7, 7), (-8, 7)])
def test_one_level_is_plain_absmax_bit_for_bit(axis, qrange):
  x = _varied_rows()
  x = x if axis == 1 else x.T
  q, s = two_level.quantize_two_level(x, axis, *qrange, levels=1)
  q_ref, s_ref = int4_quant.quantize_absmax(x, *qrange, axis)
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_array_equal(s, s_ref)


@pytest.mark.parametrize("levels,group", [(16, 16), (8, 16), (16, 32), (18, 8)])
def test_nothing_clips_and_the_error_is_half_a_group_step(levels, group):
  x = _varied_rows(k=128)
  q, s = two_level.quantize_two_level(x, 1, -7, 7, group=group, levels=levels)
  assert q.dtype == jnp.int8 and s.shape == (x.shape[0], 1)
  xg = np.asarray(x).reshape(x.shape[0], -1, group)
  qg = np.asarray(q, np.int64).reshape(xg.shape)
  # The multiplier of each group: the largest allowed by |q| <= 7 is ceil(L groupmax / rowmax).
  mult = np.clip(np.ceil(levels * np.abs(xg).max(2) / np.abs(xg).max((1, 2))[:, None]), 1, levels)
  assert np.all(qg % mult[:, :, None] == 0)
  assert np.all(np.abs(qg // mult[:, :, None]) <= 7)
  step = np.asarray(s)[:, :, None] * mult[:, :, None]
  err = np.abs(qg * np.asarray(s)[:, :, None] - xg)
  assert np.all(err <= 0.5 * step * (1 + 1e-5)), float((err / step).max())
  # The group holding the row's maximum uses all L levels.
  assert np.all(mult.max(1) == levels)


@pytest.mark.parametrize("levels", [1, 16])
def test_operands_fit_int8_at_the_configured_bound(levels):
  x = _varied_rows() * 1e3
  for qrange in [(-7, 7), (-8, 7)]:
    q, _ = two_level.quantize_two_level(x, 1, *qrange, levels=levels)
    bound = two_level.max_operand(qrange, levels)
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32)))) <= bound
  assert two_level.fits_int8((-8, 7), 16) and not two_level.fits_int8((-8, 7), 17)
  assert two_level.fits_int8((-7, 7), 18) and not two_level.fits_int8((-7, 7), 19)
  with pytest.raises(ValueError, match="scale_levels"):
    Int4Config(scale_levels=17, int_range="full")


def test_finer_scales_lower_the_error_of_the_small_groups():
  """Per-row scales spend the row's step on its small groups too; the multipliers refine it."""
  x = _varied_rows(k=256)
  errs = {}
  for levels in (1, 8, 16):
    q, s = two_level.quantize_two_level(x, 1, -7, 7, levels=levels)
    err = (two_level.dequantize_two_level(q, s) - x).reshape(x.shape[0], -1, 16)
    per_group = jnp.linalg.norm(err, axis=2) / jnp.linalg.norm(x.reshape(err.shape), axis=2)
    errs[levels] = float(per_group.mean())
  assert errs[16] < errs[8] < errs[1] and errs[16] < 0.6 * errs[1], errs


@pytest.mark.parametrize("m,k", [(1, 16), (1, 48), (5, 16), (300, 32)])
def test_zero_rows_one_token_and_odd_row_counts(m, k):
  x = jax.random.normal(jax.random.key(m), (m, k))
  x = jnp.concatenate([x, jnp.zeros((1, k))])  # a padding row
  q, s = two_level.quantize_two_level(x, 1, -7, 7, levels=16)
  assert int(jnp.abs(q[m]).max()) == 0 and float(s[m, 0]) == 1.0
  assert rel_err(two_level.dequantize_two_level(q, s), x) < 0.15  # INT4 on Gaussian rows: ~0.1


def test_contraction_must_be_a_multiple_of_the_group():
  with pytest.raises(ValueError, match="multiple of group"):
    two_level.quantize_two_level(jnp.ones((4, 40)), 1, -7, 7, group=16, levels=16)


def test_a_nonfinite_row_is_nan_and_only_that_row():
  x = _varied_rows().at[3, 5].set(jnp.inf).at[7, 70].set(jnp.nan)
  q, s = two_level.quantize_two_level(x, 1, -7, 7, levels=16)
  bad = np.isnan(np.asarray(s[:, 0]))
  assert list(np.nonzero(bad)[0]) == [3, 7]
  assert int(jnp.abs(q[3]).max()) == 0 and int(jnp.abs(q[7]).max()) == 0


def test_axis_0_is_axis_1_transposed():
  x = _varied_rows(m=24, k=64)
  q1, s1 = two_level.quantize_two_level(x, 1, -7, 7, levels=16)
  q0, s0 = two_level.quantize_two_level(x.T, 0, -7, 7, levels=16)
  np.testing.assert_array_equal(q0, q1.T)
  np.testing.assert_array_equal(s0, s1.T)


def test_per_tensor_outer_scale():
  x = _varied_rows()
  q, s = two_level.quantize_two_level(x, 1, -7, 7, levels=16, per_row=False)
  assert s.shape == ()
  np.testing.assert_allclose(s, jnp.abs(x).max() / (7 * 16), rtol=1e-6)
  assert rel_err(two_level.dequantize_two_level(q, s), x) < 0.15


def test_clipping_uses_the_rms_range_and_clips_only_beyond_it():
  x = jax.random.normal(jax.random.key(1), (64, 128)).at[:, 0].set(40.0)
  q, s = two_level.quantize_two_level(x, 1, -7, 7, levels=1, clip_ratio=2.5)
  rms = jnp.sqrt(jnp.mean(x * x, axis=1, keepdims=True))
  np.testing.assert_allclose(s, 2.5 * rms / 7, rtol=1e-6)
  assert bool(jnp.all(q[:, 0] == 7))  # the outlier clips to the top level
  inside = jnp.abs(x) <= 2.5 * rms
  err = jnp.abs(q * s - x)
  assert bool(jnp.all(jnp.where(inside, err <= 0.5 * s * (1 + 1e-5), True)))


def test_stochastic_rounding_is_unbiased():
  x = _varied_rows(m=8, k=32)
  keys = jax.random.split(jax.random.key(2), 4000)
  draws = jax.vmap(lambda k: two_level.dequantize_two_level(
      *two_level.quantize_two_level(x, 1, -119, 119, key=k)))(keys)
  _, s = two_level.quantize_two_level(x, 1, -119, 119)
  # 4000 draws, per-element std <= step/2: the mean is within 5 standard errors of x.
  assert bool(jnp.all(jnp.abs(draws.mean(0) - x) <= 5 * 0.5 * s / np.sqrt(4000) + 1e-7))


def test_dither_is_a_hash_of_the_global_index_and_uniform():
  key = jax.random.key(3)
  u2 = int4_quant.uniform_dither(key, (64, 48))
  u1 = int4_quant.uniform_dither(key, (64 * 48,))
  np.testing.assert_array_equal(u2.reshape(-1), u1)  # depends on the flat index only
  # A slice of a bigger array draws the same bits as the rows it covers (sharding-friendly).
  np.testing.assert_array_equal(int4_quant.uniform_dither(key, (128, 48))[:64], u2)
  counts = np.histogram(np.asarray(u1), bins=16, range=(0, 1))[0]
  expected = u1.size / 16
  assert ((counts - expected) ** 2 / expected).sum() < 40  # chi2 with 15 dof, p ~ 5e-4
  other = int4_quant.uniform_dither(jax.random.key(4), (64 * 48,))
  assert abs(float(jnp.corrcoef(u1, other)[0, 1])) < 0.06
  assert abs(float(jnp.corrcoef(u1[:-1], u1[1:])[0, 1])) < 0.06  # neighbours


@pytest.mark.parametrize("levels", [1, 16])
def test_int32_bounds_follow_the_operand_size(levels):
  a = two_level.max_operand((-7, 7), levels)
  assert max_exact_contraction(a, a) * a * a <= 2**31 - 1
  limit = max_exact_contraction(a, a)
  if levels == 1:
    assert limit == 43_826_196
    return
  assert limit == 171_196 and max_exact_contraction(119, a) == 161_125
  x = jnp.ones((1, limit + 16))
  w = jnp.ones((limit + 16, 1))
  with pytest.raises(ValueError, match="overflow"):
    int4_linear(x, w, config=Int4Config(scale_levels=levels, hadamard_block=1))


def test_two_level_default_lowers_the_layer_error():
  x, w = make_xw(128, 512, 64, outliers=True, outlier_scale=20.0)
  exact = x @ w
  err = {lv: rel_err(int4_linear(x, w, config=Int4Config(scale_levels=lv)), exact)
         for lv in (1, 16)}
  assert Int4Config().scale_levels == 16 and Int4Config().scale_group == 16
  assert err[16] < 0.8 * err[1], err


def test_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="scale_levels"):
    Int4Config(scale_mode="group")  # the retired per-group-GEMM mode
  with pytest.raises(ValueError, match="scale_levels=1"):
    Int4Config(scale_mode="lsq")  # LSQ learns one step per tensor
  assert Int4Config.paper().scale_levels == 1
  with pytest.raises(ValueError, match="scale_clip"):
    Int4Config(scale_clip=0.0)
  with pytest.raises(ValueError, match="power of two"):
    Int4Config(scale_group=12)
  with pytest.raises(ValueError, match="scale_search must be an int >= 1"):
    Int4Config(scale_search=0)
  for bad in (True, 1.5):
    with pytest.raises(TypeError, match="scale_search must be an int"):
      Int4Config(scale_search=bad)
  with pytest.raises(ValueError, match="scale_search=1"):
    Int4Config(scale_group=4096, scale_search=2)
  assert Int4Config(scale_group=4096).scale_group == 4096  # no search: any group length


# The multiplier search (Int4Config.scale_search; variant int4-search runs it with 2).

def _group_sse(x, q, s, group=16):
  """Squared error of each group, float64 (rows, K/g)."""
  err = np.asarray(q, np.float64) * np.asarray(s, np.float64) - np.asarray(x, np.float64)
  return (err ** 2).reshape(x.shape[0], -1, group).sum(axis=2)


@pytest.mark.parametrize("search", [2, 3])
def test_the_search_never_raises_a_groups_error_and_lowers_the_total(search):
  x = _varied_rows(m=64, k=128)
  q1, s1 = two_level.quantize_two_level(x, 1, -7, 7, levels=16)
  qs, ss = two_level.quantize_two_level(x, 1, -7, 7, levels=16, search=search)
  np.testing.assert_array_equal(ss, s1)  # the outer scale is the same abs-max scale
  e1, es = _group_sse(x, q1, s1), _group_sse(x, qs, ss)
  # Chosen on counts of s^2 / 256 per element: at most 16 such counts above the ceil rule's.
  slack = 16 * np.asarray(s1, np.float64) ** 2 / 256
  assert np.all(es <= e1 + slack)
  changed = es < e1
  assert changed.mean() > 0.2, changed.mean()  # Gaussian groups often prefer m - 1
  ratio = float(np.mean(es / e1))  # groups weighted alike (their sizes differ by ~50x)
  assert ratio < 0.95, ratio


def test_searched_multipliers_stay_valid_and_split_the_operand():
  """m in 1..L, every m * q in the int8 operand is a multiple of its group's m with |q| <= 7, and
  group_multipliers returns the m the quantizer used (so packing splits it back exactly)."""
  x = _varied_rows(m=48, k=128) * 1e3
  for axis, t in ((1, x), (0, x.T)):
    q, _ = two_level.quantize_two_level(t, axis, -7, 7, levels=16, search=2)
    m = two_level.group_multipliers(t, axis, -7, 7, levels=16, search=2)
    if axis == 0:
      q, m = q.T, m.T
    q = np.asarray(q, np.int32).reshape(x.shape[0], -1, 16)
    m = np.asarray(m, np.int32)[:, :, None]
    assert m.min() >= 1 and m.max() <= 16
    assert np.all(q % m == 0) and np.abs(q // m).max() <= 7
    # some groups do clip: their largest value sits on the top INT4 level
    assert np.any(m[:, :, 0] < two_level.group_multipliers(x, 1, -7, 7, levels=16))


def test_the_search_handles_zero_nonfinite_and_single_rows():
  x = _varied_rows(m=5, k=48).at[1].set(0.0).at[3, 7].set(jnp.nan)
  q, s = two_level.quantize_two_level(x, 1, -7, 7, levels=16, search=2)
  assert not np.asarray(q[1]).any() and float(s[1, 0]) == 1.0
  assert np.isnan(float(s[3, 0])) and not np.asarray(q[3]).any()
  assert np.isfinite(np.asarray(s)[[0, 2, 4]]).all()
  one = x[:1]
  q1, _ = two_level.quantize_two_level(one, 1, -7, 7, levels=16, search=2)
  np.testing.assert_array_equal(q1, q[:1])  # a row's integers do not depend on the other rows


def test_stochastic_rounding_keeps_the_ceil_rule_so_it_stays_unbiased():
  x = _varied_rows(m=8, k=32)
  key = jax.random.key(5)
  q_search, _ = two_level.quantize_two_level(x, 1, -7, 7, levels=16, search=2, key=key)
  q_ceil, _ = two_level.quantize_two_level(x, 1, -7, 7, levels=16, key=key)
  np.testing.assert_array_equal(q_search, q_ceil)


def test_the_search_refuses_groups_whose_error_counts_could_overflow():
  with pytest.raises(ValueError, match="search=1"):
    two_level.quantize_two_level(jnp.ones((2, 4096)), 1, -7, 7, group=4096, levels=16, search=2)


def test_the_search_lowers_the_layer_error_through_the_op():
  x, w = make_xw(128, 512, 64, outliers=True, outlier_scale=20.0)
  exact = x @ w
  err = {s: rel_err(int4_linear(x, w, config=Int4Config(scale_search=s)), exact) for s in (1, 2)}
  assert err[2] < 0.95 * err[1], err
