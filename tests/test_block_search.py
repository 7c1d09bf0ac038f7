"""Per-layer Hadamard block search: picks the measured argmin, on concrete data only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax.quantizers import block_errors, candidate_blocks, search_hadamard_block

from helpers import make_xw


def test_candidates_are_powers_of_two_up_to_k_and_1024():
  assert candidate_blocks(48) == (1, 2, 4, 8, 16, 32)
  assert candidate_blocks(1) == (1,)
  assert candidate_blocks(5000)[-1] == 1024


@pytest.mark.parametrize("scale_mode,qrange", [("row", (-7, 7)), ("tensor", (-7, 7)),
                                               ("lsq", (-8, 7))])
def test_search_returns_the_block_with_the_least_error_product(scale_mode, qrange):
  x, w = make_xw(128, 256, 64, outliers=True, outlier_scale=50.0)
  errors = block_errors(x, w, scale_mode, qrange, candidate_blocks(256))
  b = search_hadamard_block(x, w, scale_mode, qrange)
  assert errors[candidate_blocks(256).index(b)] == errors.min()


def test_outlier_channels_make_the_search_choose_a_real_hadamard():
  x, w = make_xw(128, 256, 64, outliers=True, outlier_scale=50.0)
  errors = block_errors(x, w, "row", (-7, 7), candidate_blocks(256))
  b = search_hadamard_block(x, w)
  assert b >= 8, b
  assert errors[candidate_blocks(256).index(b)] < 0.6 * errors[0], errors  # vs no Hadamard


def test_search_needs_concrete_values():
  x, w = make_xw(16, 64, 8)
  with pytest.raises(ValueError, match="outside jit"):
    jax.jit(search_hadamard_block)(x, w)


def test_search_refuses_non_finite_data():
  x, w = make_xw(16, 64, 8)
  with pytest.raises(ValueError, match="NaN"):
    search_hadamard_block(x.at[0, 0].set(jnp.nan), w)


def test_search_refuses_mismatched_shapes():
  with pytest.raises(ValueError, match=r"\(tokens, K\)"):
    search_hadamard_block(np.ones((4, 8), np.float32), np.ones((9, 2), np.float32))
