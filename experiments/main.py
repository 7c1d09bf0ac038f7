"""Run an experiment: every variant x seed of a task config, then its report.

  python -m experiments.main --task polarity|uncertainty|shakespeare|fashion_mnist|translation
                             [--size cpu|gpu|...]
                             [--variants fp32 int4] [--seeds 0 1 2] [--steps N]
                             [--workdir DIR] [--data_dir DIR] [--model_dir DIR] [--dataset NAME]
                             [--mesh data=4,model=2 [--fsdp]]

Prepares the data on first use, trains (experiments.train, the one loop for every task), and
writes experiments/results/<task>.{json,md,png} with the raw logs (experiments.report). Runs
that already finished in the workdir are not repeated, and an interrupted run resumes from its
latest checkpoint, so an interrupted command can simply be rerun.
"""

import argparse
import json
import os

from experiments import report, train
from experiments.configs import TASKS, get_config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", choices=TASKS, required=True)
  parser.add_argument("--size", default="cpu", help="cpu, gpu, or a task's other sizes")
  parser.add_argument("--variants", nargs="+", default=None)
  parser.add_argument("--seeds", nargs="+", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--dataset", default=None,
                      help="a tfds dataset instead of the offline default, read with the "
                           "config's feature names and classes (e.g. glue/sst2, cifar10, "
                           "wmt14_translate/de-en; needs internet the first time)")
  parser.add_argument("--model_dir", default=None,
                      help="BERT tasks: a Hugging Face BERT dir (default: MiniLM-L6)")
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--checkpoint_every", type=int, default=50)
  parser.add_argument("--mesh", default=None,
                      help='a device mesh, e.g. "data=4,model=2" (experiments.sharding)')
  parser.add_argument("--fsdp", action="store_true", help="with --mesh: split params over data")
  args = parser.parse_args(argv)
  config = get_config(args.task, args.size).replace(checkpoint_every=args.checkpoint_every)
  if args.model_dir and not hasattr(config, "model_dir"):
    parser.error(f"--model_dir applies to the BERT tasks, not to {args.task}")
  changes = {"variants": tuple(args.variants) if args.variants else None,
             "seeds": tuple(args.seeds) if args.seeds else None, "steps": args.steps,
             "data_dir": args.data_dir, "model_dir": args.model_dir, "dataset": args.dataset,
             "mesh": args.mesh, "fsdp": args.fsdp or None}
  config = config.replace(**{k: v for k, v in changes.items() if v is not None})
  workdir = args.workdir or os.path.join("experiments", "workdir", config.task)
  done = report.collect(workdir)
  todo = [(v, s) for v in config.variants for s in config.seeds if s not in done.get(v, {})]
  print(f"{config.task}: {len(todo)} runs to do, {sum(map(len, done.values()))} done in "
        f"{workdir}", flush=True)
  for variant, seed in todo:
    train.train_and_evaluate(config.replace(variants=(variant,), seeds=(seed,)), workdir)
    report.write_report(config, workdir, args.out)
  print(report.markdown(json.load(open(os.path.join(args.out, f"{config.task}.json")))))


if __name__ == "__main__":
  main()
