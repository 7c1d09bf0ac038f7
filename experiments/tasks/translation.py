"""Translation from scratch: an encoder-decoder Transformer, German -> English.

Data: experiments.data.bible (Elberfelder 1932 -> World English Bible, split by book), or any
tfds translation dataset (e.g. "wmt14_translate/de-en", needs internet the first time). A joint
byte-level BPE is trained on the train split. Training pairs longer than max_len tokens (BOS and
EOS included) on either side are left out; evaluation keeps every pair, cut at max_len
(long_pairs="cut": BLEU still scores against the full reference), or leaves those out too
(long_pairs="drop": a short-verse task).

Training: label-smoothed cross-entropy over the target tokens. Evaluation: the validation
split's loss (teacher-forced), and sacreBLEU of greedy translations of the test split (the
headline metric, every evaluation); at the end, the BLEU of beam search and a sample translation.
The embeddings and lm_head stay float; every block layer, cross-attention included, is INT4.
"""

import dataclasses
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs.base import TrainConfig
from experiments.data import bible, corpora
from experiments.models import decoding, seq2seq
from experiments.tasks.base import Task, epoch_indices, warmup_cosine_adamw


@dataclasses.dataclass(frozen=True, kw_only=True)
class TranslationConfig(TrainConfig):
  kind: str = "translation"
  # "bible_de_en" (offline, experiments.data.bible) or a tfds translation dataset
  dataset: str = "bible_de_en"
  source_key: str = "de"  # the source-language feature of a tfds dataset
  target_key: str = "en"  # the target-language feature
  train_split: str = "train"
  validation_split: str = "validation"  # teacher-forced loss
  test_split: str = "test"  # BLEU
  vocab_size: int = 4096  # joint BPE vocabulary, trained on the train split
  max_len: int = 64  # tokens per side, BOS and EOS included
  # pairs with a side longer than max_len: training always leaves them out; evaluation "cut"s
  # them at max_len (the source the model reads, the teacher-forced validation target; BLEU
  # scores against the full reference), or "drop"s them too (a short-sentence task, for CPUs)
  long_pairs: str = "cut"
  num_layers: int = 3  # encoder blocks, and as many decoder blocks
  hidden_size: int = 128  # model width
  num_heads: int = 4  # attention heads
  mlp_ratio: int = 4  # MLP width / model width
  dropout: float = 0.1  # residual and attention dropout
  label_smoothing: float = 0.1  # of the training loss (evaluation loss: none)
  learning_rate: float = 1e-3  # peak, after a linear warm-up, then cosine decay
  weight_decay: float = 0.01  # AdamW, on matrices only
  warmup_steps: int = 200  # linear warm-up from 0
  min_lr_ratio: float = 0.1  # the cosine decays to learning_rate * min_lr_ratio
  grad_clip: float = 1.0  # global-norm gradient clipping
  test_sentences: Optional[int] = None  # the first N test pairs kept for BLEU; None: all
  decode_batch_size: int = 128  # sentences per decoding batch
  beam_size: int = 4  # the final beam-search BLEU (1: greedy again)
  length_alpha: float = 0.6  # beam search's length penalty exponent

  def __post_init__(self):
    super().__post_init__()
    if self.max_len < 3 or self.hidden_size % self.num_heads or self.beam_size < 1:
      raise ValueError(f"max_len >= 3, hidden_size a multiple of num_heads and beam_size >= 1 "
                       f"in {self}")
    if self.test_sentences is not None and self.test_sentences < 1:
      raise ValueError(f"test_sentences must be None (all) or >= 1, got {self.test_sentences}")
    if self.long_pairs not in ("cut", "drop"):
      raise ValueError(f"long_pairs must be 'cut' or 'drop', got {self.long_pairs!r}")

  def model_config(self) -> seq2seq.Seq2SeqConfig:
    return seq2seq.Seq2SeqConfig(vocab_size=self.vocab_size, max_len=self.max_len,
                                 num_layers=self.num_layers, hidden_size=self.hidden_size,
                                 num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                                 dropout=self.dropout)


def load_texts(config: TranslationConfig, data_dir: str):
  if config.dataset == "bible_de_en":
    return bible.split_by_book(bible.load_pairs(data_dir))
  return bible.load_tfds(config.dataset, data_dir, config.source_key, config.target_key,
                         (config.train_split, config.validation_split, config.test_split))


def tokenizer_for(config: TranslationConfig, texts, data_dir: str):
  """The joint BPE of the train split, trained once and cached (per dataset, split and size)."""
  from tokenizers import Tokenizer
  path = os.path.join(data_dir, "translation", config.dataset.replace("/", "_"),
                      f"bpe{config.vocab_size}_{config.train_split}", "tokenizer.json")
  if os.path.exists(path):
    return Tokenizer.from_file(path)
  tok = bible.train_tokenizer([s for pair in texts[config.train_split] for s in pair],
                              config.vocab_size)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tok.save(path + ".part")
  os.replace(path + ".part", path)
  return tok


def smoothed_cross_entropy(logits_BxTxV, targets_BxT, smoothing: float):
  """Per-token cross-entropy against (1 - smoothing) one-hot + smoothing uniform."""
  logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
  return (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)


class Translation(Task):
  metric = "bleu"
  higher_is_better = True
  extra_metrics = ("val_loss", "bleu_beam")
  float_layers = (r"lm_head",)
  layer_groups = {"attn": r"(encoder|decoder)_\d+/(attn|self_attn|cross_attn)/"
                          r"(query|key|value|output)",
                  "mlp": r"(encoder|decoder)_\d+/mlp/(fc|proj)",
                  "qk": r"(encoder|decoder)_\d+/(attn|self_attn|cross_attn)/(query|key)"}
  tensor_parallel = {
      r"(encoder|decoder)_\d+/(attn|self_attn|cross_attn)/(query|key|value)": "column",
      r"(encoder|decoder)_\d+/mlp/fc": "column",
      r"(encoder|decoder)_\d+/(attn|self_attn|cross_attn)/output": "row",
      r"(encoder|decoder)_\d+/mlp/proj": "row",
  }

  def load(self, config: TranslationConfig):
    data_dir = config.data_dir or corpora.default_cache_dir()
    texts = load_texts(config, data_dir)
    tok = tokenizer_for(config, texts, data_dir)
    out = {"tokenizer": tok}
    for name, split in (("train", config.train_split), ("validation", config.validation_split),
                        ("test", config.test_split)):
      pairs = texts[split]
      src, src_len = bible.encode(tok, [p[0] for p in pairs], config.max_len)
      tgt, tgt_len = bible.encode(tok, [p[1] for p in pairs], config.max_len)
      keep = np.ones(len(pairs), bool)
      if name == "train" or config.long_pairs == "drop":
        keep = (src_len <= config.max_len) & (tgt_len <= config.max_len)
      if name == "test" and config.test_sentences:
        keep &= np.cumsum(keep) <= config.test_sentences
      out[f"{name}_left_out"] = int((~keep).sum())
      out[name] = {"src": src[keep], "tgt": tgt[keep],
                   "references": [p[1] for p, k in zip(pairs, keep) if k],
                   "sources": [p[0] for p, k in zip(pairs, keep) if k]}
    return out

  def model(self, config, data):
    return seq2seq.Seq2Seq(config.model_config())

  def init_params(self, config, model, data, seed):
    ids = jnp.zeros((1, config.max_len), jnp.int32)
    return model.init(jax.random.key(seed), ids, ids[:, :-1])["params"]

  def steps_per_epoch(self, config, data):
    n = len(data["train"]["src"])
    if n < config.batch_size:
      raise ValueError(f"{n} training pairs < batch size {config.batch_size}")
    return n // config.batch_size

  def train_batch(self, config, data, seed, step):
    idx = epoch_indices(data, len(data["train"]["src"]), config.batch_size,
                        self.steps_per_epoch(config, data), seed, step)
    tgt = data["train"]["tgt"][idx]
    return {"src": data["train"]["src"][idx], "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}

  def model_inputs(self, batch):
    return batch["src"], batch["tgt_in"]

  def loss(self, config, model, variables, batch, rngs):
    logits = model.apply(variables, batch["src"], batch["tgt_in"], deterministic=False,
                         rngs=rngs)
    mask = batch["tgt_out"] != seq2seq.PAD_ID
    per_token = smoothed_cross_entropy(logits, batch["tgt_out"], config.label_smoothing)
    return jnp.sum(jnp.where(mask, per_token, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

  def optimizer(self, config, total_steps):
    return warmup_cosine_adamw(config, total_steps, b2=0.98,
                               end_value=config.learning_rate * config.min_lr_ratio)


  def eval_batches(self, config, data):
    src, tgt, b = data["validation"]["src"], data["validation"]["tgt"], config.batch_size
    for start in range(0, len(src), b):
      n = min(b, len(src) - start)
      idx = np.concatenate([np.arange(start, start + n), np.zeros(b - n, int)])
      yield {"src": src[idx], "tgt_in": tgt[idx, :-1], "tgt_out": tgt[idx, 1:],
             "valid": np.arange(b) < n}

  def eval_sums(self, model, variables, batch):
    logits = model.apply(variables, batch["src"], batch["tgt_in"])
    mask = (batch["tgt_out"] != seq2seq.PAD_ID) & batch["valid"][:, None]
    nll = smoothed_cross_entropy(logits, batch["tgt_out"], 0.0)
    return {"nll": jnp.sum(jnp.where(mask, nll, 0.0)), "tokens": jnp.sum(mask)}

  def eval_metrics(self, sums):
    return {"val_loss": sums["nll"] / sums["tokens"]}

  def extra_evaluator(self, config, model, data):
    greedy = translator(config, model, data, beam_size=1)
    return lambda variables: {"bleu": bleu(greedy(variables), data["test"]["references"])}

  def finish(self, config, model, variables, data):
    hyps = translator(config, model, data, config.beam_size)(variables)
    return {"bleu_beam": bleu(hyps, data["test"]["references"]),
            "sample": (f"source:     {data['test']['sources'][0]}\n"
                       f"reference:  {data['test']['references'][0]}\n"
                       f"hypothesis: {hyps[0]}")}


def translator(config: TranslationConfig, model, data, beam_size: int):
  """translate(variables) -> the test split's translations (greedy for beam_size 1), decoded in
  batches of one fixed shape, so the decoder compiles once."""
  tok = data["tokenizer"]
  ids = dict(bos=tok.token_to_id(bible.BOS), eos=tok.token_to_id(bible.EOS),
             pad=tok.token_to_id(bible.PAD))
  if ids["pad"] != seq2seq.PAD_ID:
    raise ValueError(f"the tokenizer's PAD id is {ids['pad']}, the model's {seq2seq.PAD_ID}")

  @jax.jit
  def decode(variables, src_BxS):
    apply = lambda *args, **kwargs: model.apply(variables, *args, **kwargs)
    if beam_size == 1:
      return decoding.greedy(apply, src_BxS, config.max_len, **ids)
    return decoding.beam_search(apply, src_BxS, config.max_len, **ids, beam_size=beam_size,
                                alpha=config.length_alpha)

  def translate(variables):
    src, b = data["test"]["src"], config.decode_batch_size
    out = []
    for start in range(0, len(src), b):
      n = min(b, len(src) - start)
      idx = np.concatenate([np.arange(start, start + n), np.zeros(b - n, int)])
      rows = np.asarray(decode(variables, src[idx]))[:n]
      out.extend(bible.decode(tok, row) for row in rows)
    return out

  return translate


def bleu(hypotheses, references) -> float:
  import sacrebleu
  return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
