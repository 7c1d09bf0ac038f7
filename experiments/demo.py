"""Tiny INT4-vs-FP training demo: a 2-layer MLP regressor on data the demo makes.

  python -m experiments.demo [--steps 300]

Trains the same model from the same init on the same batches twice, once with float matmuls and
once with every matmul through int4_linear (default Int4Config), and prints both loss curves.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from int4jax import Int4Config, int4_linear


def make_data(key, n=4096, d_in=64, d_out=8):
  kx, kw, kn = jax.random.split(key, 3)
  x = jax.random.normal(kx, (n, d_in))
  x = x.at[:, :2].multiply(20.0)  # two outlier channels, as pretrained activations have
  teacher = jax.random.normal(kw, (d_in, d_out)) / jnp.sqrt(d_in)
  y = jnp.tanh(x @ teacher) + 0.05 * jax.random.normal(kn, (n, d_out))
  return x, y


def init(key, d_in=64, hidden=256, d_out=8):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (d_in, hidden)) / jnp.sqrt(d_in), "b1": jnp.zeros(hidden),
          "w2": jax.random.normal(k2, (hidden, d_out)) / jnp.sqrt(hidden), "b2": jnp.zeros(d_out)}


def forward(params, x, key, int4):
  if int4:
    k1, k2 = jax.random.split(key)
    h = jax.nn.gelu(int4_linear(x, params["w1"], params["b1"], key=k1, config=Int4Config()))
    return int4_linear(h, params["w2"], params["b2"], key=k2, config=Int4Config())
  h = jax.nn.gelu(x @ params["w1"] + params["b1"][None, :])
  return h @ params["w2"] + params["b2"][None, :]


def train(int4, steps, batch=128, seed=0):
  x, y = make_data(jax.random.key(seed))
  params = init(jax.random.key(seed + 1))
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, xb, yb, key):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean((forward(p, xb, key, int4) - yb) ** 2))(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  start = time.perf_counter()
  for i in range(steps):
    idx = jax.random.randint(jax.random.key(1000 + i), (batch,), 0, x.shape[0])
    params, state, loss = step(params, state, x[idx], y[idx], jax.random.key(10_000 + i))
    losses.append(float(loss))
  return losses, time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args(argv)
  fp, t_fp = train(False, args.steps)
  q, t_q = train(True, args.steps)
  print(f"{'step':>6s} {'fp32 loss':>10s} {'int4 loss':>10s}")
  for i in sorted({0, *range(49, args.steps, 50), args.steps - 1}):
    print(f"{i + 1:6d} {fp[i]:10.4f} {q[i]:10.4f}")
  tail = max(1, args.steps // 10)
  fp_end, q_end = sum(fp[-tail:]) / tail, sum(q[-tail:]) / tail
  print(f"final (mean of last {tail} steps): fp32 {fp_end:.4f}  int4 {q_end:.4f}  "
        f"ratio {q_end / fp_end:.2f};  time fp32 {t_fp:.1f}s  int4 {t_q:.1f}s")
  return fp, q


if __name__ == "__main__":
  main()
