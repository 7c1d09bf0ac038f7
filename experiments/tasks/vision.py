"""Image classification from scratch: a ViT on Fashion-MNIST (or any tfds image dataset).

Data: experiments.data.images, normalized by the train split's per-channel mean and std.
Training batches walk a (seed, epoch) permutation of the train split, with the standard small-
image augmentation: a random crop after zero-padding by `crop_padding` pixels, and a horizontal
flip with probability 1/2 (both drawn by (seed, step), so a resumed run sees the same batches).
Metric: test accuracy. The patch projection and the head stay float.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs.base import TrainConfig
from experiments.data import corpora, images
from experiments.models import vit
from experiments.tasks.base import Task, epoch_indices, warmup_cosine_adamw


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(TrainConfig):
  kind: str = "vision"
  # "fashion_mnist_deb" (offline, Debian's dataset-fashion-mnist) or a tfds image dataset with
  # "image" and "label" features, e.g. "cifar10" (needs internet the first time)
  dataset: str = "fashion_mnist_deb"
  train_split: str = "train"
  eval_split: str = "test"
  num_classes: int = 10  # labels are 0..num_classes-1
  patch_size: int = 4  # ViT patch side in pixels
  num_layers: int = 6  # encoder blocks
  hidden_size: int = 128  # model width
  num_heads: int = 4  # attention heads
  mlp_ratio: int = 4  # MLP width / model width
  dropout: float = 0.0  # residual and attention dropout
  pool: str = "cls"  # "cls" token or "mean" over patches
  crop_padding: int = 2  # random-crop padding in pixels (0: no crop)
  flip: bool = True  # random horizontal flips
  learning_rate: float = 1e-3  # peak, after a linear warm-up, then cosine decay to 0
  weight_decay: float = 0.05  # AdamW, on matrices only
  warmup_steps: int = 100  # linear warm-up from 0
  grad_clip: float = 1.0  # global-norm gradient clipping
  eval_batch_size: int = 500  # test images per evaluation batch

  def __post_init__(self):
    super().__post_init__()
    if self.crop_padding < 0 or self.eval_batch_size < 1:
      raise ValueError(f"crop_padding >= 0 and eval_batch_size >= 1 in {self}")


def augment(images_BxHxWxC: np.ndarray, padding: int, flip: bool, rng) -> np.ndarray:
  """Random crops of the images zero-padded by `padding`, and random horizontal flips."""
  b, h, w, _ = images_BxHxWxC.shape
  out = images_BxHxWxC
  if padding:
    padded = np.pad(images_BxHxWxC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dy, dx = rng.integers(0, 2 * padding + 1, size=(2, b))
    rows = dy[:, None] + np.arange(h)  # (B, H)
    cols = dx[:, None] + np.arange(w)  # (B, W)
    out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if flip:
    flips = rng.random(b) < 0.5
    out = np.where(flips[:, None, None, None], out[:, :, ::-1], out)
  return out


class ImageClassification(Task):
  metric = "accuracy"
  higher_is_better = True
  metric_scale = 100.0
  float_layers = (r"patch_embed", r"head")
  layer_groups = {"attn": r"block_\d+/attn/(query|key|value|output)",
                  "mlp": r"block_\d+/mlp/(fc|proj)", "qk": r"block_\d+/attn/(query|key)"}
  tensor_parallel = {
      r"block_\d+/attn/(query|key|value)": "column",
      r"block_\d+/mlp/fc": "column",
      r"block_\d+/attn/output": "row",
      r"block_\d+/mlp/proj": "row",
  }

  def load(self, config: VisionConfig):
    data = images.load(config.dataset, config.data_dir or corpora.default_cache_dir(),
                       config.train_split, config.eval_split)
    for split, d in data.items():
      labels = d["labels"]
      if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"{config.dataset}/{split}: labels outside [0, {config.num_classes})")
    train = data["train"]["images"].astype(np.float32) / 255.0
    data["mean"] = train.mean(axis=(0, 1, 2))
    data["std"] = train.std(axis=(0, 1, 2))
    return data

  def _normalize(self, data, images_u8):
    return ((images_u8.astype(np.float32) / 255.0 - data["mean"]) / data["std"]).astype(
        np.float32)

  def model(self, config, data):
    _, h, w, c = data["train"]["images"].shape
    if h != w:
      raise ValueError(f"the ViT takes square images; {config.dataset} has {h}x{w}")
    return vit.ViT(vit.ViTConfig(
        image_size=h, channels=c, patch_size=config.patch_size, num_classes=config.num_classes,
        num_layers=config.num_layers, hidden_size=config.hidden_size, num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio, dropout=config.dropout, pool=config.pool))

  def init_params(self, config, model, data, seed):
    return model.init(jax.random.key(seed), self._normalize(data, data["train"]["images"][:1])
                      )["params"]

  def steps_per_epoch(self, config, data):
    n = len(data["train"]["labels"])
    if n < config.batch_size:
      raise ValueError(f"{n} training images < batch size {config.batch_size}")
    return n // config.batch_size

  def train_batch(self, config, data, seed, step):
    idx = epoch_indices(data, len(data["train"]["labels"]), config.batch_size,
                        self.steps_per_epoch(config, data), seed, step)
    x = augment(data["train"]["images"][idx], config.crop_padding, config.flip,
                np.random.default_rng([seed, step, 1]))
    return {"images": self._normalize(data, x), "labels": data["train"]["labels"][idx]}

  def model_inputs(self, batch):
    return (batch["images"],)

  def loss(self, config, model, variables, batch, rngs):
    logits = model.apply(variables, batch["images"], deterministic=False, rngs=rngs)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["labels"]))

  def optimizer(self, config, total_steps):
    return warmup_cosine_adamw(config, total_steps, b2=0.999)


  def eval_batches(self, config, data):
    x, y = data["eval"]["images"], data["eval"]["labels"]
    b = config.eval_batch_size
    for start in range(0, len(y), b):
      n = min(b, len(y) - start)
      idx = np.concatenate([np.arange(start, start + n), np.zeros(b - n, int)])
      yield {"images": self._normalize(data, x[idx]), "labels": y[idx],
             "valid": np.arange(b) < n}

  def eval_sums(self, model, variables, batch):
    pred = jnp.argmax(model.apply(variables, batch["images"]), axis=-1)
    return {"n": jnp.sum(batch["valid"]),
            "correct": jnp.sum((pred == batch["labels"]) & batch["valid"])}

  def eval_metrics(self, sums):
    return {"accuracy": sums["correct"] / sums["n"]}
