"""Pre-LN Transformer blocks shared by the encoder models (ViT, the translation Transformer).

Every linear layer is an `nn.Dense` with a stable name ("attn/query", "cross_attn/value", "fc",
"proj"), so `int4jax.quantize_model` reaches them by rules on paths. Attention logits, softmax,
GELU and LayerNorm run in float32. Masks are boolean, True where a query may attend a key.
"""

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  hidden_size: int  # model width d
  num_heads: int  # attention heads (d must be a multiple)
  mlp_ratio: int = 4  # MLP width = mlp_ratio * d
  dropout: float = 0.0  # residual and attention dropout in training
  out_std: float = 0.02  # init std of the layers that write into the residual stream


def dense(features: int, name: str, std: float = 0.02) -> nn.Dense:
  return nn.Dense(features, name=name, kernel_init=nn.initializers.normal(std))


class Attention(nn.Module):
  """Multi-head attention of queries x_q over keys/values x_kv; mask_BxQxK True = attend."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x_BxQxD, x_BxKxD, mask_BxQxK: Optional[jnp.ndarray], deterministic: bool):
    cfg = self.cfg
    d, h = cfg.hidden_size, cfg.num_heads
    split = lambda y: y.reshape(*y.shape[:2], h, d // h)
    q = split(dense(d, "query")(x_BxQxD))
    k, v = split(dense(d, "key")(x_BxKxD)), split(dense(d, "value")(x_BxKxD))
    logits_BxHxQxK = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(d // h)
    if mask_BxQxK is not None:
      logits_BxHxQxK = jnp.where(mask_BxQxK[:, None], logits_BxHxQxK,
                                 jnp.finfo(jnp.float32).min)
    probs = nn.Dropout(cfg.dropout)(nn.softmax(logits_BxHxQxK, axis=-1),
                                    deterministic=deterministic)
    ctx_BxQxD = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    out = dense(d, "output", cfg.out_std)(ctx_BxQxD.reshape(*x_BxQxD.shape[:2], d))
    return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)


class MLP(nn.Module):
  """fc -> GELU -> proj, with residual dropout."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x_BxTxD, deterministic: bool):
    cfg = self.cfg
    y = dense(cfg.mlp_ratio * cfg.hidden_size, "fc")(x_BxTxD)
    y = dense(cfg.hidden_size, "proj", cfg.out_std)(nn.gelu(y))
    return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)


class EncoderBlock(nn.Module):
  """x + attn(LN(x)); then x + MLP(LN(x))."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxTxT, deterministic: bool):
    h = nn.LayerNorm(name="ln_1")(x_BxTxD)
    x_BxTxD = x_BxTxD + Attention(self.cfg, name="attn")(h, h, mask_BxTxT, deterministic)
    h = nn.LayerNorm(name="ln_2")(x_BxTxD)
    return x_BxTxD + MLP(self.cfg, name="mlp")(h, deterministic)


class DecoderBlock(nn.Module):
  """Causal self-attention, then attention over the encoder's output, then the MLP."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, y_BxTxD, self_mask_BxTxT, memory_BxSxD, cross_mask_BxTxS,
               deterministic: bool):
    h = nn.LayerNorm(name="ln_1")(y_BxTxD)
    y_BxTxD = y_BxTxD + Attention(self.cfg, name="self_attn")(h, h, self_mask_BxTxT,
                                                              deterministic)
    h = nn.LayerNorm(name="ln_2")(y_BxTxD)
    y_BxTxD = y_BxTxD + Attention(self.cfg, name="cross_attn")(h, memory_BxSxD,
                                                               cross_mask_BxTxS, deterministic)
    h = nn.LayerNorm(name="ln_3")(y_BxTxD)
    return y_BxTxD + MLP(self.cfg, name="mlp")(h, deterministic)
