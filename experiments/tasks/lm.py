"""Language modelling from scratch: a GPT decoder on Shakespeare (or any tfds text dataset).

Data: experiments.data.shakespeare (whole works held out, BPE trained on the train split).
Training batches are random windows of seq_len + 1 tokens, drawn by (seed, step), so a resumed
run sees the same batches. Evaluation: next-token loss over fixed, evenly spaced validation
windows; perplexity = exp(loss). The token embeddings and the output head stay float.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs.base import TrainConfig
from experiments.data import corpora, shakespeare
from experiments.models import gpt
from experiments.tasks.base import Task, warmup_cosine_adamw


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMConfig(TrainConfig):
  kind: str = "lm"
  dataset: str = "shakespeare"  # or a tfds dataset with a text feature, e.g. "tiny_shakespeare"
  text_key: str = "text"  # the text feature of a tfds dataset
  vocab_size: int = 2048  # byte-level BPE vocabulary, trained on the train split
  seq_len: int = 128  # tokens per training sequence
  num_layers: int = 4  # decoder blocks
  hidden_size: int = 128  # model width
  num_heads: int = 4  # attention heads
  mlp_ratio: int = 4  # MLP width / model width
  dropout: float = 0.0  # residual and attention dropout
  attention: str = "dense"  # "dense" layers, or "flax": nn.MultiHeadDotProductAttention
  learning_rate: float = 1e-3  # peak, after a linear warm-up, then cosine decay
  weight_decay: float = 0.1  # on matrices only (not biases, LayerNorm)
  warmup_steps: int = 50  # linear warm-up from 0
  min_lr_ratio: float = 0.1  # the cosine decays to learning_rate * min_lr_ratio
  grad_clip: float = 1.0  # global-norm gradient clipping
  eval_windows: Optional[int] = 256  # validation windows, evenly spaced; None: all of them
  sample_tokens: int = 48  # tokens sampled after training (0: none)
  prompt: str = "KING.\n"  # the sample's prompt

  def __post_init__(self):
    super().__post_init__()
    if self.hidden_size % self.num_heads or self.seq_len < 2:
      raise ValueError(f"hidden_size must be a multiple of num_heads and seq_len >= 2 in {self}")

  def model_config(self) -> gpt.GPTConfig:
    return gpt.GPTConfig(vocab_size=self.vocab_size, max_len=self.seq_len,
                         num_layers=self.num_layers, hidden_size=self.hidden_size,
                         num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                         dropout=self.dropout, attention=self.attention)


class LanguageModelling(Task):
  metric = "val_loss"
  higher_is_better = False
  extra_metrics = ("perplexity",)
  float_layers = (r"lm_head",)
  layer_groups = {"attn": r"block_\d+/attn/(query|key|value|output|out)",
                  "mlp": r"block_\d+/(fc|proj)", "qk": r"block_\d+/attn/(query|key)",
                  "vo": r"block_\d+/attn/(value|output|out)", "up": r"block_\d+/fc",
                  "down": r"block_\d+/proj"}
  tensor_parallel = {
      r"block_\d+/attn/(query|key|value)": "column",
      r"block_\d+/fc": "column",
      r"block_\d+/attn/(output|out)": "row",
      r"block_\d+/proj": "row",
  }

  def load(self, config: LMConfig):
    data_dir = config.data_dir or corpora.default_cache_dir()
    tok, ids = shakespeare.prepare(config.dataset, config.vocab_size, data_dir, config.text_key)
    for split, stream in ids.items():
      if len(stream) < config.seq_len + 2:
        raise ValueError(f"{config.dataset}/{split} has {len(stream)} tokens, fewer than one "
                         f"window of seq_len + 1 = {config.seq_len + 1}")
    return {"tokenizer": tok, "train": ids["train"], "eval": ids["validation"]}

  def model(self, config, data):
    return gpt.GPT(config.model_config())

  def init_params(self, config, model, data, seed):
    tokens = jnp.zeros((1, config.seq_len), jnp.int32)
    return model.init(jax.random.key(seed), tokens)["params"]

  def steps_per_epoch(self, config, data):
    return max(1, len(data["train"]) // (config.batch_size * config.seq_len))

  def train_batch(self, config, data, seed, step):
    stream = data["train"]
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - config.seq_len, size=config.batch_size)
    windows = stream[starts[:, None] + np.arange(config.seq_len + 1)]
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

  def model_inputs(self, batch):
    return (batch["inputs"],)

  def loss(self, config, model, variables, batch, rngs):
    logits = model.apply(variables, batch["inputs"], deterministic=False, rngs=rngs)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["targets"]))

  def optimizer(self, config, total_steps):
    return warmup_cosine_adamw(config, total_steps, b2=0.95,
                               end_value=config.learning_rate * config.min_lr_ratio)


  def eval_batches(self, config, data):
    stream, t = data["eval"], config.seq_len
    count = (len(stream) - 1) // t
    if config.eval_windows is not None and config.eval_windows < count:
      starts = np.linspace(0, count - 1, config.eval_windows).round().astype(int) * t
    else:
      starts = np.arange(count) * t
    for i in range(0, len(starts), config.batch_size):
      chunk = starts[i:i + config.batch_size]
      valid = np.arange(config.batch_size) < len(chunk)
      chunk = np.concatenate([chunk, np.zeros(config.batch_size - len(chunk), int)])
      windows = stream[chunk[:, None] + np.arange(t + 1)]
      yield {"inputs": windows[:, :-1], "targets": windows[:, 1:], "valid": valid}

  def eval_sums(self, model, variables, batch):
    logits = model.apply(variables, batch["inputs"]).astype(jnp.float32)
    nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    valid = batch["valid"][:, None]
    return {"nll": jnp.sum(jnp.where(valid, nll_BxT, 0.0)),
            "tokens": jnp.sum(valid) * nll_BxT.shape[1]}

  def eval_metrics(self, sums):
    loss = sums["nll"] / sums["tokens"]
    return {"val_loss": float(loss), "perplexity": float(np.exp(loss))}

  def finish(self, config, model, variables, data):
    if not config.sample_tokens:
      return {}
    return {"sample": sample(model, variables, data["tokenizer"], config.prompt,
                             config.sample_tokens, config.seq_len)}


def sample(model, variables, tokenizer, prompt: str, num_tokens: int, seq_len: int,
           temperature: float = 0.8, seed: int = 0) -> str:
  """`prompt` continued by `num_tokens` sampled tokens (one compiled step; the context is the
  last seq_len tokens)."""
  ids = list(tokenizer.encode(prompt).ids)[-seq_len:] or [0]

  @jax.jit
  def next_token(window_1xT, last, key):
    logits = model.apply(variables, window_1xT)[0, last].astype(jnp.float32)
    return jax.random.categorical(key, logits / temperature)

  key = jax.random.key(seed)
  for i in range(num_tokens):
    context = ids[-seq_len:]
    window = np.zeros((1, seq_len), np.int32)
    window[0, :len(context)] = context
    ids.append(int(next_token(window, len(context) - 1, jax.random.fold_in(key, i))))
  return tokenizer.decode(ids)
