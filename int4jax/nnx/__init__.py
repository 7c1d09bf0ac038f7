"""Flax NNX layers with INT4 GEMMs, and in-place quantization of an existing NNX model."""

from int4jax.nnx.general import Einsum, LinearGeneral
from int4jax.nnx.linear import RNG_STREAM, Linear
from int4jax.nnx.quantize import calibrate, quantize_nnx
from int4jax.nnx.serving import export

__all__ = ["Einsum", "Linear", "LinearGeneral", "RNG_STREAM", "calibrate", "export",
           "quantize_nnx"]
