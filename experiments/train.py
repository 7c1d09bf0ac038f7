"""The one training loop: fine-tune the pretrained BERT classifier, every variant and seed.

`train_and_evaluate(config, workdir)` runs config.variants x config.seeds and returns
{variant: {seed: run summary}}. Per run (workdir/<variant>/seed_<seed>/):
  metrics.jsonl   one JSON line per log step (loss, lr, examples/s) and per evaluation
  ckpt/           orbax checkpoints every config.checkpoint_every steps; a rerun resumes from the
                  latest and ends bit-identical to a run that never stopped
  summary.json    final metrics and the median step time
A run aborts with FloatingPointError on the first non-finite loss.

Every variant sees the same data order, dropout masks and classifier init for a given seed: only
the Dense layers differ, made INT4 by `int4jax.quantize_model` rules (experiments.variants).
"""

import json
import os
import statistics
import time
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import int4jax
from experiments import variants
from experiments.models import bert
from experiments.configs.base import ExperimentConfig
from experiments.data import corpora, pipeline


def load_data(config: ExperimentConfig, tokenizer) -> Dict[str, Dict[str, np.ndarray]]:
  data_dir = config.data_dir or corpora.default_cache_dir()
  out = {}
  for name, split in (("train", config.train_split), ("eval", config.eval_split)):
    texts, labels = pipeline.load_split(config.dataset, split, data_dir, config.text_key,
                                        config.label_key)
    if name == "train" and config.max_train_examples:
      texts, labels = texts[:config.max_train_examples], labels[:config.max_train_examples]
    arrays = pipeline.tokenize(tokenizer, texts, config.max_len)
    arrays["labels"] = labels
    if labels.min() < 0 or labels.max() >= config.num_classes:
      raise ValueError(f"{config.dataset}/{split}: labels outside [0, {config.num_classes})")
    out[name] = arrays
  return out


def build_model(cfg: bert.BertConfig, num_classes: int, variant: str):
  model = bert.BertClassifier(cfg, num_classes)
  rules = variants.rules_for(variant)
  return model if rules is None else int4jax.quantize_model(model, rules)


def cross_entropy(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                                  labels))


def evaluate(model, variables, arrays, batch_size: int) -> Dict[str, float]:
  """Accuracy and F1 of class 1 over the whole split."""
  predict = jax.jit(lambda v, ids, mask: jnp.argmax(model.apply(v, ids, mask), axis=-1))
  preds, labels = [], []
  for batch in pipeline.eval_batches(arrays, batch_size):
    p = np.asarray(predict(variables, batch["input_ids"], batch["mask"]))
    preds.append(p[batch["valid"]])
    labels.append(batch["labels"][batch["valid"]])
  preds, labels = np.concatenate(preds), np.concatenate(labels)
  tp = int(np.sum((preds == 1) & (labels == 1)))
  precision = tp / max(int(np.sum(preds == 1)), 1)
  recall = tp / max(int(np.sum(labels == 1)), 1)
  f1 = 2 * precision * recall / max(precision + recall, 1e-12)
  return {"accuracy": float(np.mean(preds == labels)), "f1": float(f1)}


def _checkpointer(path: str):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(os.path.abspath(path),
                               options=ocp.CheckpointManagerOptions(max_to_keep=1))


def train_one(config: ExperimentConfig, workdir: str, variant: str, seed: int, data,
              pretrained, *, stop_after: Optional[int] = None, progress: bool = True) -> Dict:
  """One (variant, seed) run; see the module doc. stop_after: leave after that many steps (a
  checkpoint is written there when checkpointing is on), as if interrupted."""
  cfg, encoder_params = pretrained
  run_dir = os.path.join(workdir, variant, f"seed_{seed}")
  os.makedirs(run_dir, exist_ok=True)
  model = build_model(cfg, config.num_classes, variant)
  train = data["train"]
  steps_per_epoch = len(train["labels"]) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(train['labels'])} training examples < batch size {config.batch_size}")
  total_steps = max(1, int(round(config.epochs * steps_per_epoch)))
  records = pipeline.as_records(train)
  epochs = {}

  def batch_at(step):
    epoch = step // steps_per_epoch
    if epoch not in epochs:
      epochs.clear()
      epochs[epoch] = pipeline.epoch_batches(records, config.batch_size, seed, epoch)
    return epochs[epoch][step % steps_per_epoch]

  # Same classifier init for every variant of a seed; quantizer state from the first batch.
  params = bert.classifier_params(bert.BertClassifier(cfg, config.num_classes), encoder_params,
                                  jax.random.key(seed), config.max_len)
  variables = {"params": params}
  if variant != "fp32":
    first = batch_at(0)
    variables = int4jax.nn.calibrate(model, variables, first["input_ids"], first["mask"])
  params = variables.pop("params")
  others = variables  # non-trainable collections (e.g. a searched Hadamard block)

  schedule = optax.linear_schedule(config.learning_rate, 0.0, total_steps)
  tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  state = {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  @jax.jit
  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.key(seed), state["step"])
    k_dropout, k_quant = jax.random.split(key)

    def loss_fn(p):
      logits = model.apply({"params": p, **others}, batch["input_ids"], batch["mask"],
                           deterministic=False, rngs={"dropout": k_dropout, "quant": k_quant})
      return cross_entropy(logits, batch["labels"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt,
            "step": state["step"] + 1}, loss

  manager = _checkpointer(os.path.join(run_dir, "ckpt")) if config.checkpoint_every else None
  start = 0
  if manager is not None and manager.latest_step() is not None:
    import orbax.checkpoint as ocp
    start = manager.latest_step()
    state = manager.restore(start, args=ocp.args.StandardRestore(state))
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  if start == 0 and os.path.exists(metrics_path):
    os.remove(metrics_path)

  from tqdm import tqdm
  bar = tqdm(range(start, total_steps), desc=f"{variant} seed {seed}", disable=not progress,
             leave=False, dynamic_ncols=True)
  step_times, window_start, window_examples = [], time.perf_counter(), 0
  last_eval = None
  with open(metrics_path, "a") as log:
    for step in bar:
      batch = batch_at(step)
      t0 = time.perf_counter()
      state, loss = train_step(state, batch)
      loss = float(loss)  # also waits for the step
      step_times.append(time.perf_counter() - t0)
      if not np.isfinite(loss):
        raise FloatingPointError(f"{variant} seed {seed}: loss is {loss} at step {step}; "
                                 "aborting the run")
      window_examples += config.batch_size
      if (step + 1) % config.log_every == 0 or step + 1 == total_steps:
        rate = window_examples / (time.perf_counter() - window_start)
        record = {"step": step + 1, "loss": loss, "lr": float(schedule(step)),
                  "examples_per_s": round(rate, 1)}
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{loss:.3f}", ex_s=f"{rate:.0f}")
        window_start, window_examples = time.perf_counter(), 0
      if (step + 1) % steps_per_epoch == 0 or step + 1 == total_steps:
        last_eval = evaluate(model, {"params": state["params"], **others}, data["eval"],
                             config.batch_size)
        log.write(json.dumps({"step": step + 1, **{f"eval_{k}": v for k, v in
                                                    last_eval.items()}}) + "\n")
        log.flush()
      if manager is not None and (step + 1) % config.checkpoint_every == 0:
        import orbax.checkpoint as ocp
        manager.save(step + 1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
      if stop_after is not None and step + 1 >= stop_after:
        bar.close()
        return {"stopped_at": step + 1, "state": state}
  bar.close()
  if last_eval is None:
    last_eval = evaluate(model, {"params": state["params"], **others}, data["eval"],
                         config.batch_size)
  timed = step_times[3:] or step_times  # the first steps include compilation
  summary = {"variant": variant, "seed": seed, **last_eval, "steps": total_steps,
             "step_time_ms": round(1e3 * statistics.median(timed), 2) if timed else None}
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  summary["state"] = state
  return summary


def train_and_evaluate(config: ExperimentConfig, workdir: str, *, progress: bool = True
                       ) -> Dict[str, Dict[int, Dict]]:
  """Every variant x seed of `config`: {variant: {seed: summary}} (summaries without state)."""
  cfg, encoder_params, tokenizer = bert.load_pretrained(config.model_dir)
  data = load_data(config, tokenizer)
  results = {}
  for variant in config.variants:
    for seed in config.seeds:
      summary = train_one(config, workdir, variant, seed, data, (cfg, encoder_params),
                          progress=progress)
      summary.pop("state")
      results.setdefault(variant, {})[seed] = summary
      if progress:
        print(f"{config.task} {variant:17s} seed {seed}: {config.metric} "
              f"{summary[config.metric]:.4f}  f1 {summary['f1']:.4f}  "
              f"{summary['step_time_ms']} ms/step", flush=True)
  return results
