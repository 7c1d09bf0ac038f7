"""Argument checks for the public ops: clear errors instead of silent garbage."""

import jax
import jax.numpy as jnp

from int4jax.config import Int4Config

MISSING_KEY = (
    "int4_linear: this config draws random numbers in training ({why}), so taking a "
    "gradient needs a PRNG key. Pass key=jax.random.key(seed) (a fresh one per step, e.g. "
    "jax.random.fold_in(key, step)); linen (int4jax.nn, quantize_model): pass "
    "rngs={{'quant': key}} to apply; NNX: quantize_model(model, rngs=nnx.Rngs(quant=0)), or "
    "rngs=nnx.Rngs(quant=0) when building an int4jax.nnx layer, or rngs= when calling it. For a "
    "deterministic backward use "
    "Int4Config(stochastic_rounding=False, forward_rounding='nearest', lss='off' or 'nonzero').")


def missing_key_message(config: Int4Config) -> str:
  why = []
  if config.grad_mode != "float" and config.stochastic_rounding:
    why.append("stochastic_rounding=True")
  if config.forward_rounding == "stochastic":
    why.append("forward_rounding='stochastic'")
  if config.lss in ("bernoulli", "systematic"):
    why.append(f"lss={config.lss!r}")
  return MISSING_KEY.format(why=", ".join(why))


def check_float(name: str, a) -> None:
  dtype = jnp.result_type(a)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"int4_linear: {name} must be a floating-point array (float32, bfloat16, "
                    f"float16), got dtype {dtype}")


def check_key(key) -> None:
  if key is None:
    return
  if not isinstance(key, jax.Array):
    raise TypeError(f"int4_linear: key must be a JAX PRNG key (jax.random.key(seed)), got "
                    f"{type(key).__name__}")
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape:
      raise ValueError(f"int4_linear: key must be a single key, got shape {key.shape}")
    return
  if key.dtype != jnp.uint32 or key.shape != (2,):
    raise TypeError(f"int4_linear: key must be jax.random.key(seed) or a raw PRNGKey of shape "
                    f"(2,) uint32, got {key.dtype}{key.shape}")


def check_linear_args(x, kernel, bias, config, scales) -> None:
  if not isinstance(config, Int4Config):
    raise TypeError(f"int4_linear: config must be an Int4Config, got {type(config).__name__}")
  check_float("x", x)
  check_float("kernel", kernel)
  if bias is not None:
    check_float("bias", bias)
  if kernel.ndim != 2:
    raise ValueError(f"int4_linear: kernel must have rank 2 (in, out), got shape {kernel.shape}; "
                     "for more dims use int4jax.nn.DenseGeneral, which flattens them")
  if x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
    raise ValueError(f"int4_linear: x's last dim must equal kernel's first: x {x.shape}, "
                     f"kernel {kernel.shape}")
  if kernel.shape[0] == 0 or kernel.shape[1] == 0:
    raise ValueError(f"int4_linear: kernel dims must be non-zero, got {kernel.shape}")
  if bias is not None and bias.shape != (kernel.shape[1],):
    raise ValueError(f"int4_linear: bias must have shape ({kernel.shape[1]},), got {bias.shape}")
  if config.hadamard_block == "search":
    raise ValueError("int4_linear: hadamard_block='search' must be resolved to an int first "
                     "(int4jax.quantizers.search_hadamard_block, or the int4jax.nn modules, "
                     "which search at init)")
  if config.scale_mode == "lsq":
    if scales is None or len(scales) != 2:
      raise ValueError("int4_linear: scale_mode='lsq' needs scales=(x_scale, kernel_scale), two "
                       "scalars (init: int4jax.quantizers.lsq_init_scale)")
    for s in scales:
      check_float("scales", s)
      if jnp.ndim(s) != 0:
        raise ValueError(f"int4_linear: LSQ scales are per-tensor scalars, got shape "
                         f"{jnp.shape(s)}")
  elif scales is not None:
    raise ValueError(f"int4_linear: scales= is only used with scale_mode='lsq', "
                     f"not {config.scale_mode!r}")
