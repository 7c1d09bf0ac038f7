"""The INT4 dot_general behind every linen layer, and the per-layer quantizer state it owns.

`int4_dot_general(owner, lhs, rhs, dimension_numbers, config)` has lax.dot_general's contract
(output dims: batch, lhs free, rhs free) with lhs the activations and rhs the weights, as in
Flax's Dense/DenseGeneral. `owner` is the bound linen module that holds the state:

  params/<layer>/quant/{x_scale, kernel_scale}   LSQ step sizes (scale_mode="lsq"), trainable,
                                                 initialised from the init batch to
                                                 2 * mean|XH| / sqrt(Qp) and mean|HW| alike
  quant_state/<layer>/hadamard                   (b, b) Hadamard block chosen on the init batch
                                                 (hadamard_block="search"); its size is the block

Randomness for the backward pass comes from the 'quant' rng stream.
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from int4jax import contraction
from int4jax.config import Int4Config
from int4jax.linear import int4_linear_batched
from int4jax.quantizers import block_search, hadamard
from int4jax.quantizers import int4_quant as quantize

RNG_STREAM = "quant"
STATE_COLLECTION = "quant_state"
QUANT_PARAMS = "quant"


def _hadamard_domain(x2, w2, block):
  xh = hadamard.block_hadamard(hadamard.pad_to_block(x2, block, 1), block, 1)
  wh = hadamard.block_hadamard(hadamard.pad_to_block(w2, block, 0), block, 0)
  return xh, wh


def resolve_block(owner: nn.Module, x2: jax.Array, w2: jax.Array, config: Int4Config) -> int:
  """The layer's Hadamard block: config's int, or the one searched at init (kept in state)."""
  if config.hadamard_block != "search":
    return config.hadamard_block
  if not owner.has_variable(STATE_COLLECTION, "hadamard"):
    if not owner.is_mutable_collection(STATE_COLLECTION):
      raise ValueError(
          f"int4jax: layer {'/'.join(owner.path) or '<root>'} uses hadamard_block='search' but "
          f"the variables passed to apply have no '{STATE_COLLECTION}' entry for it. Pass the "
          f"whole variables dict from init (params and '{STATE_COLLECTION}'), or create the "
          f"state from a batch with int4jax.nn.calibrate(model, variables, batch)")
  matrix = owner.variable(
      STATE_COLLECTION, "hadamard",
      lambda: hadamard.hadamard_matrix(block_search.search_hadamard_block(
          x2, w2, config.scale_mode, config.forward_qrange, group=config.scale_group,
          levels=config.scale_levels, search=config.scale_search)))
  return matrix.value.shape[0]


def lsq_scales(owner: nn.Module, x2, w2, config: Int4Config) -> Optional[Tuple[jax.Array, ...]]:
  """(x_scale, kernel_scale) params for scale_mode='lsq', initialised from this batch."""
  if config.scale_mode != "lsq":
    return None
  _, qmax = config.forward_qrange

  def init(_rng):
    xh, wh = _hadamard_domain(x2.astype(jnp.float32), w2.astype(jnp.float32),
                              config.hadamard_block)
    return {"x_scale": quantize.lsq_init_scale(xh, qmax),
            "kernel_scale": quantize.lsq_init_scale(wh, qmax)}

  if (not owner.has_variable("params", QUANT_PARAMS)
      and not owner.is_mutable_collection("params")):
    raise ValueError(
        f"int4jax: layer {'/'.join(owner.path) or '<root>'} uses scale_mode='lsq' (e.g. "
        f"Int4Config.paper()), whose learned step sizes params/.../{QUANT_PARAMS} are not in the "
        "params passed to apply (float params, say). Create them from a batch with "
        "variables = int4jax.nn.calibrate(model, variables, batch)")
  scales = owner.param(QUANT_PARAMS, init)
  return positive_step(scales["x_scale"]), positive_step(scales["kernel_scale"])


def positive_step(s: jax.Array) -> jax.Array:
  """|s| floored at 1e-10: an optimizer that pushes a learned step size through zero (Adam moves
  it by ~lr per step whatever the gradient's size) keeps training on |s| instead of turning the
  layer into NaN. The functional op, given a non-positive scale directly, still returns NaN."""
  return jnp.maximum(jnp.abs(s), 1e-10)


def quant_key(owner: nn.Module) -> Optional[jax.Array]:
  """A fresh key from the 'quant' stream, or None (forward-only use needs none; a gradient
  without it raises an error naming rngs={'quant': key})."""
  return owner.make_rng(RNG_STREAM) if owner.has_rng(RNG_STREAM) else None


def int4_dot_general(owner: nn.Module, lhs: jax.Array, rhs: jax.Array, dimension_numbers,
                     config: Int4Config, precision=None, preferred_element_type=None,
                     **unused_kwargs) -> jax.Array:
  """lax.dot_general(lhs, rhs, dimension_numbers) with all three GEMMs in INT4 (`int4_linear`).

  lhs holds the activations (its free dims are the token rows that leverage-score sampling
  draws from), rhs the weights. `precision` is accepted for signature compatibility and ignored
  (the GEMM is integer and exact).
  """
  del precision, unused_kwargs
  if not isinstance(config, Int4Config):
    raise TypeError(f"int4 dot_general: config must be an Int4Config, got {type(config).__name__}")
  x, w, unflatten = contraction.as_matmuls(lhs, rhs, dimension_numbers)
  k = x.shape[2]
  # State is shared by the batch slices: one block, one pair of per-tensor LSQ scales.
  x_all = x.reshape(-1, k)
  w_all = jnp.moveaxis(w, 0, 1).reshape(k, -1)
  config = config.replace(hadamard_block=resolve_block(owner, x_all, w_all, config))
  scales = lsq_scales(owner, x_all, w_all, config)
  key = quant_key(owner)
  y = unflatten(int4_linear_batched(x, w, key=key, config=config, scales=scales))
  return y if preferred_element_type is None else y.astype(preferred_element_type)


class Int4DotGeneral(nn.Module):
  """A drop-in `dot_general` for Flax layers: `nn.Dense(f, dot_general_cls=partial(
  Int4DotGeneral, config=cfg))` or `nn.Dense(f, dot_general=Int4DotGeneral(cfg))`.

  The host layer's params stay as they are; quantizer state (if the config needs any) lives in
  this submodule. Backward randomness comes from the 'quant' rng stream.
  """

  config: Int4Config = Int4Config()

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
               **kwargs):
    return int4_dot_general(self, lhs, rhs, dimension_numbers, self.config, precision,
                            preferred_element_type, **kwargs)


def int4_einsum(owner: nn.Module, spec: str, lhs: jax.Array, rhs: jax.Array,
                config: Int4Config, preferred_element_type=None) -> jax.Array:
  """jnp.einsum(spec, lhs, rhs) with lhs the activations and rhs the weights, as INT4 GEMMs
  (`int4_dot_general`); raises a ValueError if the einsum is not such a contraction
  (int4jax.contraction.einsum_dimension_numbers says why)."""
  dims, perm = contraction.einsum_dimension_numbers(spec, lhs.ndim, rhs.ndim)
  y = int4_dot_general(owner, lhs, rhs, dims, config, None, preferred_element_type)
  return jnp.transpose(y, perm)
