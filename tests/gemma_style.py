"""A small Gemma-architecture decoder written the way google-deepmind/gemma writes its linen
model, for the tests of whole-model rewriting (tests/test_real_models.py): attention projections
as their own `Einsum` modules calling `jnp.einsum` on a param `w` (q, a fused kv with GQA, the
output), the MLP's fused gate/up and its down projection as params of one module contracted with
`jnp.einsum`, RMS pre- and post-norms, QK-norm, a tied output head (`x @ table.T`) and
`__call__` wrapped in `nn.jit`. Written from the architecture's description; not gemma's code."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Config:
  vocab: int = 64
  width: int = 64
  layers: int = 2
  heads: int = 4
  kv_heads: int = 2
  head_dim: int = 16
  hidden: int = 128


class Einsum(nn.Module):
  """gemma's layer: `Einsum(shape)(eqn, x)` contracts x with its param `w`."""
  shape: tuple

  @nn.compact
  def __call__(self, eqn: str, x):
    w = self.param("w", nn.initializers.normal(0.05), self.shape)
    return jnp.einsum(eqn, x, w)


class RMSNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],))
    scale = (1 + scale).reshape((1,) * (x.ndim - 1) + (-1,))
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale


class Attention(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x, cache=None):
    c = self.config
    q = Einsum((c.heads, c.width, c.head_dim), name="q_einsum")("BTD,NDH->BTNH", x)
    k, v = Einsum((2, c.kv_heads, c.width, c.head_dim), name="kv_einsum")("BSD,CKDH->CBSKH", x)
    q, k = RMSNorm(name="query_norm")(q), RMSNorm(name="key_norm")(k)  # QK-norm
    if cache is not None:  # a sampler's cache: the keys and values of the earlier tokens
      k = jnp.concatenate([cache["k"], k], axis=1)
      v = jnp.concatenate([cache["v"], v], axis=1)
    groups = c.heads // c.kv_heads  # GQA: each kv head serves `groups` query heads
    q = q.reshape(q.shape[:2] + (c.kv_heads, groups, c.head_dim))
    logits = jnp.einsum("BTKGH,BSKH->BTKGS", q, k) * c.head_dim ** -0.5
    t, s = q.shape[1], k.shape[1]
    causal = jnp.arange(s)[None, :] <= (jnp.arange(t)[:, None] + s - t)
    logits = jnp.where(causal[None, :, None, None, :], logits, -1e30)
    mixed = jnp.einsum("BTKGS,BSKH->BTKGH", jax.nn.softmax(logits, -1), v)
    mixed = mixed.reshape(mixed.shape[:2] + (c.heads, c.head_dim))
    out = Einsum((c.heads, c.head_dim, c.width), name="attn_vec_einsum")("BTNH,NHD->BTD", mixed)
    return out, {"k": k, "v": v}


class FeedForward(nn.Module):
  """gate and up fused in one param, down in another, both contracted in this module's scope."""
  config: Config

  @nn.compact
  def __call__(self, x):
    c = self.config
    gating = self.param("gating_einsum", nn.initializers.normal(0.05), (2, c.hidden, c.width))
    linear = self.param("linear", nn.initializers.normal(0.05), (c.hidden, c.width))
    gate, up = jnp.einsum("...F,NHF->N...H", x, gating)
    return jnp.einsum("...H,HF->...F", jax.nn.gelu(gate) * up, linear)


class Block(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x, cache=None):
    attn, cache = Attention(self.config, name="attn")(RMSNorm(name="pre_attention_norm")(x),
                                                       cache)
    x = x + RMSNorm(name="post_attention_norm")(attn)
    mlp = FeedForward(self.config, name="mlp")(RMSNorm(name="pre_ffw_norm")(x))
    return x + RMSNorm(name="post_ffw_norm")(mlp), cache


class Transformer(nn.Module):
  config: Config = Config()

  @nn.jit
  @nn.compact
  def __call__(self, tokens, cache=None):
    """Logits (B, T, vocab) and the new cache; `cache` from `init_cache` or a previous call."""
    c = self.config
    table = self.param("embedder", nn.initializers.normal(1.0), (c.vocab, c.width))
    x = table[tokens] * c.width ** 0.5
    new_cache = []
    for i in range(c.layers):
      x, layer_cache = Block(c, name=f"layer_{i}")(x, None if cache is None else cache[i])
      new_cache.append(layer_cache)
    x = RMSNorm(name="final_norm")(x)
    return x @ table.T, new_cache  # the tied head: float (the weight is transposed)

  def init_cache(self, batch: int):
    """An empty cache (no tokens yet), as a sampler asks the model for one."""
    c = self.config
    empty = jnp.zeros((batch, 0, c.kv_heads, c.head_dim), jnp.float32)
    return [{"k": empty, "v": empty} for _ in range(c.layers)]
