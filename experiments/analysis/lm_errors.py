"""Where INT4's forward error goes in the character-level LM: per block linear layer, and in the
attention logits and probabilities that INT4 query/key projections perturb, at init and trained.

  python -m experiments.analysis.lm_errors --checkpoint DIR [--windows 8] [--out FILE]

DIR: an orbax checkpoint directory of a cpu-char run (experiments.main --checkpoint_every N
keeps the latest under <workdir>/<variant>/seed_<s>/ckpt). Runs the float model on the first
`windows` validation windows and records each Dense layer's input. For each layer and forward
config: ||int4_linear(x, W) - x W|| / ||x W||. For each block's attention: q and k from the float
inputs through int4_linear (default config, or query/key at 8 bits), then the relative error of
the causal logits q k^T / sqrt(d) and the mean total-variation distance of each softmax row
(0.5 sum |p - p^|), both against the float q and k. Init: the run's seed's init params.
"""

import argparse
import datetime
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments import tasks
from experiments.configs import get_config
from int4jax import Int4Config, int4_linear

CONFIGS = {"int4 (default)": Int4Config(), "int4 per-row": Int4Config(scale_levels=1),
           "int4 hq128": Int4Config(hadamard_block=128),
           "int8 forward": Int4Config(forward_bits=8, scale_levels=1)}


def _node(params, path):
  for part in path.split("/"):
    params = params[part]
  return params


def _dense_inputs(model, params, tokens):
  inputs = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      inputs["/".join(context.module.path)] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({"params": params}, tokens)
  return inputs


_int4_linear = jax.jit(int4_linear, static_argnames="config")


def _project(x, layer, config, bias=True):
  x2 = x.reshape(-1, x.shape[-1])
  y = x2 @ layer["kernel"] if config is None else _int4_linear(x2, layer["kernel"], config=config)
  y = y + layer["bias"][None] if bias else y
  return y.reshape(x.shape[:-1] + (-1,))


def attention_errors(x, attn, heads: int, config):
  """(relative logit error, mean softmax-row total variation) of INT4 q/k at `config`."""
  b, t, d = x.shape
  split = lambda y: y.reshape(b, t, heads, d // heads)
  logits = lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads)
  exact = logits(split(_project(x, attn["query"], None)), split(_project(x, attn["key"], None)))
  approx = logits(split(_project(x, attn["query"], config)),
                  split(_project(x, attn["key"], config)))
  causal = jnp.tril(jnp.ones((t, t), bool))
  diff = jnp.where(causal, approx - exact, 0.0)
  rel = float(jnp.linalg.norm(diff) / jnp.linalg.norm(jnp.where(causal, exact, 0.0)))
  masked = lambda z: jnp.where(causal, z, -jnp.inf)
  p, p_hat = jax.nn.softmax(masked(exact), -1), jax.nn.softmax(masked(approx), -1)
  tv = float(0.5 * jnp.mean(jnp.sum(jnp.abs(p - p_hat), -1)))
  return rel, tv


def errors(config, params, tokens):
  """{"layers": {path: {config name: rel error}}, "attention": {block: {config name:
  [logit rel error, softmax TV]}}}"""
  task = tasks.task_for(config)
  model = task.model(config, None)
  inputs = _dense_inputs(model, params, tokens)
  out = {"layers": {}, "attention": {}}
  for path, x in sorted(inputs.items()):
    if path == "lm_head":
      continue
    layer = _node(params, path)
    exact = _project(x, layer, None, bias=False)  # the GEMM's error: x W, no bias
    out["layers"][path] = {name: round(float(jnp.linalg.norm(_project(x, layer, c, False) - exact)
                                             / jnp.linalg.norm(exact)), 4)
                           for name, c in CONFIGS.items()}
  for block in sorted({p.split("/")[0] for p in inputs if p.startswith("block_")}):
    x = inputs[f"{block}/attn/query"]
    out["attention"][block] = {
        name: [round(v, 4) for v in attention_errors(x, params[block]["attn"], config.num_heads,
                                                      c)]
        for name, c in CONFIGS.items()}
  return out


def restore_params(checkpoint_dir: str):
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
  return manager.restore(step)["params"], step


def markdown(result) -> str:
  names = list(CONFIGS)
  lines = ["# Forward error of the character-level LM's layers, at init and trained", "",
           f"{result['source']}; {result['tokens']} validation tokens; {result['date']}, jax "
           f"{result['jax_version']}. `python -m experiments.analysis.lm_errors`.", ""]
  for stage in ("init", "trained"):
    r = result[stage]
    lines += [f"## {stage}: relative output error per layer", "",
              "| layer | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {p} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |"
              for p, v in r["layers"].items()]
    kinds = sorted({p.split("/", 1)[1] for p in r["layers"]})
    lines += ["", "mean per layer type:", "", "| layer type | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for kind in kinds:
      rows = [v for p, v in r["layers"].items() if p.split("/", 1)[1] == kind]
      lines.append(f"| {kind} | " + " | ".join(f"{np.mean([v[n] for v in rows]):.4f}"
                                                for n in names) + " |")
    lines += ["", f"## {stage}: attention, q and k through the config (logit relative error / "
              "mean softmax-row total variation)", "",
              "| block | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {b} | " + " | ".join(f"{v[n][0]:.4f} / {v[n][1]:.4f}" for n in names) + " |"
              for b, v in r["attention"].items()]
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--size", default="cpu-char")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--windows", type=int, default=8)
  parser.add_argument("--out", default="experiments/results/gpt_shakespeare_char_errors")
  args = parser.parse_args(argv)
  config = get_config("shakespeare", args.size)
  task = tasks.task_for(config)
  data = task.load(config)
  batch = next(iter(task.eval_batches(config.replace(batch_size=args.windows), data)))
  tokens = jnp.asarray(batch["inputs"])
  trained, step = restore_params(args.checkpoint)
  init = task.init_params(config, task.model(config, data), data, args.seed)
  result = {"source": f"{args.checkpoint} at step {step}", "tokens": int(tokens.size),
            "date": datetime.date.today().isoformat(), "jax_version": jax.__version__,
            "init": errors(config, init, tokens), "trained": errors(config, trained, tokens)}
  with open(args.out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(args.out + ".md", "w") as f:
    f.write(markdown(result))
  print(markdown(result))


if __name__ == "__main__":
  main()
