"""The measurements behind Int4Config()'s defaults: each default must win its comparison."""

import jax
import pytest

from int4jax import Int4Config, int4_linear
from tests.helpers import make_xw, rel_err

KEY = jax.random.key(0)


@pytest.mark.parametrize("outlier_scale", [1.0, 20.0, 100.0])
def test_row_scales_give_the_lowest_forward_error(outlier_scale):
  x, w = make_xw(256, 512, 128, outliers=outlier_scale > 1, outlier_scale=outlier_scale)
  exact = x @ w
  errors = {mode: rel_err(int4_linear(x, w, config=Int4Config(scale_mode=mode)), exact)
            for mode in ("row", "tensor")}
  assert Int4Config().scale_mode == "row"
  assert errors["row"] < errors["tensor"], errors


@pytest.mark.parametrize("levels,max_ratio", [(1, 0.6), (16, 0.8)])
def test_hadamard_block_32_beats_no_hadamard_on_outliers(levels, max_ratio):
  """With one scale per row the Hadamard is essential; with two-level scales the group
  multipliers already isolate a few outlier channels, and the Hadamard still helps."""
  x, w = make_xw(256, 512, 128, outliers=True, outlier_scale=20.0)
  exact = x @ w
  err = {b: rel_err(int4_linear(x, w, config=Int4Config(hadamard_block=b, scale_levels=levels)),
                    exact)
         for b in (1, Int4Config().hadamard_block)}
  assert err[32] < max_ratio * err[1], err


def test_two_level_scales_beat_one_scale_per_row():
  x, w = make_xw(256, 512, 128, outliers=True, outlier_scale=20.0)
  exact = x @ w
  err = {lv: rel_err(int4_linear(x, w, config=Int4Config(scale_levels=lv)), exact)
         for lv in (1, Int4Config().scale_levels)}
  assert Int4Config().scale_levels > 1
  assert err[Int4Config().scale_levels] < 0.8 * err[1], err


def test_bit_split_gradients_beat_plain_int4():
  x, w = make_xw(256, 256, 128, seed=2)
  cot = jax.random.normal(jax.random.key(3), (256, 128)) ** 3
  exact_dx, exact_dw = cot @ w.T, x.T @ cot

  def grad_errors(config):
    dx, dw = jax.vjp(lambda x, w: int4_linear(x, w, key=KEY, config=config), x, w)[1](cot)
    return rel_err(dx, exact_dx), rel_err(dw, exact_dw)

  bitsplit, int4 = grad_errors(Int4Config()), grad_errors(Int4Config(grad_mode="int4"))
  assert Int4Config().grad_mode == "bitsplit"
  # The remaining error is the forward's INT4 operands; dY's own share drops to ~INT8.
  assert bitsplit[0] < 0.75 * int4[0] and bitsplit[1] < 0.75 * int4[1], (bitsplit, int4)
