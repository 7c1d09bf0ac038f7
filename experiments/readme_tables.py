"""The README's measured tables, generated from the committed results files (never typed).

  python -m experiments.readme_tables          # rewrite the marked blocks of README.md
  python -m experiments.readme_tables --check  # exit 1 if README.md is out of date

Each block sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` in README.md:
  bert-summary   experiments/results/bert_summary.md (python -m experiments.report --summary ...)
  bert-goal      the default's paired gap to fp32 per task, from experiments/results/bert_*.json
  results-summary  the table of experiments/results/SUMMARY.md (python -m experiments.report
                 --overview)
  lm-table       the table of experiments/results/gpt_shakespeare.md (every variant)
  lm-char-table  the tables of experiments/results/gpt_shakespeare_char.md (cpu-char: every
                 variant, and the loss at each evaluation with its ratio to fp32)
  lm-goal        the default's relative validation-loss gap per LM task, from gpt_shakespeare*.json
  scratch-goal   the default's gap on the ViT (points) and translation (BLEU) tasks
  vit-table      the table of experiments/results/vit_fashion_mnist.md
  translation-table  the table of experiments/results/transformer_de_en.md
  layer-errors   the mean row of experiments/results/bert_layer_errors.md
  cpu-bench      experiments/results/bench_cpu_linear.json
  mesh-scaling   experiments/results/mesh_scaling.md (python -m
                 experiments.benchmarks.mesh_scaling)
"""

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def layer_errors_table(text: str) -> str:
  means = json.loads(re.search(r"mean relative output error over the \d+ layers: (\{.*\})",
                               text).group(1))
  layers = re.search(r"over the (\d+) layers", text).group(1)
  lines = [f"| forward quantizer | mean relative error ({layers} layers) |", "|---|---:|"]
  lines += [f"| {name} | {value:.4f} |" for name, value in means.items()]
  return "\n".join(lines) + "\n"


def cpu_bench_table(result: dict) -> str:
  x, w = result["shape"]["x"], result["shape"]["kernel"]
  lines = [f"{result['date']}, jax {result['jax_version']}, {result['device']}; jitted fwd+bwd "
           f"of x {tuple(x)} @ kernel {tuple(w)}, median ms, variants interleaved:", "",
           "| variant | ms | × float32 |", "|---|---:|---:|"]
  lines += [f"| {r['variant']} | {r['median_ms']:.1f} | {r['ratio_vs_float32']:.3f} |"
            for r in result["rows"]]
  return "\n".join(lines) + "\n"


GOAL_POINTS = 1.0  # the fidelity goal: |int4 - fp32| <= 1.0 point with the default config
GOAL_LM_PERCENT = 2.0  # the LM goal: int4's validation loss within 2% of fp32's


def goal_lines(results, describe) -> str:
  """One line per task: describe(result, the default int4's entry), which states its paired gap
  to fp32 and whether the goal is met."""
  lines = []
  for r in results:
    v = r["variants"].get("int4")
    if v is None or "vs_fp32" not in v:
      lines.append(f"- **{r['task']}**: the default `int4` has no runs yet.")
      continue
    n = len(v["vs_fp32_seeds"])
    lines.append(f"- **{r['task']}**: {describe(r, v)} (paired, {n} seed{'s' if n != 1 else ''}).")
  return "\n".join(lines) + "\n"


def bert_goal(r, v) -> str:
  gap = v["vs_fp32"]
  verdict = "met" if abs(gap) <= GOAL_POINTS else f"missed by {abs(gap) - GOAL_POINTS:.2f}"
  return (f"default `int4` vs fp32 {gap:+.2f} ± {v['vs_fp32_std']:.2f} points; the goal "
          f"|gap| ≤ {GOAL_POINTS} is {verdict}")


def points_goal(unit: str):
  """describe(result, entry) for a higher-is-better metric whose goal is |gap| <= GOAL_POINTS."""
  def describe(r, v) -> str:
    gap = v["vs_fp32"]
    verdict = "met" if abs(gap) <= GOAL_POINTS else f"missed by {abs(gap) - GOAL_POINTS:.2f}"
    return (f"{r['title']}: default `int4` {v['mean']:.2f} against fp32 "
            f"{r['variants']['fp32']['mean']:.2f} {unit}, gap {gap:+.2f} ± "
            f"{v['vs_fp32_std']:.2f}; the goal |gap| ≤ {GOAL_POINTS} is {verdict}")
  return describe


def lm_goal(r, v) -> str:
  gap = v["vs_fp32_rel"]
  verdict = ("met" if gap <= GOAL_LM_PERCENT else
             f"missed by {gap - GOAL_LM_PERCENT:.2f} percentage points")
  return (f"{r['title']}: default `int4` validation loss {v['mean']:.4f} against fp32 "
          f"{r['variants']['fp32']['mean']:.4f}, {gap:+.2f}%; the goal ≤ +{GOAL_LM_PERCENT:g}% "
          f"is {verdict}")


def lm_results():
  """The LM tasks' results JSON (not the sweeps' or analyses' files beside them)."""
  found = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("gpt_shakespeare*.json"))]
  return [r for r in found if "variants" in r]


def task_table(text: str) -> str:
  """The variant table of a task's <task>.md (the report writes it under a title and a line)."""
  return text[text.index("| variant |"):]


def summary_table(text: str) -> str:
  """The table and its footnote from SUMMARY.md (its title and preamble stay there)."""
  return text[text.index("| task |"):]


def blocks() -> dict:
  return {
      "bert-summary": (RESULTS / "bert_summary.md").read_text(),
      "bert-goal": goal_lines([json.loads((RESULTS / f"{t}.json").read_text())
                               for t in ("bert_polarity", "bert_uncertainty")], bert_goal),
      "results-summary": summary_table((RESULTS / "SUMMARY.md").read_text()),
      "lm-table": task_table((RESULTS / "gpt_shakespeare.md").read_text()),
      "lm-goal": goal_lines(lm_results(), lm_goal),
      "lm-char-table": task_table((RESULTS / "gpt_shakespeare_char.md").read_text()),
      "scratch-goal": (goal_lines([json.loads((RESULTS / "vit_fashion_mnist.json").read_text())],
                                  points_goal("accuracy points"))
                       + goal_lines([json.loads((RESULTS / "transformer_de_en.json").read_text())],
                                    points_goal("BLEU"))),
      "vit-table": task_table((RESULTS / "vit_fashion_mnist.md").read_text()),
      "translation-table": task_table((RESULTS / "transformer_de_en.md").read_text()),
      "layer-errors": layer_errors_table((RESULTS / "bert_layer_errors.md").read_text()),
      "cpu-bench": cpu_bench_table(json.loads((RESULTS / "bench_cpu_linear.json").read_text())),
      "mesh-scaling": (RESULTS / "mesh_scaling.md").read_text(),
  }


def render(readme: str) -> str:
  for name, body in blocks().items():
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(readme):
      raise ValueError(f"README.md has no <!-- {name}:start/end --> block")
    readme = pattern.sub(lambda m: m.group(1) + body + m.group(2), readme)
  return readme


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--check", action="store_true")
  args = parser.parse_args(argv)
  path = ROOT / "README.md"
  old = path.read_text()
  new = render(old)
  if args.check:
    if new != old:
      print("README.md is out of date: run python -m experiments.readme_tables")
      sys.exit(1)
    return
  path.write_text(new)


if __name__ == "__main__":
  main()
