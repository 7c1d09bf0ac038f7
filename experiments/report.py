"""Results of a workdir -> experiments/results/<task>.json, .md and .png, never typed by hand.

  python -m experiments.report --task polarity --workdir experiments/workdir/bert_polarity
  python -m experiments.report --summary bert_polarity bert_uncertainty   # the README's table

Reads every <workdir>/<variant>/seed_<s>/summary.json (finished runs) and metrics.jsonl (curves),
writes {task, metric, higher_is_better, device, jax_version, date, variants: {name: {mean, std,
seeds, seed_ids, f1_mean, f1_std, step_time_ms, vs_fp32 (paired on shared seeds)}}}, a markdown table generated from that JSON, a PNG of the
loss and eval-accuracy curves of all variants, and copies the raw metrics logs next to them.
"""

import argparse
import datetime
import glob
import json
import os
import shutil
from typing import Dict

import jax
import numpy as np

from experiments.configs import get_config
from experiments.variants import VARIANTS


def collect(workdir: str) -> Dict[str, Dict[int, Dict]]:
  runs = {}
  for path in sorted(glob.glob(os.path.join(workdir, "*", "seed_*", "summary.json"))):
    with open(path) as f:
      s = json.load(f)
    runs.setdefault(s["variant"], {})[int(s["seed"])] = s
  return runs


def summarize(task: str, metric: str, runs: Dict[str, Dict[int, Dict]]) -> Dict:
  out = {"task": task, "metric": metric, "higher_is_better": True,
         "device": f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)"
                   if jax.default_backend() == "cpu" else jax.devices()[0].device_kind,
         "jax_version": jax.__version__,
         "date": datetime.date.today().isoformat(), "variants": {}}
  for variant in [v for v in VARIANTS if v in runs]:
    seeds = sorted(runs[variant])
    vals = np.array([runs[variant][s][metric] for s in seeds]) * 100
    f1 = np.array([runs[variant][s]["f1"] for s in seeds]) * 100
    times = [runs[variant][s]["step_time_ms"] for s in seeds
             if runs[variant][s].get("step_time_ms") is not None]
    out["variants"][variant] = {
        "mean": round(float(vals.mean()), 2), "std": round(float(vals.std()), 2),
        "seeds": [round(float(v), 2) for v in vals], "seed_ids": seeds,
        "f1_mean": round(float(f1.mean()), 2), "f1_std": round(float(f1.std()), 2),
        "step_time_ms": round(float(np.median(times)), 1) if times else None}
    if "fp32" in runs and variant != "fp32":
      # paired on the seeds both ran, so a variant with fewer seeds is compared like for like
      shared = [s for s in seeds if s in runs["fp32"]]
      if shared:
        diffs = np.array([runs[variant][s][metric] - runs["fp32"][s][metric] for s in shared])
        out["variants"][variant]["vs_fp32"] = round(float(diffs.mean() * 100), 2)
        out["variants"][variant]["vs_fp32_std"] = round(float(diffs.std() * 100), 2)
        out["variants"][variant]["vs_fp32_seeds"] = shared
  return out


def markdown(result: Dict) -> str:
  lines = [f"# {result['task']}: {result['metric']} (%) on the test split",
           "", f"{result['device']}, jax {result['jax_version']}, {result['date']}", "",
           f"| variant | {result['metric']} mean ± std | vs fp32 (same seeds) | F1 mean ± std | "
           "seeds | ms/step |", "|---|---:|---:|---:|---|---:|"]
  for name, v in result["variants"].items():
    delta = f"{v['vs_fp32']:+.2f}" if "vs_fp32" in v else "—"
    lines.append(f"| {name} | {v['mean']:.2f} ± {v['std']:.2f} | {delta} | "
                 f"{v['f1_mean']:.2f} ± {v['f1_std']:.2f} | "
                 f"{', '.join(f'{s:.2f}' for s in v['seeds'])} | {v['step_time_ms']} |")
  lines += ["", "mean ± std over the seeds listed (population std); ms/step is each run's median "
            "training-step time, comparable only between runs that had the machine to "
            "themselves."]
  return "\n".join(lines) + "\n"


def summary_table(results) -> str:
  """One markdown table of several tasks' results: variant x task, mean ± std (paired
  difference to fp32 ± its std over seeds) [seeds]. Used for the README's results."""
  names = [v for v in VARIANTS if any(v in r["variants"] for r in results)]
  lines = ["| variant | " + " | ".join(r["task"] for r in results) + " |",
           "|---|" + "---:|" * len(results)]
  for name in names:
    cells = []
    for r in results:
      v = r["variants"].get(name)
      if v is None:
        cells.append("—")
        continue
      delta = (f" ({v['vs_fp32']:+.2f} ± {v.get('vs_fp32_std', 0.0):.2f})"
               if "vs_fp32" in v else "")
      n = len(v['seeds'])
      cells.append(f"{v['mean']:.2f} ± {v['std']:.2f}{delta} [{n} seed{'s' if n != 1 else ''}]")
    lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def read_curves(workdir: str, variant: str):
  losses, evals = {}, {}
  for path in glob.glob(os.path.join(workdir, variant, "seed_*", "metrics.jsonl")):
    for line in open(path):
      r = json.loads(line)
      if "loss" in r:
        losses.setdefault(r["step"], []).append(r["loss"])
      if "eval_accuracy" in r:
        evals.setdefault(r["step"], []).append(r["eval_accuracy"])
  mean = lambda d: (sorted(d), [float(np.mean(d[k])) for k in sorted(d)])
  return mean(losses), mean(evals)


def plot(result: Dict, workdir: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  for variant in result["variants"]:
    (ls, lv), (es, ev) = read_curves(workdir, variant)
    ax_loss.plot(ls, lv, label=variant)
    ax_acc.plot(es, [100 * v for v in ev], marker="o", label=variant)
  ax_loss.set(xlabel="step", ylabel="training loss (mean over seeds)", title=result["task"])
  ax_acc.set(xlabel="step", ylabel=f"eval {result['metric']} (%)", title="evaluation")
  ax_loss.legend(fontsize=8)
  ax_acc.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(task: str, workdir: str, out_dir: str = "experiments/results",
                 metric: str = "accuracy", copy_logs: bool = True) -> Dict:
  runs = collect(workdir)
  if not runs:
    raise FileNotFoundError(f"no finished runs (summary.json) under {workdir}")
  result = summarize(task, metric, runs)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{task}.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, f"{task}.md"), "w") as f:
    f.write(markdown(result))
  plot(result, workdir, os.path.join(out_dir, f"{task}.png"))
  if copy_logs:
    logs = os.path.join(out_dir, "logs", task)
    os.makedirs(logs, exist_ok=True)
    for variant, seeds in runs.items():
      for seed in seeds:
        src = os.path.join(workdir, variant, f"seed_{seed}", "metrics.jsonl")
        shutil.copy(src, os.path.join(logs, f"{variant}_seed{seed}.jsonl"))
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--task", default=None)
  parser.add_argument("--summary", nargs="+", default=None, metavar="TASK",
                      help="print one table of these tasks' results JSON (e.g. bert_polarity "
                           "bert_uncertainty) and write it to <out>/bert_summary.md")
  parser.add_argument("--size", default="cpu")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  if args.summary:
    results = [json.load(open(os.path.join(args.out, f"{t}.json"))) for t in args.summary]
    table = summary_table(results)
    with open(os.path.join(args.out, "bert_summary.md"), "w") as f:
      f.write(table)
    print(table)
    return
  if not args.task:
    parser.error("--task or --summary is required")
  config = get_config(args.task, args.size)
  workdir = args.workdir or os.path.join("experiments", "workdir", config.task)
  result = write_report(config.task, workdir, args.out, config.metric)
  print(markdown(result))


if __name__ == "__main__":
  main()
