"""The backend registry. A backend is one module in this package that builds a `Backend` and
calls `register`; `Int4Config.backend` accepts "auto" and every registered name, and
`int4jax.backend` (the one place that decides) resolves a name to its kernels here.

A backend says what it runs on a platform, or why it cannot run there, and gives the three
functions the op needs: the quantizer of every dynamic operand, the scaled GEMM (int8 x int8 ->
int32 with rank-1 scales applied after), and the raw int32 GEMM (for the unfused bit split); and
whether its GEMMs want K-major operands, which the op then quantizes straight into.
"""

from int4jax.backends.base import Backend, get, names, register

# The built-in backends, in the order "auto" lists them (each module registers itself).
from int4jax.backends import xla, reference, pallas, triton, mosaic  # noqa: E402,F401

__all__ = ["Backend", "get", "names", "register"]
