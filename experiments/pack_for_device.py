"""Packs what the experiments read into one folder small enough to carry to a GPU machine
that has no network (the device tool carries at most 64 MiB per call).

  python -m experiments.pack_for_device [--out .device_data]

Writes <out>/model/{config.json, tokenizer.json, model.safetensors} with the weights in float16
(MiniLM-L6: 91 MB in float32, 45 MB in float16; the loader widens them back to float32, so the
only change is float16 rounding of the pretrained weights, |rel. error| <= 2^-11) and
<out>/data/tfds/ with both prepared corpora, and <out>/data/lm/ with the GPU LM configs'
Shakespeare tokenization. On the GPU machine:

  python -m experiments.main --task polarity --size gpu --data_dir <out>/data \\
      --model_dir <out>/model
  python -m experiments.main --task shakespeare --size gpu --data_dir <out>/data
"""

import argparse
import os
import shutil

import numpy as np

from experiments.configs import get_config, sizes
from experiments.data import corpora, shakespeare, tfds_corpora
from experiments.models import bert


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default=".device_data")
  parser.add_argument("--data_dir", default=corpora.default_cache_dir())
  args = parser.parse_args(argv)
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
  for vocab in {get_config("shakespeare", s).vocab_size for s in sizes("shakespeare")
                if s.startswith("gpu")}:
    shakespeare.prepare("shakespeare", vocab, args.data_dir)  # cached after the first time
    rel = os.path.join("lm", "shakespeare", f"bpe{vocab}")
    shutil.copytree(os.path.join(args.data_dir, rel), os.path.join(args.out, "data", rel),
                    dirs_exist_ok=True)
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
  print(f"{args.out}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
  main()
