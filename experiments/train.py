"""The one training loop, for every task (experiments.tasks) and variant (experiments.variants).

`train_and_evaluate(config, workdir)` runs config.variants x config.seeds and returns
{variant: {seed: run summary}}. Per run (workdir/<variant>/seed_<seed>/):
  metrics.jsonl   a JSON line per logged window (the last step's loss, the window's mean loss,
                  lr, examples/s) and per evaluation (eval_<metric> for each metric)
  ckpt/           orbax checkpoints every config.checkpoint_every steps; a rerun resumes from the
                  latest and ends bit-identical to a run that never stopped
  summary.json    final metrics, the median ms/step and what the task adds (e.g. a text sample)

Losses stay on the device and are fetched once per window of config.log_every steps, so the
host does not wait on every step. A run aborts with FloatingPointError naming the first step
whose loss is not finite (found when its window is fetched). Evaluation compiles once per run.

Every variant sees the same params init, data order, dropout masks and quantizer keys for a
given seed: only the linear layers differ, made INT4 by `int4jax.quantize_model` rules. A variant
with precision annealing (experiments.variants, `anneal_to`) switches to another variant's model
for its last steps, on the same state; its evaluations after the switch use that model.

config.mesh runs the same step on a device mesh (experiments.sharding): data, tensor and FSDP
parallelism under one jit, equal to the one-device run up to float reduction order.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import os
import statistics
import time
from typing import Dict, Optional

import jax
import numpy as np
import optax

import int4jax
from experiments import baselines, gemm_ablation, sharding, tasks, variants

logger = logging.getLogger("experiments")


def _replace_configs(rules, applies, **changes):
  """The rules, with `changes` made to each config that `applies(config)` accepts."""
  return tuple(dataclasses.replace(r, config=r.config.replace(**changes))
               if r.config is not None and applies(r.config) else r for r in rules)


def build_model(task, config, data, variant: str):
  """The task's float model, with the variant's INT4 rules applied (fp32: unchanged; bf16 and
  fp8: the same layers as low-precision float GEMMs, experiments.baselines)."""
  model = task.model(config, data)
  baseline = getattr(variants.VARIANTS.get(variant), "baseline", None)
  if baseline is not None:
    return baselines.LowPrecisionModel(model, baseline, tuple(task.float_layers))
  gemms = getattr(variants.VARIANTS.get(variant), "gemms", ())
  if gemms:
    return gemm_ablation.AblatedModel(model, gemms, exclude=tuple(task.float_layers))
  rules = variants.rules_for(variant, task.float_layers, task.layer_groups)
  if rules is None:
    return model
  if sharding.gathers_int4(config):
    packable = lambda c: c.scale_mode != "lsq"  # learned scales: not packable
    if any(r.config is not None and not packable(r.config) for r in rules):
      logger.info("%s: learned (LSQ) scales cannot be gathered packed; those layers' weights are "
                  "gathered as GSPMD chooses", variant)
    rules = _replace_configs(rules, packable, fsdp_axis="data")
  data_size = sharding.parse_mesh(config.mesh).get("data", 1) if config.mesh else 1
  if data_size > 1:  # leverage-score sampling draws each data-parallel device's rows on it
    rules = _replace_configs(rules, lambda c: c.lss in ("bernoulli", "systematic"),
                             lss_blocks=data_size)
  return int4jax.quantize_model(model, rules)


def total_steps(task, config, data) -> int:
  if config.steps is not None:
    return config.steps
  return max(1, int(round(config.epochs * task.steps_per_epoch(config, data))))


def make_evaluate(task, model):
  """evaluate(variables, config, data) -> metrics, with the per-batch sums jitted once."""
  sums_fn = jax.jit(lambda variables, batch: task.eval_sums(model, variables, batch))
  extra = {}  # the task's extra evaluator, built on the first call

  def evaluate(variables, config, data) -> Dict[str, float]:
    totals = None
    for batch in task.eval_batches(config, data):
      sums = jax.device_get(sums_fn(variables, batch))
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    metrics = task.eval_metrics(jax.tree.map(lambda a: a.item(), totals))
    if "fn" not in extra:
      extra["fn"] = task.extra_evaluator(config, model, data)
    return {**metrics, **(extra["fn"](variables) if extra["fn"] else {})}

  evaluate.compiled = sums_fn  # for tests: its cache size is the number of compilations
  return evaluate


def initial_state(task, config, data, model, variant: str, seed: int, tx):
  """({params, opt, step}, non-trainable collections): the same params for every variant of a
  seed; quantizer state (if any, e.g. a searched Hadamard block) from the first batch."""
  variables = {"params": task.init_params(config, task.model(config, data), data, seed)}
  if variants.is_quantized(variant):
    variables = int4jax.nn.calibrate(model, variables,
                                     *task.model_inputs(task.train_batch(config, data, seed, 0)))
  params = variables.pop("params")
  state = {"params": params, "opt": tx.init(params), "step": jax.numpy.zeros((), "int32")}
  return state, variables


def make_train_step(task, config, model, tx, others, seed: int, state_sharding=None):
  """The jitted step (state, batch) -> (state, loss); keys from (seed, step). With
  state_sharding (a mesh run), the new state keeps the placement of the old."""

  @functools.partial(jax.jit, out_shardings=None if state_sharding is None
                     else (state_sharding, None))
  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.key(seed), state["step"])
    k_dropout, k_quant = jax.random.split(key)
    loss_fn = lambda p: task.loss(config, model, {"params": p, **others}, batch,
                                  {"dropout": k_dropout, "quant": k_quant})
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt,
            "step": state["step"] + 1}, loss

  return train_step


def _checkpointer(path: str):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(os.path.abspath(path),
                               options=ocp.CheckpointManagerOptions(max_to_keep=1))


def _resume_logs(run_dir: str, metrics_path: str, start: int) -> list:
  """For a run resumed at checkpoint `start`: drops the metrics records past `start` (they came
  after the checkpoint and are logged again) and returns the losses of the log window the
  checkpoint fell in (saved beside it), so the first record after the resume covers the same
  steps, with the same values, as in an uninterrupted run."""
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start]
    with open(metrics_path, "w") as f:
      f.writelines(kept)
  pending = _read_pending_window(run_dir)
  if pending.get("step") != start:
    raise RuntimeError(f"{run_dir}: the log window saved with the checkpoint is for step "
                       f"{pending.get('step')}, not the checkpoint's {start}; delete the run's "
                       "directory to start it over")
  return [np.float32(x) for x in pending["losses"]]


def _pending_window_path(run_dir: str) -> str:
  return os.path.join(run_dir, "pending_window.json")


def _read_pending_window(run_dir: str) -> dict:
  if not os.path.exists(_pending_window_path(run_dir)):
    return {}
  with open(_pending_window_path(run_dir)) as f:
    return json.load(f)


def _save_pending_window(run_dir: str, step: int, window) -> None:
  """The losses of the open log window at a checkpoint (written before the checkpoint, atomically
  replaced), for `_resume_logs`."""
  path = _pending_window_path(run_dir)
  with open(path + ".tmp", "w") as f:
    json.dump({"step": step, "losses": [float(x) for x in jax.device_get(window)]}, f)
  os.replace(path + ".tmp", path)


def _first_bad_loss(losses, first_step: int):
  for i, loss in enumerate(losses):
    if not np.isfinite(loss):
      return first_step + i, float(loss)
  return None


def tune_step(variant: str, train_step, state, batch) -> None:
  """On GPU, times the kernel choices of an INT4 step's GEMM shapes (int4jax.tune) before jit
  fixes them; nothing to do on CPU or for the float variants."""
  if (variants.is_quantized(variant)
      and int4jax.describe_backend("auto").name == "auto-tuned"):
    int4jax.tune(train_step, state, batch)


def train_one(config, workdir: str, variant: str, seed: int, data, *,
              stop_after: Optional[int] = None, progress: bool = True) -> Dict:
  """One (variant, seed) run; see the module doc. stop_after: leave after that many steps (a
  checkpoint is written there when checkpointing is on), as if interrupted."""
  task = tasks.task_for(config)
  run_dir = os.path.join(workdir, variant, f"seed_{seed}")
  os.makedirs(run_dir, exist_ok=True)
  model = build_model(task, config, data, variant)
  steps = total_steps(task, config, data)
  eval_every = config.eval_every or task.steps_per_epoch(config, data)

  tx, schedule = task.optimizer(config, steps)
  mesh = sharding.make_mesh(config.mesh) if config.mesh else None
  # everything that traces the model does it under the mesh: the INT4 FSDP gather places shards
  on_mesh = lambda: jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with on_mesh():
    state, others = initial_state(task, config, data, model, variant, seed, tx)
  state_sharding, batch_at = None, lambda step: task.train_batch(config, data, seed, step)
  if mesh is not None:
    state_sharding = sharding.tree_shardings(state, mesh, task.tensor_parallel, config.fsdp)
    state = jax.device_put(state, state_sharding)
    batch_at = lambda step: sharding.shard_batch(task.train_batch(config, data, seed, step), mesh)
  with on_mesh():
    train_step = make_train_step(task, config, model, tx, others, seed, state_sharding)
    tune_step(variant, train_step, state, batch_at(0))
    evaluate = make_evaluate(task, model)
    # precision annealing: from step `switch` on, the variant's anneal_to model (same state)
    spec = variants.VARIANTS[variant]
    switch = steps
    if spec.anneal_to is not None:
      switch = int(round(steps * (1 - spec.anneal_fraction)))
      late = build_model(task, config, data, spec.anneal_to)
      late_step = make_train_step(task, config, late, tx, others, seed, state_sharding)
      late_evaluate = make_evaluate(task, late)
    manager = _checkpointer(os.path.join(run_dir, "ckpt")) if config.checkpoint_every else None
    start = 0
    if manager is not None and manager.latest_step() is not None:
      import orbax.checkpoint as ocp
      start = manager.latest_step()
      state = manager.restore(start, args=ocp.args.StandardRestore(state))
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    resumed_window = _resume_logs(run_dir, metrics_path, start) if start else []
    if start == 0 and os.path.exists(metrics_path):
      os.remove(metrics_path)

    from tqdm import tqdm
    bar = tqdm(total=steps, initial=start, desc=f"{variant} seed {seed}", disable=not progress,
               leave=False, dynamic_ncols=True)
    window, window_start, window_ms = resumed_window, time.perf_counter(), []
    ran = 0  # steps of the open window run in this process (a resumed one began before)
    last_eval = None
    with open(metrics_path, "a") as log:
      write = lambda record: (log.write(json.dumps(record) + "\n"), log.flush())
      for step in range(start, steps):
        state, loss = (train_step if step < switch else late_step)(state, batch_at(step))
        window.append(loss)
        ran += 1
        done = step + 1
        if done % config.log_every == 0 or done == steps:
          losses = [float(x) for x in jax.device_get(window)]  # waits for the window's steps
          elapsed = time.perf_counter() - window_start
          bad = _first_bad_loss(losses, done - len(losses) + 1)
          if bad is not None:
            raise FloatingPointError(f"{variant} seed {seed}: loss is {bad[1]} at step {bad[0]}; "
                                     "aborting the run")
          window_ms.append(1e3 * elapsed / ran)
          write({"step": done, "loss": losses[-1], "loss_mean": float(np.mean(losses)),
                 "lr": float(schedule(step)),
                 "examples_per_s": round(ran * config.batch_size / elapsed, 1)})
          bar.update(ran)
          bar.set_postfix(loss=f"{np.mean(losses):.3f}")
          window, ran = [], 0
        if done % eval_every == 0 or done == steps:
          last_eval = (evaluate if done <= switch else late_evaluate)(
              {"params": state["params"], **others}, config, data)
          write({"step": done, **{f"eval_{k}": v for k, v in last_eval.items()}})
        if manager is not None and done % config.checkpoint_every == 0:
          import orbax.checkpoint as ocp
          _save_pending_window(run_dir, done, window)
          manager.save(done, args=ocp.args.StandardSave(state))
          manager.wait_until_finished()
        if not window:
          window_start = time.perf_counter()  # evaluation and checkpoints are not step time
        if stop_after is not None and done >= stop_after:
          bar.close()
          return {"stopped_at": done, "state": state}
    bar.close()
    variables = {"params": state["params"], **others}
    if last_eval is None:  # a resumed run that had nothing left to train
      last_eval = (evaluate if steps <= switch else late_evaluate)(variables, config, data)
    timed = window_ms[1:] or window_ms  # the first window includes compilation
    summary = {"variant": variant, "seed": seed, **last_eval, "steps": steps,
               "step_time_ms": round(statistics.median(timed), 2) if timed else None,
               **task.finish(config, model if steps <= switch else late, variables, data)}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
    summary["state"] = state
    return summary


def train_and_evaluate(config, workdir: str, *, progress: bool = True
                       ) -> Dict[str, Dict[int, Dict]]:
  """Every variant x seed of `config`: {variant: {seed: summary}} (summaries without state)."""
  task = tasks.task_for(config)
  data = task.load(config)
  results = {}
  for variant in config.variants:
    for seed in config.seeds:
      summary = train_one(config, workdir, variant, seed, data, progress=progress)
      summary.pop("state")
      results.setdefault(variant, {})[seed] = summary
      if progress:
        extras = "  ".join(f"{k} {summary[k]:.4f}" for k in task.extra_metrics)
        print(f"{config.task} {variant:17s} seed {seed}: {task.metric} "
              f"{summary[task.metric]:.4f}  {extras}  {summary['step_time_ms']} ms/step",
              flush=True)
        if "sample" in summary:
          print(f"sample:\n{summary['sample']}\n", flush=True)
  return results
