"""The one place that decides which kernels run: the quantizer and the integer GEMMs.

`Int4Config.backend` names a registered backend (int4jax/backends/: "xla", "reference",
"pallas", "triton", "mosaic"; a new backend is one module there) or "auto":
  CPU  "xla" (the Pallas kernels only interpret there).
  GPU  per GEMM shape: below MIN_TUNED_FLOPS "xla"; above, the choice `int4jax.tune` made for
       the shape's bucket among the available candidates (each checked against XLA on random
       INT4 operands, then timed). Under `jit` this is a pure lookup: nothing is timed or run
       while tracing; an untuned shape uses XLA, logged once, and `tune` tunes it later.

Every resolution is visible: `describe_backend(name)` returns what runs and why, and the first
use of each (request, platform, choice) is logged on the "int4jax" logger. A backend that cannot
run here raises an error naming the reason; only "auto" moves on, and it logs that it did.
"""

import dataclasses
import logging
from typing import Callable, Optional, Tuple

import jax

from int4jax import backends, tuning
from int4jax.backends.base import GPU, quantize_jnp
from int4jax.kernels import int_gemm as xla_gemm
from int4jax.kernels import partitioning

logger = logging.getLogger("int4jax")

_reported = set()


@dataclasses.dataclass(frozen=True)
class BackendChoice:
  """What a requested backend runs as on this platform."""
  requested: str
  name: str  # the concrete backend, or "auto-tuned" for GPU "auto" (chosen per GEMM shape)
  platform: str
  interpret: bool  # Pallas interpreter (CPU)
  reason: str


def _platform() -> str:
  return jax.default_backend()


def available_gpu_backends(platform: Optional[str] = None) -> Tuple[str, ...]:
  """The backends GPU "auto" chooses among on `platform` (default: jax's default backend)."""
  platform = platform or _platform()
  return tuple(n for n in backends.names() if backends.get(n).auto_candidate
               and backends.get(n).unavailable(platform) is None)


def describe_backend(requested: str = "auto", platform: Optional[str] = None) -> BackendChoice:
  """The backend `requested` resolves to on `platform` (default: jax's default backend).

  Raises ValueError for an unknown name and RuntimeError for one that cannot run here.
  """
  platform = platform or _platform()
  if requested == "auto":
    if platform not in GPU:
      return BackendChoice("auto", "xla", platform, False,
                           f"on {platform} the Pallas kernels only interpret; XLA's int8 dot is "
                           "exact and fast")
    return BackendChoice("auto", "auto-tuned", platform, False,
                         f"GEMMs under {tuning.MIN_TUNED_FLOPS:.2g} FLOPs -> xla; larger: the "
                         f"choice int4jax.tune made among {available_gpu_backends(platform)} "
                         "per shape bucket, xla where untuned (logged); raw int32 sums "
                         "(fuse_bitsplit=False) via XLA")
  backend = backends.get(requested)
  why_not = backend.unavailable(platform)
  if why_not is not None:
    raise RuntimeError(why_not)
  return BackendChoice(requested, requested, platform, backend.interprets(platform),
                       backend.reason(platform))


def _report(choice: BackendChoice, detail: str = "") -> None:
  key = (choice.requested, choice.platform, choice.name, detail)
  if key not in _reported:
    _reported.add(key)
    logger.info("int4jax backend %r -> %r on %s%s (%s)", choice.requested, choice.name,
                choice.platform, f" {detail}" if detail else "", choice.reason)


def resolve_backend(name: str) -> str:
  """The concrete backend name `name` runs as here ("auto-tuned" for GPU "auto")."""
  choice = describe_backend(name)
  _report(choice)
  return choice.name


def _gpu_auto(a, b, contracting, row_scale=None, col_scale=None):
  """Per-shape choice on GPU: XLA for small GEMMs, else the tuned backend (a lookup)."""
  platform = _platform()
  m, n, k = xla_gemm.gemm_shape(a, b, contracting)
  if 2 * m * n * k < tuning.MIN_TUNED_FLOPS:
    _report(BackendChoice("auto", "xla", platform, False, "small GEMM"),
            f"(M,N,K)~{tuning.autotune.bucket(m, n, k)}")
    return backends.get("xla").scaled_gemm(platform)(a, b, contracting, row_scale, col_scale)
  (ca,), (cb,) = contracting
  choice_key = tuning.key("scaled_gemm", f"{ca}{cb}", m, n, k)
  a_shape, b_shape = a.shape, b.shape

  def candidates():
    ta, tb = tuning.random_int4(a_shape, 0), tuning.random_int4(b_shape, 1)
    want = lambda: xla_gemm.int_gemm_xla(ta, tb, contracting).astype("float32")
    return {name: tuning.checked(
        lambda fn=backends.get(name).scaled_gemm(platform): fn(ta, tb, contracting, None, None),
        want, f"backend {name!r} at {a_shape}x{b_shape}")
        for name in available_gpu_backends(platform)}
  best = tuning.lookup(choice_key, "xla", candidates, valid=available_gpu_backends(platform))
  _report(BackendChoice("auto", best, platform, False, "tuned lookup"), choice_key)
  return _with_sharding_rule(best, backends.get(best).scaled_gemm(platform), True)(
      a, b, contracting, row_scale, col_scale)


def _with_sharding_rule(name: str, gemm: Callable, scaled: bool) -> Callable:
  """A kernel backend's GEMM wrapped with its custom_partitioning rule when more than one device
  is visible (int4jax/kernels/partitioning.py), so that sharded operands stay sharded; XLA's
  and the reference's jnp dots are partitioned by XLA itself."""
  if name in ("xla", "reference") or len(jax.devices()) == 1:
    return gemm
  return (partitioning.scaled_gemm if scaled else partitioning.int_gemm)(gemm)


def scaled_gemm(name: str) -> Callable:
  """f(a, b, contracting, row_scale=None, col_scale=None) -> float32 for backend `name`:
  the int32 product of int8 INT4 values times the rank-1 scales (a scalar, (M, 1) or (1, N))."""
  choice = describe_backend(name)
  _report(choice)
  if choice.name == "auto-tuned":
    return _gpu_auto
  return _with_sharding_rule(choice.name, backends.get(choice.name).scaled_gemm(choice.platform),
                             True)


def int_gemm(name: str) -> Callable:
  """f(a, b, contracting) -> int32 for backend `name` (the unfused bit split needs the raw sums;
  XLA's int8 dot for GPU "auto" and for backends without their own)."""
  choice = describe_backend(name)
  _report(choice)
  if choice.name == "auto-tuned":
    return xla_gemm.int_gemm_xla
  raw = backends.get(choice.name).int_gemm
  if raw is None:
    return xla_gemm.int_gemm_xla
  return _with_sharding_rule(choice.name, raw(choice.platform), False)


def k_major(name: str) -> bool:
  """Whether the op feeds backend `name`'s GEMMs K-major operands (both contracting over dim 1),
  writing them in that layout when it quantizes (`quantizer`'s layout argument). GPU "auto":
  yes (every candidate, XLA's cuBLAS int8 GEMM included, reads them)."""
  choice = describe_backend(name)
  if choice.name == "auto-tuned":
    return True
  return backends.get(choice.name).k_major(choice.platform)


def quantizer(name: str) -> Callable:
  """f(x, axis, qmin, qmax, key, *, group, levels, per_row, clip_ratio, search, layout="as_is")
  -> (int8 values, scales): the one quantizer of every dynamic operand
  (int4jax/quantizers/two_level.py) of a 2-D x along its contraction `axis`, stochastic when key
  is given. layout: "as_is", "transposed" or "both" (a pair, x's layout and its transpose; see
  int4jax.backends.base.LAYOUTS). "pallas", "triton" and "mosaic" run the fused quantizer kernel
  for per-row scales (the same integers, bit for bit, writing both layouts in one pass) and the
  jnp quantizer for per-tensor or clipped ones (logged); the other backends run the jnp
  quantizer, which XLA fuses."""
  choice = describe_backend(name)
  if choice.name == "auto-tuned":
    return quantize_jnp
  return backends.get(choice.name).quantizer(choice.platform)
