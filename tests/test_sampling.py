"""Leverage-score sampling: valid probabilities, unbiased estimates, lower variance than uniform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import quantizers as qz


def water_fill_iterative(scores, budget):
  """The paper's definition: p ~ scores, clamp to 1, rescale the rest, repeat."""
  s = np.asarray(scores, np.float64)
  clamped = np.zeros(s.shape, bool)
  for _ in range(len(s) + 1):
    rest = budget - clamped.sum()
    free = s * ~clamped
    p = np.where(clamped, 1.0, rest * free / free.sum())
    if not np.any(p > 1 + 1e-12):
      return p
    clamped |= p > 1
  return p


@pytest.mark.parametrize("budget", [1.0, 5.5, 16.0, 40.0])
def test_probabilities_sum_to_budget_capped_and_monotone(budget):
  scores = jax.random.exponential(jax.random.key(0), (64,)) ** 3
  p = qz.leverage_probabilities(scores, budget)
  assert float(p.sum()) == pytest.approx(budget, rel=1e-5)
  assert bool(jnp.all((p >= 0) & (p <= 1)))
  order = jnp.argsort(scores)
  assert bool(jnp.all(jnp.diff(p[order]) >= -1e-7))
  np.testing.assert_allclose(p, water_fill_iterative(scores, budget), atol=1e-5)


def test_budget_covering_all_nonzero_rows_keeps_them_all():
  scores = jnp.array([0.0, 3.0, 0.0, 1.0, 2.0])
  np.testing.assert_array_equal(qz.leverage_probabilities(scores, 4.0), [0, 1, 0, 1, 1])


def test_zero_and_nonfinite_scores():
  np.testing.assert_array_equal(qz.leverage_probabilities(jnp.zeros(4), 2.0), 0)
  p = qz.leverage_probabilities(jnp.array([1.0, jnp.nan, 1.0, 2.0]), 2.0)
  assert float(p[1]) == 1.0 and bool(jnp.all(jnp.isfinite(p)))
  assert float(qz.bernoulli_weights(jax.random.key(0), jnp.zeros(3)).sum()) == 0.0


def _rows(key, m=48, d=16):
  ka, kb, kc = jax.random.split(key, 3)
  spread = jnp.exp(2 * jax.random.normal(kc, (m, 1)))  # very unequal row norms
  return jax.random.normal(ka, (m, d)) * spread, jax.random.normal(kb, (m, d))


def test_bernoulli_estimate_is_unbiased_and_beats_uniform():
  g, x = _rows(jax.random.key(1))
  exact = x.T @ g
  scores = jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(x, axis=1)
  budget = 0.25 * g.shape[0]
  p_lss = qz.leverage_probabilities(scores, budget)
  p_uni = jnp.full_like(p_lss, budget / g.shape[0])
  n = 20000
  keys = jax.random.split(jax.random.key(2), n)

  def draws(p):
    return jax.vmap(lambda k: x.T @ (g * qz.bernoulli_weights(k, p)[:, None]))(keys)

  est_lss, est_uni = draws(p_lss), draws(p_uni)
  var_lss = float(jnp.sum(jnp.var(est_lss, 0)))
  # Unbiased: ||mean - exact||^2 has expectation sum(var)/n; allow 4x that.
  assert float(jnp.sum((est_lss.mean(0) - exact) ** 2)) < 4 * var_lss / n
  analytic = lambda p: float(jnp.sum((1 - p) / p * scores ** 2))
  assert var_lss == pytest.approx(analytic(p_lss), rel=0.1)
  assert analytic(p_lss) < 0.5 * analytic(p_uni)
  assert var_lss < 0.5 * float(jnp.sum(jnp.var(est_uni, 0)))


def test_systematic_sampling_has_exact_size_and_inclusion_probabilities():
  g, x = _rows(jax.random.key(3), m=40)
  scores = jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(x, axis=1)
  n_keep = 10
  p = qz.leverage_probabilities(scores, n_keep)
  keys = jax.random.split(jax.random.key(4), 20000)
  idx, filled = jax.vmap(lambda k: qz.systematic_indices(k, p, n_keep))(keys)
  assert idx.shape == (20000, n_keep)
  assert bool(jnp.all(filled))  # the budget is below the non-zero rows: every slot is used
  distinct = jax.vmap(lambda r: jnp.unique(r, size=n_keep, fill_value=-1))(idx)
  assert bool(jnp.all(distinct >= 0))  # no row twice
  freq = jnp.zeros(40).at[idx.ravel()].add(1.0) / len(keys)
  np.testing.assert_allclose(freq, p, atol=0.015)
  est = jax.vmap(lambda r: x[r].T @ (g[r] / p[r][:, None]))(idx)
  var = float(jnp.sum(jnp.var(est, 0)))
  assert float(jnp.sum((est.mean(0) - x.T @ g) ** 2)) < 4 * var / len(keys)


@pytest.mark.parametrize("nonzero", [3, 10])
def test_systematic_sampling_on_padded_rows_is_unbiased(nonzero):
  """Fewer (3) or exactly as many (10) non-zero rows as the budget of 10: each such row is
  picked exactly once at weight 1, the other slots stay empty (the old rescaling picked p = 1
  rows twice, inflating the estimate)."""
  g, x = _rows(jax.random.key(5), m=40)
  g = g.at[nonzero:].set(0.0)
  scores = jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(x, axis=1)
  p = qz.leverage_probabilities(scores, 10)
  keys = jax.random.split(jax.random.key(6), 2000)
  idx, filled = jax.vmap(lambda k: qz.systematic_indices(k, p, 10))(keys)
  assert int(filled.sum(axis=1).min()) == int(filled.sum(axis=1).max()) == nonzero
  kept = jnp.where(filled, idx, -1)
  for row in range(nonzero):
    assert bool(jnp.all(jnp.sum(kept == row, axis=1) == 1)), row
  weights = jnp.where(filled, 1.0 / p[idx], 0.0)
  est = jax.vmap(lambda r, wt: x[r].T @ (g[r] * wt[:, None]))(idx, weights)
  np.testing.assert_allclose(est.mean(0), x.T @ g, rtol=1e-5, atol=1e-5)


def test_nonzero_mode_keeps_exactly_the_nonzero_rows():
  np.testing.assert_array_equal(qz.nonzero_weights(jnp.array([0.0, 2.0, 0.0, 1e-30])),
                                [0, 1, 0, 1])
