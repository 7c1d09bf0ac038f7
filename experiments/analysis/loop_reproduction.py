"""Does the task-agnostic loop reproduce the BERT runs of the loop it replaced?

  python -m experiments.analysis.loop_reproduction [--task polarity] [--variant int4] [--seed 0]
                                                   [--stop_after N]

Reruns one committed BERT run through experiments.train (into a scratch workdir) and compares,
at every logged step, its loss with the committed log (experiments/results/logs/<task>/), and
its final evaluation with the committed one. Writes
experiments/results/loop_reproduction_<task>_<variant>_seed<seed>.md.
"""

import argparse
import datetime
import json
import os
import tempfile

import jax

from experiments import tasks, train
from experiments.configs import get_config


def read_log(path):
  rows = [json.loads(line) for line in open(path)]
  losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
  evals = {r["step"]: r for r in rows if any(k.startswith("eval_") for k in r)}
  return losses, evals


def compare(config, variant: str, seed: int, committed: str, stop_after=None):
  """(markdown rows, [identical?] per logged value): a rerun of (variant, seed) through the
  loop against the log `committed`."""
  task = tasks.task_for(config)
  old_losses, old_evals = read_log(committed)
  with tempfile.TemporaryDirectory() as workdir:
    train.train_one(config, workdir, variant, seed, task.load(config), stop_after=stop_after,
                    progress=False)
    new_losses, new_evals = read_log(os.path.join(workdir, variant, f"seed_{seed}",
                                                  "metrics.jsonl"))
  rows, same = [], []
  for step in sorted(new_losses):
    old, new = old_losses.get(step), new_losses[step]
    same.append(old == new)
    rel = f"{abs(new - old) / abs(old):.1e}" if old else "—"
    rows.append(f"| {step} | {old} | {new} | {'yes' if same[-1] else 'no, rel. ' + rel} |")
  for step in sorted(new_evals):
    old = {k: v for k, v in old_evals.get(step, {}).items() if k.startswith("eval_")}
    new = {k: v for k, v in new_evals[step].items() if k.startswith("eval_")}
    same.append(old == new)
    rows.append(f"| {step} (eval) | {old} | {new} | {'yes' if same[-1] else 'no'} |")
  return rows, same


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="polarity")
  parser.add_argument("--variant", default="int4")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--stop_after", type=int, default=None, help="compare only this prefix")
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  config = get_config(args.task)
  committed = os.path.join(args.out, "logs", config.task, f"{args.variant}_seed{args.seed}.jsonl")
  rows, same = compare(config, args.variant, args.seed, committed, args.stop_after)
  lines = [f"# The new loop against the committed `{config.task}` run `{args.variant}` seed "
           f"{args.seed}", "", f"{jax.devices()[0].device_kind}, jax {jax.__version__}, "
           f"{datetime.date.today().isoformat()}; committed log: `{committed}`", "",
           "| step | loss (committed) | loss (new loop) | identical |", "|---:|---:|---:|---|",
           *rows, "", f"{sum(same)} of {len(same)} logged values identical."]
  text = "\n".join(lines) + "\n"
  name = f"loop_reproduction_{config.task}_{args.variant}_seed{args.seed}.md"
  with open(os.path.join(args.out, name), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
