"""Forward error of each INT4 quantizer on the real activations of MiniLM-L6's linear layers.

  python -m experiments.analysis.layer_errors [--sentences 64] [--out FILE]

Feeds polarity training sentences through the float model, records every Dense layer's input,
and reports, per layer and config, ||int4_linear(x, W) - x W|| / ||x W|| (forward only, no
training). Shows where the HQ helps (outlier channels) and which block size each layer wants.
"""

import argparse
import datetime
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.models import bert
from experiments.data import corpora, pipeline
from int4jax import Int4Config, int4_linear
from int4jax.quantizers import search_hadamard_block

ONE_LEVEL = dict(scale_levels=1)
CEIL = dict(scale_search=1)  # the ceil rule alone (no multiplier search), pinned
CONFIGS = {
    "rtn per-tensor (no HQ)": Int4Config(hadamard_block=1, scale_mode="tensor", **ONE_LEVEL),
    "per-row (no HQ)": Int4Config(hadamard_block=1, **ONE_LEVEL),
    "HQ 32 per-tensor": Int4Config(scale_mode="tensor", **ONE_LEVEL),
    "HQ 32 per-row (old default)": Int4Config(**ONE_LEVEL),
    "HQ 128 per-row": Int4Config(hadamard_block=128, **ONE_LEVEL),
    "HQ 32 per-row clip 2.7 rms": Int4Config(scale_clip=2.7, **ONE_LEVEL),
    "HQ 32 two-level g32 L16": Int4Config(scale_group=32, **CEIL),
    "HQ 32 two-level g16 L8": Int4Config(scale_levels=8, **CEIL),
    "HQ 32 two-level g16 L16": Int4Config(**CEIL),
    "HQ 32 two-level g16 L16 clip 4 rms": Int4Config(scale_clip=4.0, **CEIL),
    "HQ 32 two-level g16 L16 clip 5 rms": Int4Config(scale_clip=5.0, **CEIL),
    "HQ 128 two-level g16 L16": Int4Config(hadamard_block=128, **CEIL),
    "HQ 32 two-level g16 L16 search 2": Int4Config(scale_search=2),
    "HQ 32 two-level g16 L16 search 3": Int4Config(scale_search=3),
    "HQ 32 two-level g16 L18 search 2": Int4Config(scale_levels=18, scale_search=2),
    "default": Int4Config(),
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sentences", type=int, default=64)
  parser.add_argument("--max_len", type=int, default=64)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  cfg, params, tok = bert.load_pretrained()
  texts, _ = pipeline.load_split("polarity", "train", corpora.default_cache_dir())
  arrays = pipeline.tokenize(tok, texts[:args.sentences], args.max_len)
  ids, mask = jnp.asarray(arrays["input_ids"]), jnp.asarray(arrays["mask"])
  inputs = {}

  def record(next_fun, args_, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      inputs["/".join(context.module.path)] = args_[0]
    return next_fun(*args_, **kwargs)

  with nn.intercept_methods(record):
    bert.BertEncoder(cfg).apply({"params": params}, ids, mask)
  rows, tokens = [], np.asarray(mask).reshape(-1)
  for path, x in inputs.items():
    node = params
    for part in path.split("/"):
      node = node[part]
    x2 = np.asarray(x).reshape(-1, x.shape[-1])[tokens]  # real tokens only, not padding
    w = jnp.asarray(node["kernel"])
    exact = x2 @ w
    row = {"layer": path, "in": int(x2.shape[1]),
           "max|x| / rms": round(float(np.abs(x2).max() / np.sqrt((x2 ** 2).mean())), 1),
           "searched block (default quantizer)": int(search_hadamard_block(
               jnp.asarray(x2), w, group=Int4Config().scale_group,
               levels=Int4Config().scale_levels, search=Int4Config().scale_search))}
    for name, c in CONFIGS.items():
      y = int4_linear(jnp.asarray(x2), w, config=c)
      row[name] = round(float(jnp.linalg.norm(y - exact) / jnp.linalg.norm(exact)), 4)
    rows.append(row)
  header = list(rows[0])
  lines = [f"# {datetime.date.today()}, jax {jax.__version__}, {jax.devices()[0].device_kind}, "
           f"{args.sentences} polarity train sentences, {int(tokens.sum())} tokens",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
  kinds = sorted({r["layer"].split("/", 1)[1] for r in rows})
  lines += ["", "mean per layer type:", "| layer type | " + " | ".join(CONFIGS) + " |",
            "|" + "---|" * (len(CONFIGS) + 1)]
  for kind in kinds:
    of_kind = [r for r in rows if r["layer"].split("/", 1)[1] == kind]
    lines.append(f"| {kind} | " + " | ".join(
        f"{np.mean([r[n] for r in of_kind]):.4f}" for n in CONFIGS) + " |")
  means = {n: round(float(np.mean([r[n] for r in rows])), 4) for n in CONFIGS}
  lines.append(f"\nmean relative output error over the {len(rows)} layers: {json.dumps(means)}")
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
