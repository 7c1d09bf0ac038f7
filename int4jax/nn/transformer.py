"""A small pre-LayerNorm transformer encoder built from Flax's own layers, for tests and examples.

Every linear layer (Q, K, V, attention output, MLP in/out) takes `Int4DotGeneral` when `config`
is set, so the INT4 and float versions have the same param tree; attention's QK^T and PV
matmuls, LayerNorm, GELU, softmax, the embeddings and the classifier head stay in float, as in
the paper.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from int4jax.config import Int4Config
from int4jax.nn.int4_dot import Int4DotGeneral


class EncoderLayer(nn.Module):
  """x_BxLxD -> x_BxLxD: x + Attn(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  config: Optional[Int4Config] = Int4Config()  # None: a float layer with the same params
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x_BxLxD, mask=None, deterministic: bool = True):
    dot = (None if self.config is None
           else functools.partial(Int4DotGeneral, config=self.config))
    d = x_BxLxD.shape[-1]
    h_BxLxD = nn.LayerNorm(name="ln_attn")(x_BxLxD)
    h_BxLxD = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_dot_general_cls=dot, out_dot_general_cls=dot,
        dropout_rate=self.dropout_rate, deterministic=deterministic, name="attn")(
            h_BxLxD, mask=mask)
    x_BxLxD = x_BxLxD + nn.Dropout(self.dropout_rate)(h_BxLxD, deterministic=deterministic)
    h_BxLxD = nn.LayerNorm(name="ln_mlp")(x_BxLxD)
    h_BxLxF = nn.gelu(nn.Dense(self.mlp_dim, dot_general_cls=dot, name="mlp_in")(h_BxLxD))
    h_BxLxD = nn.Dense(d, dot_general_cls=dot, name="mlp_out")(h_BxLxF)
    return x_BxLxD + nn.Dropout(self.dropout_rate)(h_BxLxD, deterministic=deterministic)


class _ScannedLayer(nn.Module):
  """EncoderLayer in nn.scan's (carry, x) -> (carry, y) form."""

  num_heads: int
  mlp_dim: int
  config: Optional[Int4Config]
  dropout_rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x_BxLxD, mask):
    layer = EncoderLayer(self.num_heads, self.mlp_dim, self.config, self.dropout_rate,
                         name="layer")
    return layer(x_BxLxD, mask, self.deterministic), None


class EncoderClassifier(nn.Module):
  """tokens_BxL (int) -> logits_BxC: embeddings, `num_layers` EncoderLayers, mean pool, a float
  head. `scan_layers` stacks the layers' params on a leading axis and runs them with nn.scan
  (with nn.remat: activations are recomputed in the backward pass)."""

  vocab_size: int
  num_classes: int
  max_len: int = 128
  dim: int = 64
  num_heads: int = 4
  mlp_dim: int = 128
  num_layers: int = 2
  config: Optional[Int4Config] = Int4Config()
  dropout_rate: float = 0.0
  scan_layers: bool = False

  @nn.compact
  def __call__(self, tokens_BxL, deterministic: bool = True):
    if tokens_BxL.shape[-1] > self.max_len:
      raise ValueError(f"sequence length {tokens_BxL.shape[-1]} > max_len {self.max_len}")
    x_BxLxD = nn.Embed(self.vocab_size, self.dim, name="embed")(tokens_BxL)
    pos_LxD = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.dim))
    x_BxLxD = x_BxLxD + pos_LxD[None, :tokens_BxL.shape[-1]]
    mask = None
    if self.scan_layers:
      stack = nn.scan(nn.remat(_ScannedLayer),
                      variable_axes={"params": 0, "quant_state": 0},
                      split_rngs={"params": True, "quant": True, "dropout": True},
                      in_axes=nn.broadcast, length=self.num_layers)
      x_BxLxD, _ = stack(self.num_heads, self.mlp_dim, self.config, self.dropout_rate,
                         deterministic, name="layers")(x_BxLxD, mask)
    else:
      for i in range(self.num_layers):
        x_BxLxD = EncoderLayer(self.num_heads, self.mlp_dim, self.config, self.dropout_rate,
                               name=f"layer_{i}")(x_BxLxD, mask, deterministic)
    x_BxD = jnp.mean(nn.LayerNorm(name="ln_final")(x_BxLxD), axis=1)
    return nn.Dense(self.num_classes, name="head")(x_BxD)


def count_linear_layers(num_layers: int) -> int:
  """Linear layers that EncoderClassifier quantizes: Q, K, V, out, MLP in, MLP out per layer."""
  return 6 * num_layers


def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
  logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp_BxC, labels_B[:, None], axis=1))
