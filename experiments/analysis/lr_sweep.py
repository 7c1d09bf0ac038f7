"""The fp32 baseline's learning rate, chosen for fp32 alone: one fp32 run per peak learning rate,
everything else as the config says, and the held-out metric at each evaluation.

  python -m experiments.analysis.lr_sweep --task shakespeare --size cpu-char \
      --learning_rates 1e-3 2e-3 4e-3 [--steps N] [--seed 0]

Writes experiments/results/<task>_lr_sweep.{json,md} (runs under
experiments/workdir/<task>_lr_sweep/lr_<rate>/; finished runs are not repeated). The INT4
variants then train at the rate the sweep picked for fp32, never at one picked to shrink the gap.
The rate is picked on the held-out loss that later measures the gap: a choice that can only
favour fp32.
"""

import argparse
import datetime
import json
import os
from typing import Dict, Sequence

import jax

from experiments import report, tasks, train
from experiments.configs import TASKS, get_config


def sweep(config, learning_rates: Sequence[float], workdir: str, seed: int = 0) -> Dict:
  """{task, metric, higher_is_better, steps, seed, device, jax_version, date, runs: {rate:
  {final, curve: [[step, metric], ...]}}, best}: fp32 at each rate."""
  task = tasks.task_for(config)
  runs = {}
  for rate in learning_rates:
    run_dir = os.path.join(workdir, f"lr_{rate:g}")
    run = config.replace(learning_rate=rate, variants=("fp32",), seeds=(seed,))
    if seed not in report.collect(run_dir).get("fp32", {}):
      train.train_and_evaluate(run, run_dir)
    found = report.collect(run_dir)
    curve = report.eval_curves(run_dir, found, task.metric, task.metric_scale)["fp32"][str(seed)]
    runs[f"{rate:g}"] = {"final": round(found["fp32"][seed][task.metric] * task.metric_scale, 4),
                         "curve": curve}
  pick = min if not task.higher_is_better else max
  best = pick(runs, key=lambda r: runs[r]["final"])
  return {"task": config.task, "metric": task.metric, "higher_is_better": task.higher_is_better,
          "steps": train.total_steps(task, config, task.load(config)), "seed": seed,
          "device": f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)",
          "jax_version": jax.__version__, "date": datetime.date.today().isoformat(),
          "runs": runs, "best": best}


def markdown(result: Dict) -> str:
  steps = sorted({s for r in result["runs"].values() for s, _ in r["curve"]})
  lines = [f"# {result['task']}: fp32 learning-rate sweep", "",
           f"fp32 only, seed {result['seed']}, {result['steps']} steps, the config's schedule "
           f"otherwise; {result['device']}, jax {result['jax_version']}, {result['date']}. "
           f"Picked: {result['best']} (best final {result['metric']}).", "",
           "| peak lr | " + " | ".join(f"step {s}" for s in steps) + " |",
           "|---|" + "---:|" * len(steps)]
  for rate, r in result["runs"].items():
    at = dict(map(tuple, r["curve"]))
    cells = [f"{at[s]:.4f}" if s in at else "—" for s in steps]
    mark = " (picked)" if rate == result["best"] else ""
    lines.append(f"| {rate}{mark} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", choices=TASKS, required=True)
  parser.add_argument("--size", default="cpu")
  parser.add_argument("--learning_rates", nargs="+", type=float, required=True)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  config = get_config(args.task, args.size)
  if args.steps:
    config = config.replace(steps=args.steps)
  workdir = args.workdir or os.path.join("experiments", "workdir", f"{config.task}_lr_sweep")
  result = sweep(config, args.learning_rates, workdir, args.seed)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{config.task}_lr_sweep.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(args.out, f"{config.task}_lr_sweep.md"), "w") as f:
    f.write(markdown(result))
  print(markdown(result))


if __name__ == "__main__":
  main()
