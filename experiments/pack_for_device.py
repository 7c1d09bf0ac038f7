"""Packs what the experiments read into one folder small enough to carry to a GPU machine
that has no network (the device tool carries at most 64 MiB per call).

  python -m experiments.pack_for_device [--out .device_data] [--tasks bert lm vision translation]

Writes <out>/model/{config.json, tokenizer.json, model.safetensors} with the weights in float16
(MiniLM-L6: 91 MB in float32, 45 MB in float16; the loader widens them back to float32, so the
only change is float16 rounding of the pretrained weights, |rel. error| <= 2^-11) and
<out>/data/tfds/ with both prepared corpora, and <out>/data/lm/ with the GPU LM configs'
Shakespeare tokenization, <out>/data/vision/ with Fashion-MNIST (compressed, about 30 MB) and
<out>/data/translation/ with the de-en verse pairs (about 3 MB). Everything together is over the
64 MiB a call carries: pack the tasks of one call with --tasks. On the GPU machine:

  python -m experiments.main --task polarity --size gpu --data_dir <out>/data \\
      --model_dir <out>/model
  python -m experiments.main --task shakespeare --size gpu --data_dir <out>/data
  python -m experiments.main --task fashion_mnist --size gpu --data_dir <out>/data
"""

import argparse
import os
import shutil

import numpy as np

from experiments.configs import get_config, sizes
from experiments.data import bible, corpora, images, shakespeare, tfds_corpora
from experiments.models import bert


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default=".device_data")
  parser.add_argument("--data_dir", default=corpora.default_cache_dir())
  parser.add_argument("--tasks", nargs="+", default=list(PACKERS), choices=list(PACKERS))
  args = parser.parse_args(argv)
  for name in args.tasks:
    PACKERS[name](args)
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
  print(f"{args.out}: {total / 2**20:.1f} MiB" + (" (over the 64 MiB one call carries: use "
                                                   "--tasks)" if total > 64 * 2**20 else ""))


def pack_bert(args):
  from safetensors.numpy import load_file, save_file
  src = bert.minilm_dir(args.data_dir)
  model_out = os.path.join(args.out, "model")
  os.makedirs(model_out, exist_ok=True)
  weights = load_file(os.path.join(src, "model.safetensors"))
  save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in weights.items()},
            os.path.join(model_out, "model.safetensors"))
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(os.path.join(src, name), os.path.join(model_out, name))
  for name in corpora.CORPORA:
    b = tfds_corpora.build(name, args.data_dir)
    dst = os.path.join(args.out, "data", os.path.relpath(b.data_dir, args.data_dir))
    shutil.copytree(b.data_dir, dst, dirs_exist_ok=True)


def pack_lm(args):
  for vocab in {get_config("shakespeare", s).vocab_size for s in sizes("shakespeare")
                if s.startswith("gpu")}:
    shakespeare.prepare("shakespeare", vocab, args.data_dir)  # cached after the first time
    rel = os.path.join("lm", "shakespeare", f"bpe{vocab}")
    shutil.copytree(os.path.join(args.data_dir, rel), os.path.join(args.out, "data", rel),
                    dirs_exist_ok=True)


def pack_vision(args):
  images.load_fashion_mnist(args.data_dir)  # cached after the first time
  rel = os.path.join("vision", "fashion_mnist.npz")
  os.makedirs(os.path.join(args.out, "data", "vision"), exist_ok=True)
  shutil.copy(os.path.join(args.data_dir, rel), os.path.join(args.out, "data", rel))


def pack_translation(args):
  bible.load_pairs(args.data_dir)  # cached after the first time
  rel = os.path.join("translation", "bible_de_en.tsv.gz")
  os.makedirs(os.path.join(args.out, "data", "translation"), exist_ok=True)
  shutil.copy(os.path.join(args.data_dir, rel), os.path.join(args.out, "data", rel))


PACKERS = {"bert": pack_bert, "lm": pack_lm, "vision": pack_vision,
           "translation": pack_translation}


if __name__ == "__main__":
  main()
