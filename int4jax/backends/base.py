"""`Backend`: the small object every backend module registers."""

import dataclasses
import logging
from typing import Callable, Dict, Optional, Tuple

from int4jax.quantizers import two_level

logger = logging.getLogger("int4jax")

GPU = ("gpu", "cuda")  # jax platform names of CUDA GPUs


def static_contracting(contracting):
  """((ca,), (cb,)) as Python ints (kernels take them as static arguments)."""
  (ca,), (cb,) = contracting
  return ((int(ca),), (int(cb),))
_logged = set()


def log_once(message: str) -> None:
  """Logs `message` on the "int4jax" logger the first time it is seen."""
  if message not in _logged:
    _logged.add(message)
    logger.info("%s", message)


# The int8 layouts a quantizer writes (its `layout` argument): x's own, x's transpose (what a
# GEMM contracting over x's dim 0 reads K-major), or both from one pass, returned as a pair
# (x's layout, transposed).
LAYOUTS = ("as_is", "transposed", "both")

# f(x, axis, qmin, qmax, key, *, group, levels, per_row, clip_ratio, search, layout="as_is")
#   -> (int8 values, or the pair for layout="both"; scales)
Quantizer = Callable
# f(a, b, contracting, row_scale=None, col_scale=None) -> float32
ScaledGemm = Callable
# f(a, b, contracting) -> int32
IntGemm = Callable


def check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f"quantizer layout must be one of {LAYOUTS}, got {layout!r}")


def in_layout(q, layout: str):
  """The int8 array q as `layout` asks (see LAYOUTS), transposed by XLA where needed."""
  check_layout(layout)
  return {"as_is": q, "transposed": q.T, "both": (q, q.T)}[layout]


def quantize_jnp(x, axis, qmin, qmax, key, layout="as_is", **two_level_settings):
  """The jnp two-level quantizer (int4jax/quantizers/two_level.py); XLA fuses it, and its
  transposed copies, into the surrounding ops."""
  q, scale = two_level.quantize_two_level(x, axis, qmin, qmax, key=key, **two_level_settings)
  return in_layout(q, layout), scale


@dataclasses.dataclass(frozen=True)
class Backend:
  """One way to run the op's quantizers and integer GEMMs. Every callable takes the platform
  ("cpu", "gpu", ...) so that one backend can run differently per platform (e.g. interpreted)."""

  name: str
  # platform -> why this backend cannot run there (an error message naming the fix), or None
  unavailable: Callable[[str], Optional[str]]
  # platform -> what runs and why, for describe_backend and the log
  reason: Callable[[str], str]
  # platform -> the scaled GEMM
  scaled_gemm: Callable[[str], ScaledGemm]
  # platform -> the raw int32 GEMM; default: XLA's int8 dot
  int_gemm: Optional[Callable[[str], IntGemm]] = None
  # platform -> the quantizer; default: the jnp quantizer
  quantizer: Callable[[str], Quantizer] = lambda platform: quantize_jnp
  # platform -> whether the op hands this backend's GEMMs K-major operands (contracting dim 1 of
  # both, as s8 tensor-core MMAs read them), quantizing straight into those layouts; default: on
  # GPUs (cuBLAS's int8 GEMM wants them too), not on CPU (XLA:CPU's dot takes either)
  k_major: Callable[[str], bool] = lambda platform: platform in GPU
  # platform -> whether its kernels run in an interpreter there (slow; for tests)
  interprets: Callable[[str], bool] = lambda platform: False
  # whether GPU "auto" times this backend as a candidate (where it is available)
  auto_candidate: bool = True


_REGISTRY: Dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
  """Adds `backend` under its name (a name registers once)."""
  if backend.name == "auto":
    raise ValueError("int4jax backend name 'auto' is reserved (it picks among the others)")
  if backend.name in _REGISTRY:
    raise ValueError(f"int4jax backend {backend.name!r} is already registered")
  _REGISTRY[backend.name] = backend
  return backend


def get(name: str) -> Backend:
  if name not in _REGISTRY:
    raise ValueError(f"unknown int4jax backend {name!r}; available: {list(_REGISTRY)} or 'auto'")
  return _REGISTRY[name]


def names() -> Tuple[str, ...]:
  """The registered backend names, in registration order."""
  return tuple(_REGISTRY)
