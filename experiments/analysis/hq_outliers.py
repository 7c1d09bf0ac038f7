"""Forward relative error of int4_linear vs float on activations with outlier channels.

  python -m experiments.analysis.hq_outliers

x (256, 512) Gaussian with 8 channels scaled by 1, 20 or 100; kernel (512, 256) Gaussian.
"""

import datetime

import jax
import jax.numpy as jnp

from int4jax import Int4Config, int4_linear

CONFIGS = {
    "rtn per-tensor (no HQ)": Int4Config(hadamard_block=1, scale_mode="tensor", scale_levels=1),
    "rtn per-row (no HQ)": Int4Config(hadamard_block=1, scale_levels=1),
    "HQ32 per-tensor": Int4Config(scale_mode="tensor", scale_levels=1),
    "HQ32 per-row": Int4Config(scale_levels=1),
    "HQ128 per-row": Int4Config(hadamard_block=128, scale_levels=1),
    "two-level g16 L16 (no HQ)": Int4Config(hadamard_block=1),
    "HQ32 two-level g16 L16 (default)": Int4Config(),
}


def main():
  kx, kw, kc = jax.random.split(jax.random.key(0), 3)
  x0 = jax.random.normal(kx, (256, 512))
  w = jax.random.normal(kw, (512, 256)) / 512 ** 0.5
  channels = jax.random.choice(kc, 512, (8,), replace=False)
  print(f"date {datetime.date.today()}, jax {jax.__version__}, {jax.devices()[0].device_kind}")
  print(f"{'config':34s} " + " ".join(f"{'x' + str(m):>8s}" for m in (1, 20, 100)))
  for name, config in CONFIGS.items():
    errs = []
    for magnitude in (1.0, 20.0, 100.0):
      x = x0.at[:, channels].multiply(magnitude)
      exact = x @ w
      errs.append(float(jnp.linalg.norm(int4_linear(x, w, config=config) - exact)
                        / jnp.linalg.norm(exact)))
    print(f"{name:34s} " + " ".join(f"{e:8.3f}" for e in errs))


if __name__ == "__main__":
  main()
