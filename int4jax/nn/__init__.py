"""Flax linen layers with INT4 GEMMs, dot_general injection, and one-call model quantization."""

from int4jax.nn.dense import Dense, DenseGeneral, int4_dense_call
from int4jax.nn.einsum import Einsum, int4_einsum_call
from int4jax.nn.int4_dot import (QUANT_PARAMS, RNG_STREAM, STATE_COLLECTION, Int4DotGeneral,
                                 int4_dot_general)
from int4jax.nn.quantize import QuantizedModel, calibrate, int4_rules, quantize_linen

__all__ = ["Dense", "DenseGeneral", "Einsum", "Int4DotGeneral", "QuantizedModel", "calibrate",
           "int4_dense_call", "int4_dot_general", "int4_einsum_call", "int4_rules", "quantize_linen",
           "QUANT_PARAMS", "RNG_STREAM", "STATE_COLLECTION"]
