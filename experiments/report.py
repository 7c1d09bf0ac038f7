"""Results of a workdir -> experiments/results/<task>.json, .md and .png, never typed by hand.

  python -m experiments.report --task polarity [--size cpu] [--workdir DIR]   # one task
  python -m experiments.report --summary bert_polarity bert_uncertainty   # README variant table
  python -m experiments.report --overview    # experiments/results/SUMMARY.md, every task

Reads every <workdir>/<variant>/seed_<s>/summary.json (finished runs) and metrics.jsonl (curves)
and writes:
  <task>.json  {task, title, metric, higher_is_better, metric_scale, device, jax_version, date,
               variants: {name: {mean, std, seeds, seed_ids, <extra>_mean, <extra>_std,
               step_time_ms, vs_fp32, vs_fp32_std, vs_fp32_rel (%), vs_fp32_seeds}},
               curves: {variant: {seed: [[step, metric], ...]}}}: values are
               metric * metric_scale (accuracy in %); vs_fp32 is paired on the seeds both ran
               (the .md lists the metric at every evaluation, and a loss's ratio to fp32)
  <task>.md    a table generated from that JSON
  <task>.png   training loss and the evaluation metric over training, per variant (and for a
               loss, its ratio to fp32's over training)
  logs/<task>/ the raw metrics logs
The metric and its direction come from the task (experiments.tasks); nothing assumes accuracy.
"""

import argparse
import datetime
import glob
import json
import os
import shutil
from typing import Dict, List

import jax
import numpy as np

from experiments import tasks
from experiments.configs import TASKS, get_config, sizes
from experiments.variants import VARIANTS

# The paper's INT4 (HQ+LSS) minus FP on the analogous task (Xi et al. 2023, tables 1-3), for
# SUMMARY.md, by task-name prefix. GPT: the paper reports throughput, not accuracy.
PAPER_GAPS = {
    "bert_": ("GLUE dev avg, BERT-base fine-tuning", "-1.86 points"),
    "gpt_": ("GPT-2 pre-training", "not reported (throughput only)"),
    "vit_": ("DeiT-Small trained from scratch on ImageNet-1k (a pretrained ViT-B/32 fine-tuned "
             "on CIFAR-10: -0.41)", "-3.92 points"),
    "transformer_": ("Transformer-base trained on WMT14 En-De (ours: De-En)", "-0.93 BLEU"),
}


def paper_gap(task: str) -> str:
  return next((" ".join(v) for k, v in PAPER_GAPS.items() if task.startswith(k)), "—")


def collect(workdir: str) -> Dict[str, Dict[int, Dict]]:
  runs = {}
  for path in sorted(glob.glob(os.path.join(workdir, "*", "seed_*", "summary.json"))):
    with open(path) as f:
      s = json.load(f)
    runs.setdefault(s["variant"], {})[int(s["seed"])] = s
  return runs


def summarize(config, runs: Dict[str, Dict[int, Dict]]) -> Dict:
  """The results JSON of `config`'s runs (see the module doc)."""
  task = tasks.task_for(config)
  metric, scale = task.metric, task.metric_scale
  out = {"task": config.task, "title": config.title, "metric": metric,
         "higher_is_better": task.higher_is_better, "metric_scale": scale,
         "device": f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)"
                   if jax.default_backend() == "cpu" else jax.devices()[0].device_kind,
         "jax_version": jax.__version__,
         "date": datetime.date.today().isoformat(), "variants": {}}
  for variant in [v for v in VARIANTS if v in runs]:
    seeds = sorted(runs[variant])
    vals = np.array([runs[variant][s][metric] for s in seeds]) * scale
    times = [runs[variant][s]["step_time_ms"] for s in seeds
             if runs[variant][s].get("step_time_ms") is not None]
    entry = {"mean": round(float(vals.mean()), 4), "std": round(float(vals.std()), 4),
             "seeds": [round(float(v), 4) for v in vals], "seed_ids": seeds}
    for extra in task.extra_metrics:
      x = np.array([runs[variant][s][extra] for s in seeds]) * scale
      entry[f"{extra}_mean"], entry[f"{extra}_std"] = (round(float(x.mean()), 4),
                                                       round(float(x.std()), 4))
    entry["step_time_ms"] = round(float(np.median(times)), 1) if times else None
    if "fp32" in runs and variant != "fp32":
      # paired on the seeds both ran, so a variant with fewer seeds is compared like for like
      shared = [s for s in seeds if s in runs["fp32"]]
      if shared:
        ours = np.array([runs[variant][s][metric] for s in shared]) * scale
        base = np.array([runs["fp32"][s][metric] for s in shared]) * scale
        entry["vs_fp32"] = round(float((ours - base).mean()), 4)
        entry["vs_fp32_std"] = round(float((ours - base).std()), 4)
        entry["vs_fp32_rel"] = round(float(100 * (ours - base).mean() / base.mean()), 3)
        entry["vs_fp32_seeds"] = shared
    out["variants"][variant] = entry
  return out


def _fmt(result: Dict, x: float) -> str:
  """2 decimals for accuracy-like metrics (in %), 4 for losses."""
  return f"{x:.2f}" if result.get("higher_is_better", True) else f"{x:.4f}"


def _metric_name(result: Dict) -> str:
  unit = " (%)" if result.get("metric_scale", 1.0) == 100.0 else ""
  better = "higher" if result.get("higher_is_better", True) else "lower"
  return f"{result['metric']}{unit}, {better} is better"


def _signed(result: Dict, x: float) -> str:
  text = _fmt(result, x)
  return text if text.startswith("-") else "+" + text


def _delta(result: Dict, v: Dict) -> str:
  """The paired gap to fp32; for a lower-is-better metric (a loss) also relative to fp32."""
  if "vs_fp32" not in v:
    return "—"
  rel = f" ({v['vs_fp32_rel']:+.2f}%)" if not result.get("higher_is_better", True) else ""
  return _signed(result, v["vs_fp32"]) + rel


def markdown(result: Dict) -> str:
  extras = [k[:-5] for k in next(iter(result["variants"].values()), {}) if k.endswith("_mean")]
  lines = [f"# {result.get('title') or result['task']}: {_metric_name(result)}", "",
           f"`{result['task']}`; {result['device']}, jax {result['jax_version']}, "
           f"{result['date']}", "",
           f"| variant | {result['metric']} mean ± std | vs fp32 (same seeds) | "
           + "".join(f"{e} mean ± std | " for e in extras) + "seeds | ms/step |",
           "|---|---:|---:|" + "---:|" * len(extras) + "---|---:|"]
  for name, v in result["variants"].items():
    lines.append(f"| {name} | {_fmt(result, v['mean'])} ± {_fmt(result, v['std'])} | "
                 f"{_delta(result, v)} | "
                 + "".join(f"{_fmt(result, v[e + '_mean'])} ± {_fmt(result, v[e + '_std'])} | "
                           for e in extras)
                 + f"{', '.join(_fmt(result, s) for s in v['seeds'])} | {v['step_time_ms']} |")
  lines += ["", "mean ± std over the seeds listed (population std); ms/step is each run's median "
            "training-step time, comparable only between runs that had the machine to "
            "themselves."]
  steps = by_step_markdown(result)
  return "\n".join(lines) + "\n" + ("\n" + steps if steps else "")


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
      f = lambda x: _fmt(r, x)
      delta = (f" ({_signed(r, v['vs_fp32'])} ± {f(v.get('vs_fp32_std', 0.0))})"
               if "vs_fp32" in v else "")
      n = len(v['seeds'])
      cells.append(f"{f(v['mean'])} ± {f(v['std'])}{delta} [{n} seed{'s' if n != 1 else ''}]")
    lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def overview(results: List[Dict]) -> str:
  """SUMMARY.md: per task, the metric for fp32 and the default int4, the gap, the paper's gap on
  the analogous task, and ms/step of both on the machine that ran them."""
  lines = ["# Results summary", "",
           "Generated by `python -m experiments.report --overview` from the results JSON files; "
           "each task's own table (`<task>.md`) has every variant. Gap: int4 − fp32, paired on "
           "shared seeds (relative % for losses).", "",
           "| task | metric | fp32 | int4 | gap | paper's gap (analogous task) | ms/step fp32 / "
           "int4 | machine, date |", "|---|---|---:|---:|---:|---|---:|---|"]
  for r in results:
    fp, q = r["variants"].get("fp32"), r["variants"].get("int4")
    cell = lambda v: (f"{_fmt(r, v['mean'])} ± {_fmt(r, v['std'])} [{len(v['seeds'])}]"
                      if v else "—")
    gap = _delta(r, q) if q else "—"
    paper = paper_gap(r["task"])
    ms = f"{fp['step_time_ms'] if fp else '—'} / {q['step_time_ms'] if q else '—'}"
    lines.append(f"| {r.get('title') or r['task']} (`{r['task']}`) | {_metric_name(r)} | "
                 f"{cell(fp)} | {cell(q)} | {gap} | {paper} | {ms} | {r['device']}, "
                 f"{r['date']} |")
  lines += ["", "[n]: seeds. ms/step compares fp32 and int4 of one task on one machine only."]
  return "\n".join(lines) + "\n"


def _order(variant: str):
  """experiments.variants order, then any other name alphabetically."""
  names = list(VARIANTS)
  return (names.index(variant), "") if variant in names else (len(names), variant)


def eval_curves(workdir: str, runs: Dict[str, Dict[int, Dict]], metric: str,
                scale: float = 1.0) -> Dict[str, Dict[str, List]]:
  """{variant: {seed: [[step, metric * scale], ...]}}: every evaluation of each finished run."""
  curves = {}
  for variant, seeds in sorted(runs.items(), key=lambda kv: _order(kv[0])):
    for seed in seeds:
      path = os.path.join(workdir, variant, f"seed_{seed}", "metrics.jsonl")
      points = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
      curves.setdefault(variant, {})[str(seed)] = [
          [r["step"], round(r[f"eval_{metric}"] * scale, 4)] for r in points
          if f"eval_{metric}" in r]
  return curves


def by_step(result: Dict) -> Dict[str, Dict[int, tuple]]:
  """{variant: {step: (mean metric, mean fp32 at that step)}} over the seeds the variant shares
  with fp32, at the steps both evaluated (fp32's own entry pairs with itself)."""
  curves, out = result.get("curves", {}), {}
  base = curves.get("fp32", {})
  for variant, seeds in curves.items():
    shared = [s for s in seeds if s in base]
    if not shared:
      continue
    points = {}
    for s in shared:
      ours, theirs = dict(map(tuple, seeds[s])), dict(map(tuple, base[s]))
      for step in ours.keys() & theirs.keys():
        points.setdefault(step, []).append((ours[step], theirs[step]))
    out[variant] = {step: (float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v])))
                    for step, v in sorted(points.items()) if len(v) == len(shared)}
  return out


def by_step_markdown(result: Dict) -> str:
  """The metric at each evaluation, per variant (mean over the seeds it shares with fp32), and
  for a loss its ratio to fp32's at the same step: the gap over training, not only at the end."""
  table = by_step(result)
  if "fp32" not in table or len(table["fp32"]) < 2:
    return ""
  loss = not result.get("higher_is_better", True)
  steps = sorted(table["fp32"])
  lines = [f"## {result['metric']} at each evaluation"
           + (" (ratio to fp32 at the same step, same seeds)" if loss else ""), "",
           "| variant | " + " | ".join(str(s) for s in steps) + " |",
           "|---|" + "---:|" * len(steps)]
  for variant, points in table.items():
    cells = []
    for step in steps:
      if step not in points:
        cells.append("—")
        continue
      ours, base = points[step]
      ratio = f" ({ours / base:.3f})" if loss and variant != "fp32" and base else ""
      cells.append(_fmt(result, ours) + ratio)
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def read_curves(workdir: str, variant: str, metric: str):
  """((steps, mean training loss), (steps, mean eval metric), number of seeds) over seeds."""
  losses, evals, seeds = {}, {}, 0
  for path in glob.glob(os.path.join(workdir, variant, "seed_*", "metrics.jsonl")):
    seeds += 1
    for line in open(path):
      r = json.loads(line)
      if "loss" in r:
        losses.setdefault(r["step"], []).append(r.get("loss_mean", r["loss"]))
      if f"eval_{metric}" in r:
        evals.setdefault(r["step"], []).append(r[f"eval_{metric}"])
  mean = lambda d: (sorted(d), [float(np.mean(d[k])) for k in sorted(d)])
  return mean(losses), mean(evals), seeds


def plot(result: Dict, workdir: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  metric, scale = result["metric"], result.get("metric_scale", 1.0)
  curves = {v: read_curves(workdir, v, metric) for v in result["variants"]}
  seeds = sorted({n for _, _, n in curves.values()})
  over = (f"seed {result['variants'][next(iter(curves))]['seed_ids'][0]}" if seeds == [1]
          else f"mean over {' or '.join(map(str, seeds))} seeds")
  one_point = all(len(es) <= 1 for (_, (es, _), _) in curves.values())
  ratios = by_step(result) if not result.get("higher_is_better", True) and not one_point else {}
  ratios = {v: p for v, p in ratios.items() if v != "fp32" and len(p) >= 2}
  fig, axes = plt.subplots(1, 3 if ratios else 2, figsize=(18 if ratios else 12, 4.2))
  ax_loss, ax_eval = axes[:2]
  if ratios:  # the gap over training: each variant's loss / fp32's, same seeds, same step
    for variant, points in ratios.items():
      axes[2].plot(list(points), [a / b for a, b in points.values()], marker="o", label=variant)
    axes[2].axhline(1.0, color="gray", lw=0.8)
    axes[2].set(xlabel="training step", ylabel=f"{metric} / fp32's (same seeds)",
                title="gap to fp32 over training")
    axes[2].legend(fontsize=8)
  for i, (variant, ((ls, lv), (es, ev), _)) in enumerate(curves.items()):
    ax_loss.plot(ls, lv, label=variant)
    if one_point and ev:
      ax_eval.bar(i, ev[0] * scale, label=variant)
      ax_eval.text(i, ev[0] * scale, _fmt(result, ev[0] * scale), ha="center", va="bottom")
    elif ev:
      ax_eval.plot(es, [scale * e for e in ev], marker="o", label=variant)
  unit = " (%)" if scale == 100.0 else ""
  ax_loss.set(xlabel="training step", ylabel=f"training loss ({over})", title="training loss")
  if one_point:
    ax_eval.set_xticks(range(len(curves)), list(curves), rotation=20, fontsize=8)
    ax_eval.set(ylabel=f"{metric}{unit}", title=f"final evaluation ({over})")
    values = [ev[0] * scale for (_, (_, ev), _) in curves.values() if ev]
    if values:
      pad = max(0.5 * (max(values) - min(values)), 0.02 * max(abs(x) for x in values))
      ax_eval.set_ylim(min(values) - 2 * pad, max(values) + pad)
  else:
    ax_eval.set(xlabel="training step", ylabel=f"{metric}{unit} ({over})",
                title="evaluation during training")
  ax_loss.legend(fontsize=8)
  fig.suptitle(result.get("title") or result["task"])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(config, workdir: str, out_dir: str = "experiments/results",
                 copy_logs: bool = True) -> Dict:
  runs = collect(workdir)
  if not runs:
    raise FileNotFoundError(f"no finished runs (summary.json) under {workdir}")
  result = summarize(config, runs)
  result["curves"] = eval_curves(workdir, runs, result["metric"], result["metric_scale"])
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{config.task}.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, f"{config.task}.md"), "w") as f:
    f.write(markdown(result))
  plot(result, workdir, os.path.join(out_dir, f"{config.task}.png"))
  if copy_logs:
    logs = os.path.join(out_dir, "logs", config.task)
    os.makedirs(logs, exist_ok=True)
    for variant, seeds in runs.items():
      for seed in seeds:
        src = os.path.join(workdir, variant, f"seed_{seed}", "metrics.jsonl")
        shutil.copy(src, os.path.join(logs, f"{variant}_seed{seed}.jsonl"))
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", choices=TASKS, default=None)
  parser.add_argument("--summary", nargs="+", default=None, metavar="TASK",
                      help="print one table of these tasks' results JSON (e.g. bert_polarity "
                           "bert_uncertainty) and write it to <out>/bert_summary.md")
  parser.add_argument("--overview", action="store_true",
                      help="write <out>/SUMMARY.md from every task's results JSON")
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
  if args.overview:
    names = list(dict.fromkeys(get_config(t, s).task for t in TASKS for s in sizes(t)))
    results = [json.load(open(os.path.join(args.out, f"{n}.json"))) for n in names
               if os.path.exists(os.path.join(args.out, f"{n}.json"))]
    text = overview(results)
    with open(os.path.join(args.out, "SUMMARY.md"), "w") as f:
      f.write(text)
    print(text)
    return
  if not args.task:
    parser.error("--task, --summary or --overview is required")
  config = get_config(args.task, args.size)
  workdir = args.workdir or os.path.join("experiments", "workdir", config.task)
  print(markdown(write_report(config, workdir, args.out)))


if __name__ == "__main__":
  main()
