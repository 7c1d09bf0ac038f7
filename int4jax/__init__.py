"""int4jax: train transformers with INT4 linear layers (forward and both backward GEMMs)."""

import jax as _jax

from int4jax._version import __version__, check_jax_version as _check_jax_version

_check_jax_version(_jax.__version__)

from int4jax import quantizers  # noqa: E402
from int4jax.backend import describe_backend, resolve_backend  # noqa: E402
from int4jax.config import Int4Config  # noqa: E402
from int4jax.serving import PackedWeight, export, export_weight, packed_linear  # noqa: E402
from int4jax.linear import int4_linear  # noqa: E402
from int4jax.reference import int4_linear_reference  # noqa: E402
from int4jax.rules import QuantRule  # noqa: E402
from int4jax.tuning import tune  # noqa: E402
from int4jax import nn, nnx  # noqa: E402
from int4jax.model_quantization import plan, quantization_plan, quantize_model  # noqa: E402

__all__ = ["Int4Config", "PackedWeight", "QuantRule", "describe_backend", "export",
           "export_weight", "packed_linear", "int4_linear", "int4_linear_reference", "nn", "nnx",
           "plan", "quantization_plan", "quantize_model", "quantizers", "resolve_backend", "tune",
           "__version__"]
