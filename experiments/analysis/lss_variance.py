"""Where 1/p goes in leverage-score sampling: dW's variance for each unbiased form.

  python -m experiments.analysis.lss_variance [--draws 200] [--out FILE]

dW = Xq^T diag(s_X / p) Q(dY) over the kept token rows. The op folds s_X and 1/p into dY before
dY's per-column abs-max ("fold"), so a kept row with a small p (a large weight) sets its
columns' quantization step. The alternative quantizes the unweighted kept rows and applies 1/p
exactly afterwards ("after", float: no single int8 GEMM can apply a per-token weight on the
contraction dim, so this is the lower bound any such form could reach). Both are unbiased; this
measures E||dW_est - dW||^2 / ||dW||^2 over keys, with and without padding rows, against the
quantization-only variance of no sampling.
"""

import argparse
import datetime
import json

import jax
import jax.numpy as jnp

from int4jax import Int4Config, int4_linear
from int4jax.linear import sampling_plan
from int4jax.quantizers import hadamard, two_level


def _case(seed, m=512, k=256, n=256, padded=0.0):
  kx, kw, kg, kn = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(kx, (m, k))
  w = jax.random.normal(kw, (k, n)) / k ** 0.5
  row_norm = jnp.exp(1.5 * jax.random.normal(kn, (m, 1)))  # uneven token gradients
  dy = jax.random.normal(kg, (m, n)) * row_norm
  dy = dy.at[m - int(padded * m):].set(0.0)
  return x, w, dy


def _dw_after(x, w, dy, config, key):
  """dW~ with the unweighted kept rows quantized per column, 1/p applied exactly afterwards."""
  kp = hadamard.padded_size(x.shape[1], config.contraction_multiple)
  xh = hadamard.block_hadamard(jnp.pad(x, ((0, 0), (0, kp - x.shape[1]))), config.hadamard_block, 1)
  xq, sx = two_level.quantize_two_level(xh, 1, -7, 7, group=config.scale_group,
                                        levels=config.scale_levels)
  g = dy * sx
  _, key_dw, key_lss = jax.random.split(key, 3)
  scores = jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(xq.astype(jnp.float32), axis=1)
  assert config.lss_blocks == 1, "this analysis reads the plan's indices as global rows"
  idx, weights = sampling_plan(scores, config, key_lss)
  rows = jnp.arange(g.shape[0]) if idx is None else idx.reshape(-1)  # one block
  if weights is None:
    weights = jnp.ones(rows.shape)
  v_max = 119
  gq, s = two_level.quantize_two_level(g[rows] * (weights > 0)[:, None], 0, -v_max, v_max,
                                       key=key_dw)
  dwh = (xq[rows].astype(jnp.float32) * weights[:, None]).T @ (gq.astype(jnp.float32) * s)
  return hadamard.block_hadamard(dwh, config.hadamard_block, 0)[:x.shape[1]]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--draws", type=int, default=200)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  keys = jax.random.split(jax.random.key(1), args.draws)
  rows = []
  for padded in (0.0, 0.4):
    x, w, dy = _case(0, padded=padded)
    exact = jax.vjp(lambda w: int4_linear(x, w, config=Int4Config(grad_mode="float")), w)[1](dy)[0]
    norm = float(jnp.sum(exact ** 2))

    def rel_var(fn):
      draws = jax.lax.map(fn, keys)
      return float(jnp.mean(jnp.sum((draws - exact[None]) ** 2, axis=(1, 2)))) / norm

    for lss in ("off", "bernoulli", "systematic"):
      config = Int4Config(lss=lss, lss_budget=0.5)
      fold = rel_var(lambda k: jax.vjp(lambda w: int4_linear(x, w, key=k, config=config), w)[1](
          dy)[0])
      after = rel_var(lambda k: _dw_after(x, w, dy, config, k)) if lss != "off" else fold
      rows.append({"padded rows": padded, "lss": lss, "fold (the op)": round(fold, 5),
                   "after (float bound)": round(after, 5)})
  header = list(rows[0])
  lines = [f"# {datetime.date.today()}, jax {jax.__version__}, {jax.devices()[0].device_kind}, "
           f"{args.draws} keys; E||dW~ - dW||^2 / ||dW||^2 (dW: float dY against the same "
           "INT4 X), budget 0.5, 512 tokens with log-normal gradient norms",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n" + json.dumps(rows) + "\n")


if __name__ == "__main__":
  main()
