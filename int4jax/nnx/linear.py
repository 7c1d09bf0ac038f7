"""int4jax.nnx.Linear: flax.nnx.Linear with INT4 forward and backward GEMMs.

Same constructor (plus `config`), same `kernel` / `bias` Params. Quantizer state, when the config
needs it, is set up by the first call on a real batch, which must run eagerly (outside nnx.jit):
  x_scale, kernel_scale   nnx.Param LSQ step sizes (scale_mode="lsq"), 2 * mean|.| / sqrt(Qp)
  hadamard_block          a static int (hadamard_block="search"), chosen on that batch
`int4jax.nnx.calibrate(model, batch)` makes that first call for a whole model. Backward
randomness comes from the 'quant' stream of the Rngs given at construction (nnx falls back to
'default'), or from `rngs=` at call time.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from int4jax import contraction
from int4jax.config import Int4Config
from int4jax.linear import int4_linear_batched
from int4jax.nn.int4_dot import positive_step
from int4jax.quantizers import block_search, hadamard
from int4jax.quantizers import int4_quant as quantize
from int4jax.serving import PackedWeight, packed_linear

RNG_STREAM = "quant"


def _stream(rngs):
  if rngs is None:
    return None
  if isinstance(rngs, nnx.Rngs):
    if RNG_STREAM in rngs or "default" in rngs:
      return rngs[RNG_STREAM].fork()
    return None
  if isinstance(rngs, nnx.RngStream):
    return rngs.fork()
  raise TypeError(f"rngs must be nnx.Rngs or an RngStream, got {type(rngs).__name__}")


class Int4Contraction:
  """What every int4jax NNX layer shares: its config, quantizer state and rng stream, and the
  INT4 form of a lax.dot_general (activations left, weights right; batch dims vmapped)."""

  def _init_int4(self, config: Int4Config, rngs):
    if not isinstance(config, Int4Config):
      raise TypeError(f"config must be an Int4Config, got {type(config).__name__}")
    self.config = config
    self.hadamard_block = None if config.hadamard_block == "search" else config.hadamard_block
    self.quant_rngs = nnx.data(_stream(rngs))
    if config.scale_mode == "lsq":
      self.x_scale = nnx.Param(jnp.zeros((), jnp.float32))
      self.kernel_scale = nnx.Param(jnp.zeros((), jnp.float32))
    self.calibrated = config.scale_mode != "lsq" and self.hadamard_block is not None

  def _calibrate(self, x2, kernel):
    if isinstance(x2, jax.core.Tracer):
      raise ValueError(
          "int4jax.nnx: this layer's quantizer state (LSQ scales / the searched Hadamard "
          "block) is made from the values of its first batch, which must run eagerly. Call "
          "int4jax.nnx.calibrate(model, batch) (or the model once) outside nnx.jit / nnx.grad")
    config = self.config
    if self.hadamard_block is None:
      self.hadamard_block = block_search.search_hadamard_block(
          x2, kernel, config.scale_mode, config.forward_qrange, group=config.scale_group,
          levels=config.scale_levels, search=config.scale_search)
    if config.scale_mode == "lsq":
      b, (_, qmax) = self.hadamard_block, config.forward_qrange
      xh = hadamard.block_hadamard(hadamard.pad_to_block(x2.astype(jnp.float32), b, 1), b, 1)
      wh = hadamard.block_hadamard(hadamard.pad_to_block(kernel.astype(jnp.float32), b, 0), b,
                                   0)
      self.x_scale[...] = quantize.lsq_init_scale(xh, qmax)
      self.kernel_scale[...] = quantize.lsq_init_scale(wh, qmax)
    self.calibrated = True

  def _int4_dot(self, lhs, rhs, dimension_numbers, rngs=None):
    """lax.dot_general(lhs, rhs, dimension_numbers) with all three GEMMs in INT4."""
    x, w, unflatten = contraction.as_matmuls(lhs, rhs, dimension_numbers)
    k = x.shape[2]
    if not self.calibrated:  # state shared by the batch slices, as in the linen layers
      self._calibrate(x.reshape(-1, k), jnp.moveaxis(w, 0, 1).reshape(k, -1))
    stream = _stream(rngs) if rngs is not None else self.quant_rngs
    key = stream() if stream is not None else None
    config = self.config.replace(hadamard_block=self.hadamard_block)
    scales = ((positive_step(self.x_scale[...]), positive_step(self.kernel_scale[...]))
              if config.scale_mode == "lsq" else None)
    return unflatten(int4_linear_batched(x, w, key=key, config=config, scales=scales))


class Linear(Int4Contraction, nnx.Linear):
  """`flax.nnx.Linear(in_features, out_features, ..., config=Int4Config(), rngs=...)`."""

  def __init__(self, in_features: int, out_features: int, *, config: Int4Config = Int4Config(),
               rngs: nnx.Rngs, **kwargs):
    if "dot_general" in kwargs:
      raise ValueError("int4jax.nnx.Linear replaces the dot_general; do not pass one")
    super().__init__(in_features, out_features, rngs=rngs, **kwargs)
    self._init_int4(config, rngs)

  def __call__(self, inputs: jax.Array, *, rngs=None) -> jax.Array:
    if isinstance(self.kernel.get_value(), PackedWeight):  # serving: int4jax.nnx.export
      bias = self.bias[...] if self.bias is not None else None
      return packed_linear(inputs, self.kernel.get_value(), bias)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    y = self._int4_dot(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), rngs)
    if self.preferred_element_type is not None:
      y = y.astype(self.preferred_element_type)
    if bias is not None:
      y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y

  @classmethod
  def from_linear(cls, layer: nnx.Linear, config: Int4Config,
                  rngs: Optional[nnx.Rngs] = None) -> "Linear":
    """An INT4 Linear that shares `layer`'s kernel and bias Params (the same Variable objects)."""
    if layer.dot_general is not jax.lax.dot_general:
      raise ValueError("int4jax: this nnx.Linear already has a custom dot_general; exclude it")
    new = cls(layer.in_features, layer.out_features, use_bias=layer.use_bias, dtype=layer.dtype,
              param_dtype=layer.param_dtype, precision=layer.precision,
              kernel_init=nnx.initializers.zeros, promote_dtype=layer.promote_dtype,
              preferred_element_type=layer.preferred_element_type, config=config,
              rngs=nnx.Rngs(0))  # only for the placeholder params replaced below
    new.quant_rngs = nnx.data(_stream(rngs))
    new.kernel = layer.kernel
    new.bias = layer.bias
    return new
