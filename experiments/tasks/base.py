"""Task: what the one training loop (experiments.train) needs to know about a task.

A task owns its data, its float model, its loss, its optimizer and its evaluation. The loop owns
everything else: variants (INT4 by rules on the float model), seeds, keys, the step function,
logging, checkpoints, timing and the NaN abort. So a new task is one module here.
"""

import abc
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np
import optax


class Task(abc.ABC):
  metric: str  # the headline key of `eval_metrics`
  higher_is_better: bool  # direction of `metric`
  metric_scale: float = 1.0  # reported value = metric * metric_scale (accuracy -> percent)
  extra_metrics: Tuple[str, ...] = ()  # other `eval_metrics` keys the report carries
  float_layers: Tuple[str, ...] = ()  # layer-path regexes kept float in every INT4 variant
  # {"attn": regex, "mlp": regex, "qk": regex}: the block linear layers of each type (the
  # per-type ablations and policies of experiments.variants)
  layer_groups: Mapping[str, str] = {}
  # {layer-path regex: "column" or "row"}: how tensor parallelism splits the block layers
  # (experiments.sharding); layers not listed stay whole on the "model" axis
  tensor_parallel: Mapping[str, str] = {}

  @abc.abstractmethod
  def load(self, config) -> Any:
    """Everything the runs of `config` share (token arrays, tokenizer, pretrained weights)."""

  @abc.abstractmethod
  def model(self, config, data) -> nn.Module:
    """The float model; `model.apply(variables, *model_inputs(batch), ...)` gives its output."""

  @abc.abstractmethod
  def init_params(self, config, model: nn.Module, data, seed: int):
    """Initial params for `seed` (the same for every variant)."""

  @abc.abstractmethod
  def steps_per_epoch(self, config, data) -> int:
    """Training batches per pass over the train split."""

  @abc.abstractmethod
  def train_batch(self, config, data, seed: int, step: int) -> Dict[str, np.ndarray]:
    """Batch `step` of the run with `seed`: random access, so a resumed run sees the same."""

  @abc.abstractmethod
  def model_inputs(self, batch) -> Tuple:
    """The positional arguments of the model for `batch`."""

  @abc.abstractmethod
  def loss(self, config, model: nn.Module, variables, batch, rngs) -> Any:
    """The scalar training loss (float32), in training mode (dropout from rngs['dropout'])."""

  @abc.abstractmethod
  def optimizer(self, config, total_steps: int):
    """(optax transformation, learning-rate schedule)."""

  @abc.abstractmethod
  def eval_batches(self, config, data) -> Iterable[Dict[str, np.ndarray]]:
    """The evaluation split in batches of one fixed shape (padding marked in the batch)."""

  @abc.abstractmethod
  def eval_sums(self, model: nn.Module, variables, batch) -> Dict[str, Any]:
    """Per-batch sums (jnp scalars) that `eval_metrics` turns into metrics; jitted once."""

  @abc.abstractmethod
  def eval_metrics(self, sums: Dict[str, float]) -> Dict[str, float]:
    """Metrics from the sums over all evaluation batches."""

  def extra_evaluator(self, config, model: nn.Module, data
                      ) -> Optional[Callable[[Any], Dict[str, float]]]:
    """evaluate(variables) -> metrics that are not sums over batches (e.g. the BLEU of decoded
    text), or None. Built once per run, so what it jits compiles once."""
    return None

  def finish(self, config, model: nn.Module, variables, data) -> Dict[str, Any]:
    """Extra entries for a finished run's summary (e.g. a text sample); printed by the loop."""
    return {}


def epoch_indices(data: Dict, n: int, batch_size: int, steps_per_epoch: int, seed: int,
                  step: int) -> np.ndarray:
  """The example indices of batch `step`: a (seed, epoch) permutation of range(n), walked in
  batches (the permutation of the current epoch is cached in data["_order"])."""
  epoch, i = divmod(step, steps_per_epoch)
  cache = data.setdefault("_order", {})
  if (seed, epoch) not in cache:
    cache.clear()
    cache[(seed, epoch)] = np.random.default_rng([seed, epoch]).permutation(n)
  return cache[(seed, epoch)][i * batch_size:(i + 1) * batch_size]


def warmup_cosine_adamw(config, total_steps: int, *, b2: float, end_value: float = 0.0):
  """(tx, schedule): linear warm-up over config.warmup_steps to config.learning_rate, cosine decay
  to end_value, global-norm clipping at config.grad_clip, AdamW (b1 0.9) with weight decay on
  matrices only. The from-scratch tasks (LM, ViT, translation) share it."""
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                max(total_steps, warmup + 1),
                                                end_value=end_value)
  matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                   optax.adamw(schedule, b1=0.9, b2=b2, weight_decay=config.weight_decay,
                               mask=matrices))
  return tx, schedule
