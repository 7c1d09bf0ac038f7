"""A decoder-only Transformer language model (GPT-2 style): pre-LN, causal, learned positions.

Plain Flax: every linear layer is an `nn.Dense`, so `int4jax.quantize_model` makes the blocks
INT4 by rules on paths such as "block_2/attn/query" or "block_2/mlp/fc". The token and position
embeddings and the output head ("lm_head") are not block layers and stay float in the
experiments. Attention logits, softmax, GELU and LayerNorm run in float32.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  vocab_size: int  # tokenizer vocabulary
  max_len: int  # positions (the training sequence length)
  num_layers: int  # decoder blocks
  hidden_size: int  # model width d
  num_heads: int  # attention heads (d must be a multiple)
  mlp_ratio: int = 4  # MLP width = mlp_ratio * d
  dropout: float = 0.0  # residual and attention dropout in training
  # "dense": q, k, v and output as nn.Dense layers (below); "flax": Flax's own
  # nn.MultiHeadDotProductAttention (DenseGeneral layers query/key/value/out), as users write it
  attention: str = "dense"


def _dense(features, name, std=0.02):
  return nn.Dense(features, name=name, kernel_init=nn.initializers.normal(std))


class CausalSelfAttention(nn.Module):
  cfg: GPTConfig

  @nn.compact
  def __call__(self, x_BxTxD, deterministic: bool):
    cfg = self.cfg
    b, t, d = x_BxTxD.shape
    h = cfg.num_heads
    heads = lambda name: _dense(d, name)(x_BxTxD).reshape(b, t, h, d // h)
    q, k, v = heads("query"), heads("key"), heads("value")
    logits_BxHxTxT = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(d // h)
    causal_TxT = jnp.tril(jnp.ones((t, t), bool))
    logits_BxHxTxT = jnp.where(causal_TxT, logits_BxHxTxT, jnp.finfo(jnp.float32).min)
    probs = nn.Dropout(cfg.dropout)(nn.softmax(logits_BxHxTxT, axis=-1),
                                    deterministic=deterministic)
    ctx_BxTxD = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(b, t, d)
    out = _dense(d, "output", 0.02 / np.sqrt(2 * cfg.num_layers))(ctx_BxTxD)
    return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)


class Block(nn.Module):
  cfg: GPTConfig

  @nn.compact
  def __call__(self, x_BxTxD, deterministic: bool):
    cfg = self.cfg
    h_BxTxD = nn.LayerNorm(name="ln_1")(x_BxTxD)
    if cfg.attention == "flax":
      causal = nn.make_causal_mask(jnp.ones(x_BxTxD.shape[:2], bool))
      attn = nn.MultiHeadDotProductAttention(
          cfg.num_heads, dropout_rate=cfg.dropout, deterministic=deterministic,
          kernel_init=nn.initializers.normal(0.02), name="attn")(h_BxTxD, mask=causal)
    elif cfg.attention == "dense":
      attn = CausalSelfAttention(cfg, name="attn")(h_BxTxD, deterministic)
    else:
      raise ValueError(f"attention must be 'dense' or 'flax', got {cfg.attention!r}")
    x_BxTxD = x_BxTxD + attn
    y = _dense(cfg.mlp_ratio * cfg.hidden_size, "fc")(nn.LayerNorm(name="ln_2")(x_BxTxD))
    y = _dense(cfg.hidden_size, "proj", 0.02 / np.sqrt(2 * cfg.num_layers))(nn.gelu(y))
    return x_BxTxD + nn.Dropout(cfg.dropout)(y, deterministic=deterministic)


class GPT(nn.Module):
  cfg: GPTConfig

  @nn.compact
  def __call__(self, tokens_BxT, deterministic: bool = True):
    cfg = self.cfg
    t = tokens_BxT.shape[1]
    if t > cfg.max_len:
      raise ValueError(f"sequence length {t} > max_len {cfg.max_len}")
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, name=name,
                                     embedding_init=nn.initializers.normal(0.02))
    x_BxTxD = (embed(cfg.vocab_size, "wte")(tokens_BxT)
               + embed(cfg.max_len, "wpe")(jnp.arange(t))[None])
    x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
    for i in range(cfg.num_layers):
      x_BxTxD = Block(cfg, name=f"block_{i}")(x_BxTxD, deterministic)
    x_BxTxD = nn.LayerNorm(name="ln_f")(x_BxTxD)
    return _dense(cfg.vocab_size, "lm_head")(x_BxTxD)  # logits_BxTxV
