"""The one place that decides which integer-GEMM kernel runs."""

import logging
from typing import Callable, Dict

import jax

from int4jax.kernels import int_gemm

logger = logging.getLogger("int4jax")

GEMMS: Dict[str, Callable] = {
    "xla": int_gemm.int_gemm_xla,
    "reference": int_gemm.int_gemm_reference,
}
_reported = set()


def resolve_backend(name: str) -> str:
  """The concrete backend that `name` runs on this process's default device.

  "auto" picks "xla" on every platform today: it is exact everywhere and reaches cuBLAS's int8
  GEMM on GPU. The choice is logged once per (platform, choice).
  """
  if name != "auto":
    if name not in GEMMS:
      raise ValueError(f"unknown int4jax backend {name!r}; available: {sorted(GEMMS)} or 'auto'")
    return name
  platform = jax.default_backend()
  choice = "xla"
  if (platform, choice) not in _reported:
    _reported.add((platform, choice))
    logger.info("int4jax backend 'auto' -> %r on %s", choice, platform)
  return choice


def int_gemm(name: str) -> Callable:
  """The GEMM function (a, b, contracting) -> int32 for backend `name`."""
  return GEMMS[resolve_backend(name)]
