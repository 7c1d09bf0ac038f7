"""Training-step time of a task config: fp32, the bf16 / FP8 baselines and INT4 variants.

  python -m experiments.benchmarks.train_step --task shakespeare --size cpu
      [--variants fp32 bf16 fp8 int4]
      [--data_dir DIR] [--tiny]

Builds each variant's model and jitted step exactly as experiments.train does (one real batch,
the task's optimizer), records each step's compile time and XLA's memory analysis of the
compiled program (temporaries, arguments, outputs), then times the steps round-robin (benchmarks.timer.time_interleaved), so
a slow spell of a shared machine hits every variant alike. Prints and writes
experiments/results/train_step_<task>.{json,md}: median ms per step and the ratios to fp32 and
to bf16 (the GPU goals' baseline; experiments.baselines).
--tiny shrinks an LM config to one narrow block on short sequences (the GPU script's CPU run).
"""

import argparse

from experiments import tasks, train
from experiments.benchmarks import timer
from experiments.configs import TASKS, get_config

# --tiny: the LM shrunk so that a CPU times it in seconds (vocabulary and data unchanged)
TINY_LM = dict(num_layers=1, hidden_size=32, num_heads=2, seq_len=16, batch_size=4)


def step_fn(task, config, data, variant: str):
  """(jitted step(state, batch), initial state) of one variant: experiments.train's own."""
  model = train.build_model(task, config, data, variant)
  tx, _ = task.optimizer(config, 100)
  state, others = train.initial_state(task, config, data, model, variant, 0, tx)
  return train.make_train_step(task, config, model, tx, others, 0), state


def run(config, variants, repeats: int):
  task = tasks.task_for(config)
  data = task.load(config)
  batch = task.train_batch(config, data, 0, 0)
  fns, compiled = {}, {}
  for v in variants:
    fn, state = step_fn(task, config, data, v)
    train.tune_step(v, fn, state, batch)  # as the loop does, before the first (timed) call
    compiled[v] = compile_stats(fn, state, batch)
    fns[v] = (lambda f, s: (lambda b: f(s, b)))(fn, state)  # same state every call
  ms = timer.time_interleaved(fns, [(batch,)], repeats)
  ratio = lambda t, base: round(t / ms[base], 3) if base in ms else None
  return [{"variant": v, "median_ms": round(t, 2), "ratio_vs_fp32": ratio(t, "fp32"),
           "ratio_vs_bf16": ratio(t, "bf16"), **compiled[v]} for v, t in ms.items()]


def compile_stats(fn, state, batch) -> dict:
  """The step's compile time (lower + compile, s) and XLA's memory analysis of the compiled
  program (MiB): temporaries (activations and residuals live in the step), arguments, outputs.
  The memory figures come from the compiler, so a CPU compile gives them for any shape."""
  import time
  start = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  seconds = time.perf_counter() - start
  stats = {"compile_s": round(seconds, 2)}
  memory = compiled.memory_analysis()
  if memory is not None:
    mib = lambda n: round(n / 2 ** 20, 2)
    stats.update(temp_mib=mib(memory.temp_size_in_bytes),
                 argument_mib=mib(memory.argument_size_in_bytes),
                 output_mib=mib(memory.output_size_in_bytes))
  return stats


def markdown(result) -> str:
  lines = [f"{result['device']}, jax {result['jax_version']}, {result['date']}; "
           f"`{result['task']}`, batch {result['batch_size']}, median of {result['repeats']} "
           "steps per variant, variants interleaved", "",
           "| variant | ms/step | × fp32 | × bf16 | compile s | temp MiB | argument MiB | "
           "output MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['variant']} | {r['median_ms']:.1f} | {r['ratio_vs_fp32']} | "
            f"{r.get('ratio_vs_bf16')} | {r.get('compile_s')} | {r.get('temp_mib')} | "
            f"{r.get('argument_mib')} | {r.get('output_mib')} |" for r in result["rows"]]
  lines += ["", "compile s: lowering and compiling the step once; MiB: XLA's memory analysis of "
            "the compiled step (temp: what lives during the step, the saved residuals among it)"]
  return "\n".join(lines) + "\n"


def config_parser(doc: str) -> argparse.ArgumentParser:
  """The step benchmarks' shared arguments: --task, --size, --data_dir, --tiny, --name, --out."""
  parser = argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", choices=TASKS, default="shakespeare")
  parser.add_argument("--size", default="cpu")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--tiny", action="store_true", help="shrink an LM config (CPU checks)")
  parser.add_argument("--name", default=None, help="output file name (default <kind>_<task>)")
  parser.add_argument("--out", default="experiments/results")
  return parser


def config_from(args, parser):
  """The task config those arguments name (with --data_dir, and --tiny's shrunk LM)."""
  config = get_config(args.task, args.size)
  if args.data_dir:
    config = config.replace(data_dir=args.data_dir)
  if args.tiny:
    if config.kind != "lm":
      parser.error("--tiny shrinks the LM configs only")
    config = config.replace(**TINY_LM)
  return config


def main(argv=None):
  parser = config_parser(__doc__)
  parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args(argv)
  config = config_from(args, parser)
  rows = run(config, args.variants, args.repeats)
  for r in rows:
    print(f"{r['variant']:18s} {r['median_ms']:9.2f} ms/step  x{r['ratio_vs_fp32']} fp32  "
          f"x{r['ratio_vs_bf16']} bf16")
  timer.write_results(rows, args.name or f"train_step_{config.task}", args.out,
                      {"task": config.task, "batch_size": config.batch_size,
                       "repeats": args.repeats}, markdown)


if __name__ == "__main__":
  main()
