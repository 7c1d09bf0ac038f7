"""TrainConfig: the fields every task's config shares (the loop reads only these), frozen."""

import dataclasses
from typing import Optional, Tuple

from experiments.variants import DEFAULT_VARIANTS, VARIANTS


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  kind: str  # which experiments.tasks module runs it: "classification", "lm", "vision" or
  # "translation"
  task: str  # results file name, e.g. "bert_polarity"
  title: str = ""  # a person's name for the experiment, for plots and tables
  batch_size: int = 32  # training sequences per step
  epochs: float = 3.0  # training length in passes over the train split (tasks with epochs)
  steps: Optional[int] = None  # training length in steps; overrides `epochs` when set
  learning_rate: float = 2e-5  # peak learning rate
  weight_decay: float = 0.01  # AdamW's decoupled weight decay
  variants: Tuple[str, ...] = DEFAULT_VARIANTS  # experiments.variants names to run
  seeds: Tuple[int, ...] = (0, 1, 2)  # one run per seed: init, data order, dropout, quantizer rng
  log_every: int = 10  # steps per logged window (the loop fetches losses once per window)
  eval_every: int = 0  # steps between evaluations; 0: once per epoch (and at the end)
  checkpoint_every: int = 0  # steps between orbax checkpoints; 0: none
  data_dir: Optional[str] = None  # None: $INT4JAX_DATA_DIR or ~/.cache/int4jax
  # a device mesh, e.g. "data=4,model=2" (experiments.sharding): batches split over "data", the
  # task's tensor-parallel layers over "model"; None: one device
  mesh: Optional[str] = None
  fsdp: bool = False  # with a mesh: also split every param over "data" (gathered where used)
  # with fsdp, INT4 variants and no "model" axis: INT4 layers all-gather packed INT4 weights
  # (Int4Config.fsdp_axis="data", int4jax/fsdp.py); False: GSPMD gathers the float weights
  fsdp_int4_wire: bool = True

  def __post_init__(self):
    unknown = set(self.variants) - set(VARIANTS)
    if unknown:
      raise ValueError(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if self.batch_size < 1 or self.epochs <= 0 or (self.steps is not None and self.steps < 1):
      raise ValueError(f"batch_size, epochs and steps must be positive in {self}")
    if self.log_every < 1 or self.eval_every < 0 or self.checkpoint_every < 0:
      raise ValueError(f"log_every >= 1, eval_every >= 0, checkpoint_every >= 0 in {self}")
    if self.mesh is not None:
      from experiments.sharding import parse_mesh
      parse_mesh(self.mesh)  # raises naming the format
    if self.fsdp and self.mesh is None:
      raise ValueError("fsdp=True needs a mesh with a data axis, e.g. mesh='data=8'")

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)
