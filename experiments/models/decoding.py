"""Greedy and beam-search decoding for experiments.models.seq2seq, jit-able with fixed shapes.

`apply(src, tgt_in, memory=None)` is the model's forward (logits), `apply(src)` its encoder.
Both decoders encode once and re-run the decoder over the whole prefix each step (no key/value
cache: simple, and the same code path the model trains with), stopping early once every
sentence has ended. Outputs are (B, max_len - 1) ids after BOS: the text, EOS, then PAD. A live
hypothesis never continues with PAD or BOS. Each sentence's answer is the one it gets decoded
alone: the batch it shares does not change it.
"""

from typing import Callable

import jax
import jax.numpy as jnp

NEG = -1e9  # the score of an impossible continuation (finite, so no inf - inf)


def _no_pad_or_bos(logits, bos: int, pad: int):
  v = logits.shape[-1]
  return jnp.where((jnp.arange(v) == pad) | (jnp.arange(v) == bos), NEG, logits)


def greedy(apply: Callable, src_BxS, max_len: int, bos: int, eos: int, pad: int):
  """The argmax token at each step until EOS (then PAD)."""
  b = src_BxS.shape[0]
  memory = apply(src_BxS)
  tokens_BxL = jnp.full((b, max_len), pad, jnp.int32).at[:, 0].set(bos)

  def step(carry):
    i, tokens_BxL, done_B = carry
    logits_BxV = jax.lax.dynamic_index_in_dim(apply(src_BxS, tokens_BxL, memory=memory), i,
                                              axis=1, keepdims=False)
    logits_BxV = _no_pad_or_bos(logits_BxV.astype(jnp.float32), bos, pad)
    nxt_B = jnp.where(done_B, pad, jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32))
    return i + 1, tokens_BxL.at[:, i + 1].set(nxt_B), done_B | (nxt_B == eos)

  running = lambda carry: (carry[0] < max_len - 1) & ~jnp.all(carry[2])
  _, tokens_BxL, _ = jax.lax.while_loop(running, step, (0, tokens_BxL, jnp.zeros(b, bool)))
  return tokens_BxL[:, 1:]


def length_penalty(lengths, alpha: float):
  """GNMT's ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha = 0: none."""
  return ((5.0 + lengths) / 6.0) ** alpha


def beam_search(apply: Callable, src_BxS, max_len: int, bos: int, eos: int, pad: int,
                beam_size: int = 4, alpha: float = 0.6):
  """The best of `beam_size` hypotheses per sentence by log-probability / length_penalty.

  A simple beam: the k best hypotheses by raw log-probability, ended ones included (an ended
  beam keeps its score and extends with PAD at no cost, so it holds its slot only while it stays
  in the top k). A sentence stops, and is frozen from then on, once its best raw-score beam has
  ended (raw scores only fall, so no live beam can pass it in raw score). The answer is the ended
  beam with the best length-normalized score (a live one if none ended).
  """
  b, k = src_BxS.shape[0], beam_size
  src_BKxS = jnp.repeat(src_BxS, k, axis=0)
  memory = jnp.repeat(apply(src_BxS), k, axis=0)
  tokens_BxKxL = jnp.full((b, k, max_len), pad, jnp.int32).at[:, :, 0].set(bos)
  scores_BxK = jnp.full((b, k), NEG).at[:, 0].set(0.0)  # one live beam at the start
  done_BxK = jnp.zeros((b, k), bool)
  lengths_BxK = jnp.zeros((b, k), jnp.int32)

  def stopped(scores_BxK, done_BxK):
    """(B,) True once the sentence's best raw-score beam has ended."""
    return jnp.take_along_axis(done_BxK, jnp.argmax(scores_BxK, axis=1)[:, None], axis=1)[:, 0]

  def step(carry):
    i, tokens_BxKxL, scores_BxK, done_BxK, lengths_BxK = carry
    frozen_B = stopped(scores_BxK, done_BxK)
    logits = apply(src_BKxS, tokens_BxKxL.reshape(b * k, max_len), memory=memory)
    logits_BxKxV = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False).reshape(
        b, k, -1).astype(jnp.float32)
    v = logits_BxKxV.shape[-1]
    logp = _no_pad_or_bos(jax.nn.log_softmax(logits_BxKxV, axis=-1), bos, pad)
    pad_only = jnp.where(jnp.arange(v) == pad, 0.0, NEG)
    logp = jnp.where(done_BxK[..., None], pad_only, logp)
    top_scores, top_idx = jax.lax.top_k((scores_BxK[..., None] + logp).reshape(b, k * v), k)
    parent_BxK, token_BxK = top_idx // v, (top_idx % v).astype(jnp.int32)
    pick = lambda x: jnp.take_along_axis(x, parent_BxK.reshape(b, k, *([1] * (x.ndim - 2))),
                                         axis=1)
    parent_done = pick(done_BxK)
    new = (pick(tokens_BxKxL).at[:, :, i + 1].set(token_BxK), top_scores,
           parent_done | (token_BxK == eos), pick(lengths_BxK) + (~parent_done).astype(jnp.int32))
    old = (tokens_BxKxL, scores_BxK, done_BxK, lengths_BxK)
    keep = lambda o, n: jnp.where(frozen_B.reshape((b,) + (1,) * (n.ndim - 1)), o, n)
    return (i + 1, *jax.tree.map(keep, old, new))

  def running(carry):
    i, _, scores_BxK, done_BxK, _ = carry
    return (i < max_len - 1) & ~jnp.all(stopped(scores_BxK, done_BxK))

  _, tokens_BxKxL, scores_BxK, done_BxK, lengths_BxK = jax.lax.while_loop(
      running, step, (0, tokens_BxKxL, scores_BxK, done_BxK, lengths_BxK))
  normalized = scores_BxK / length_penalty(jnp.maximum(lengths_BxK, 1), alpha)
  any_done = jnp.any(done_BxK, axis=1, keepdims=True)
  normalized = jnp.where(done_BxK | ~any_done, normalized, 2 * NEG)
  best_B = jnp.argmax(normalized, axis=1)
  return jnp.take_along_axis(tokens_BxKxL, best_B[:, None, None], axis=1)[:, 0, 1:]
