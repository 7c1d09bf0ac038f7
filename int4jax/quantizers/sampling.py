"""Leverage-score sampling (LSS) of the rows of a contraction, unbiased by 1/p reweighting.

For dW = sum_i g_i x_i^T, keeping row i with probability p_i and weighting it by 1/p_i gives an
unbiased estimate. Its variance sum_i (1 - p_i) / p_i ||g_i||^2 ||x_i||^2 is smallest for
p_i proportional to c_i = ||g_i|| ||x_i||, capped at 1 by water-filling so that sum p_i = budget.

Three ways to draw the rows:
- `bernoulli_weights`: independent Bernoulli(p_i) per row (the paper). The number kept is random,
  so under JAX's static shapes the GEMM keeps its size and dropped rows are zeroed.
- `systematic_indices`: `n` row slots with inclusion probabilities exactly p_i (systematic
  sampling on the cumulative sums), so the GEMM really shrinks to n rows. Also unbiased. When
  fewer than n rows have a non-zero score (padded batches), the slots past them stay empty.
- Per-block budgets (`Int4Config.lss_blocks`): the rows split into equal contiguous blocks, each
  water-filled to its own share of the budget and drawn on its own. Each block's p_i are valid
  inclusion probabilities, so the estimate stays unbiased; with one block per data-parallel
  device no device needs another's scores or rows.
- `nonzero_weights`: keep every row with a non-zero score (what the paper's released code does:
  it only skips exactly-zero rows, e.g. padding). Numerically identical to no sampling.
"""

from typing import Tuple

import jax
import jax.numpy as jnp


def leverage_probabilities(scores: jax.Array, budget) -> jax.Array:
  """p_i = min(1, c * scores_i) with c chosen so that sum p_i = budget (water-filling).

  scores: (n,) non-negative. budget: expected number of rows kept, 0 < budget. Rows with a zero
  score get p = 0 (their contribution is zero). If the budget covers every non-zero row, those all
  get p = 1. Non-finite scores get p = 1, so a NaN row is always kept and stays visible.
  """
  scores = jnp.asarray(scores, jnp.float32)
  if scores.ndim != 1:
    raise ValueError(f"leverage_probabilities expects (n,) scores, got shape {scores.shape}")
  finite = jnp.isfinite(scores)
  s = jnp.where(finite, jnp.abs(scores), 0.0)
  n = s.shape[0]
  if n == 0:
    return s
  desc = -jnp.sort(-s)
  tail = jnp.cumsum(desc[::-1])[::-1]  # tail[k] = sum of desc[k:]
  k = jnp.arange(n, dtype=jnp.float32)  # rows clamped to 1 before index k
  room = budget - k
  safe_tail = jnp.where(tail > 0, tail, 1.0)
  c = room / safe_tail
  valid = (room > 0) & (tail > 0) & (c * desc <= 1.0)
  first = jnp.argmax(valid)
  c_star = c[first]
  p = jnp.minimum(1.0, c_star * s)
  covers_all = ~jnp.any(valid)  # budget >= number of non-zero rows
  p = jnp.where(covers_all, (s > 0).astype(jnp.float32), p)
  return jnp.where(finite, p, 1.0)


def bernoulli_weights(key: jax.Array, p: jax.Array) -> jax.Array:
  """m_i / p_i with m_i ~ Bernoulli(p_i): 0 for dropped rows, 1/p_i for kept ones."""
  keep = jax.random.uniform(key, p.shape) < p
  return jnp.where(keep, 1.0 / jnp.where(keep, p, 1.0), 0.0)


def nonzero_weights(scores: jax.Array) -> jax.Array:
  """1 for rows with a non-zero (or non-finite) score, else 0: the reference code's mode."""
  return jnp.where(scores != 0, 1.0, 0.0)


def systematic_indices(key: jax.Array, p: jax.Array, n: int) -> Tuple[jax.Array, jax.Array]:
  """n row slots by systematic sampling: (indices (..., n), filled (..., n) bool).

  p: inclusion probabilities along the last axis, p_i <= 1, summing to n or, when fewer than n
  rows have a non-zero score (padding), to that count (an integer: those rows all have p = 1).
  Leading axes are independent blocks (per-block budgets, `Int4Config.lss_blocks`): block b draws
  its own offset u_b, the b-th value of `jax.random.uniform(key, p.shape[:-1])`. The points
  u, u+1, ..., u+n-1 fall into the intervals of the cumulative sums of p, and each interval
  (length p_i <= 1) holds a point with probability exactly p_i, so row i is picked with
  probability p_i and at most once. Points past sum(p) are empty slots (filled=False, index
  clamped to the last row): give them weight 0. Indices are within the block.
  """
  if n <= 0:
    raise ValueError(f"systematic_indices needs n >= 1, got {n}")
  cum = jnp.cumsum(p, axis=-1)
  total = cum[..., -1:]
  # sum(p) is n or an integer count up to float rounding; snap it so that rounding neither drops
  # the last point nor adds one.
  target = jnp.minimum(jnp.float32(n), jnp.round(total))
  cum = cum * jnp.where(total > 0, target / jnp.where(total > 0, total, 1.0), 0.0)
  cum = cum.at[..., -1].set(target[..., 0])
  slots = jnp.arange(n, dtype=jnp.float32).reshape((1,) * (p.ndim - 1) + (n,))
  points = jax.random.uniform(key, p.shape[:-1] + (1,)) + slots
  search = lambda c, x: jnp.searchsorted(c, x, side="right")
  for _ in range(p.ndim - 1):
    search = jax.vmap(search)
  idx = search(cum, points)
  return jnp.minimum(idx, p.shape[-1] - 1).astype(jnp.int32), points < target
