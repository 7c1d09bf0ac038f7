"""An encoder-decoder Transformer for translation (Vaswani et al. 2017, pre-LN).

Source and target share one embedding table ("embed", a joint BPE vocabulary) with learned
positions per side; encoder blocks "encoder_<i>", decoder blocks "decoder_<i>" (self-attention,
cross-attention over the encoder output, MLP; experiments.models.transformer); the output
projection "lm_head". The embeddings and lm_head stay float in the experiments; every block layer,
the cross-attention's included, is a Dense that INT4 rules reach.

One entry point serves training and decoding, so the INT4 interception of `quantize_model`
covers both: `model(src)` encodes; `model(src, tgt_in)` gives the logits;
`model(src, tgt_in, memory=model(src))` decodes from a cached encoding.
"""

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from experiments.models.transformer import BlockConfig, DecoderBlock, EncoderBlock, dense

PAD_ID = 0  # the padding token of the source and the target


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  vocab_size: int  # joint source/target vocabulary
  max_len: int  # positions per side
  num_layers: int  # encoder blocks, and as many decoder blocks
  hidden_size: int  # model width d
  num_heads: int  # attention heads
  mlp_ratio: int = 4  # MLP width / d
  dropout: float = 0.0  # residual and attention dropout


class Seq2Seq(nn.Module):
  cfg: Seq2SeqConfig

  def setup(self):
    cfg = self.cfg
    block = BlockConfig(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, cfg.dropout,
                        out_std=0.02 / (2 * cfg.num_layers) ** 0.5)
    self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size,
                          embedding_init=nn.initializers.normal(0.02))
    pos = lambda: nn.initializers.normal(0.02)
    self.src_pos = self.param("src_pos", pos(), (cfg.max_len, cfg.hidden_size))
    self.tgt_pos = self.param("tgt_pos", pos(), (cfg.max_len, cfg.hidden_size))
    self.encoder = [EncoderBlock(block, name=f"encoder_{i}") for i in range(cfg.num_layers)]
    self.decoder = [DecoderBlock(block, name=f"decoder_{i}") for i in range(cfg.num_layers)]
    self.ln_enc = nn.LayerNorm()
    self.ln_dec = nn.LayerNorm()
    self.drop = nn.Dropout(cfg.dropout)
    self.lm_head = dense(cfg.vocab_size, "lm_head")

  def _check(self, ids_BxT, side: str):
    if ids_BxT.ndim != 2 or ids_BxT.shape[1] > self.cfg.max_len:
      raise ValueError(f"{side} ids must be (batch, length <= max_len={self.cfg.max_len}), got "
                       f"{ids_BxT.shape}")

  def encode(self, src_BxS, deterministic: bool):
    self._check(src_BxS, "source")
    s = src_BxS.shape[1]
    x_BxSxD = self.drop(self.embed(src_BxS) + self.src_pos[None, :s], deterministic=deterministic)
    mask_BxSxS = jnp.broadcast_to((src_BxS != PAD_ID)[:, None, :], (*src_BxS.shape, s))
    for block in self.encoder:
      x_BxSxD = block(x_BxSxD, mask_BxSxS, deterministic)
    return self.ln_enc(x_BxSxD)

  def decode(self, src_BxS, memory_BxSxD, tgt_in_BxT, deterministic: bool):
    self._check(tgt_in_BxT, "target")
    t = tgt_in_BxT.shape[1]
    y_BxTxD = self.drop(self.embed(tgt_in_BxT) + self.tgt_pos[None, :t],
                        deterministic=deterministic)
    causal_BxTxT = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (tgt_in_BxT.shape[0], t, t))
    cross_BxTxS = jnp.broadcast_to((src_BxS != PAD_ID)[:, None, :],
                                   (src_BxS.shape[0], t, src_BxS.shape[1]))
    for block in self.decoder:
      y_BxTxD = block(y_BxTxD, causal_BxTxT, memory_BxSxD, cross_BxTxS, deterministic)
    return self.lm_head(self.ln_dec(y_BxTxD))  # logits_BxTxV

  def __call__(self, src_BxS, tgt_in_BxT: Optional[jnp.ndarray] = None, *,
               memory: Optional[jnp.ndarray] = None, deterministic: bool = True):
    if tgt_in_BxT is None:
      return self.encode(src_BxS, deterministic)
    if memory is None:
      memory = self.encode(src_BxS, deterministic)
    return self.decode(src_BxS, memory, tgt_in_BxT, deterministic)
