"""Per-layer search of the Hadamard block size (the paper's k in 2^k), done once on real data.

The paper picks, per layer, the block b minimising the product of the forward quantization
errors ||X - X_bar|| * ||W - W_bar||, where X_bar = s * Q(X H_b) H_b^T is what the INT4 forward
actually multiplies. A larger block spreads an outlier over more channels but also mixes more
unrelated channels into each scale group; which wins depends on the layer, so it is measured.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from int4jax.quantizers import hadamard
from int4jax.quantizers import int4_quant as q
from int4jax.quantizers import two_level

MAX_BLOCK = 1024  # the paper's search range: 1, 2, 4, ..., 1024


def candidate_blocks(k: int, max_block: int = MAX_BLOCK) -> Tuple[int, ...]:
  """Powers of two up to min(max_block, k): a block larger than the contraction is all padding."""
  blocks, b = [], 1
  while b <= min(max_block, max(k, 1)):
    blocks.append(b)
    b *= 2
  return tuple(blocks)


def _roundtrip(t: jax.Array, block: int, axis: int, scale_mode: str, qrange: Tuple[int, int],
               group: int = 16, levels: int = 1, search: int = 1) -> jax.Array:
  """t -> dequantize(quantize(t H)) H^T, unpadded: the operand the INT4 forward really uses."""
  qmin, qmax = qrange
  n = t.shape[axis]
  multiple = max(block, group) if levels > 1 and scale_mode != "lsq" else block
  th = hadamard.block_hadamard(hadamard.pad_to_block(t, multiple, axis), block, axis)
  if scale_mode == "lsq":
    scale = q.lsq_init_scale(th, qmax)
    deq = q.dequantize(q.quantize(th, scale, qmin, qmax), scale)
  else:
    deq = two_level.dequantize_two_level(*two_level.quantize_two_level(
        th, axis, qmin, qmax, group=group, levels=levels, per_row=scale_mode == "row",
        search=search))
  back = hadamard.block_hadamard(deq, block, axis)
  return jax.lax.slice_in_dim(back, 0, n, axis=axis)


def block_errors(x: jax.Array, w: jax.Array, scale_mode: str, qrange: Tuple[int, int],
                 blocks: Sequence[int], group: int = 16, levels: int = 1,
                 search: int = 1) -> np.ndarray:
  """||X - X_bar||_F * ||W - W_bar||_F for each block; x (tokens, K), w (K, N)."""
  x = jnp.asarray(x, jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  errors = []
  for b in blocks:
    ex = jnp.linalg.norm(x - _roundtrip(x, b, 1, scale_mode, qrange, group, levels, search))
    ew = jnp.linalg.norm(w - _roundtrip(w, b, 0, scale_mode, qrange, group, levels, search))
    errors.append(ex * ew)
  return np.asarray(jax.device_get(jnp.stack(errors)))


def search_hadamard_block(x: jax.Array, w: jax.Array, scale_mode: str = "row",
                          qrange: Tuple[int, int] = q.SYMMETRIC,
                          max_block: int = MAX_BLOCK, group: int = 16, levels: int = 1,
                          search: int = 1) -> int:
  """The block in `candidate_blocks(K)` with the least error product on this data (ties: smaller).

  scale_mode, qrange, group, levels, search: the quantizer the layer will use (Int4Config's
  scale_mode, forward_qrange, scale_group, scale_levels, scale_search), so the search scores what
  the forward computes when it rounds to nearest (a stochastic forward keeps the ceil rule and
  adds noise; the block is still scored on nearest rounding).

  x: (tokens, K) activations of a real batch; w: (K, N). The choice depends on the values, so it
  needs concrete arrays: call it (or a module's init) outside jax.jit.
  """
  if isinstance(x, jax.core.Tracer) or isinstance(w, jax.core.Tracer):
    raise ValueError(
        "search_hadamard_block: hadamard_block='search' chooses the block from the values of a "
        "real batch, so it cannot run under jax.jit / nn.scan tracing. Run init outside jit "
        "(model.init, not jax.jit(model.init)), or set Int4Config(hadamard_block=<int>)")
  if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
    raise ValueError(f"search_hadamard_block: need x (tokens, K) and w (K, N), got {x.shape} "
                     f"and {w.shape}")
  blocks = candidate_blocks(w.shape[0], max_block)
  errors = block_errors(x, w, scale_mode, qrange, blocks, group, levels, search)
  if not np.all(np.isfinite(errors)):
    raise ValueError("search_hadamard_block: the init batch or the kernel holds NaN/Inf, so no "
                     "block size can be chosen from it; initialise with finite data")
  return int(blocks[int(np.argmin(errors))])
