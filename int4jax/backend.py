"""The one place that decides which kernels run: the integer GEMMs and the abs-max quantizer.

Backends (`Int4Config.backend`):
  "xla"        lax.dot_general(int8, int8) -> int32 (cuBLAS int8 on GPU, exact on CPU), then the
               dequantization multiply as a separate XLA op.
  "reference"  the same product widened to int32 (slow, obviously exact).
  "pallas"     kernels/pallas_gemm.py, Pallas with the Triton lowering, epilogue fused, and the
               fused quantizer kernels/pallas_quantize.py for per-row (two-level) X, W and both
               dY; per-tensor and clipped scales use the jnp quantizer (logged). On a GPU
               they compile; on CPU they run in Pallas's interpreter (for tests: slow), logged
               once. Every other backend quantizes with the jnp quantizer (XLA fuses it).
  "triton"     kernels/triton_gemm.py through jax-triton (GPU only; `int4jax[triton]`).
  "mosaic"     kernels/mosaic_gemm.py, Pallas Mosaic GPU (Hopper s8 wgmma), epilogue fused;
               operands not already K-major are transposed by XLA first. The raw int32 sums that
               only the unfused bit split needs come from XLA's int8 dot (said in its reason).
  "auto"       CPU: "xla" (the Pallas kernels only interpret there). GPU: small GEMMs (below
               AUTO_MIN_FLOPS) go to "xla"; larger ones are checked against XLA on random INT4
               operands and timed once per shape bucket among the available backends, and the
               fastest correct one is kept (kernels/autotune.py; set
               INT4JAX_AUTOTUNE_CACHE=path.json to keep choices across processes).

Every resolution is visible: `describe_backend(name)` returns what runs and why, and the first
use of each (request, platform, choice) is logged on the "int4jax" logger. A backend that cannot
run here raises an error naming the reason; only "auto" moves on, and it logs that it did.
"""

import dataclasses
import logging
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from int4jax.kernels import (autotune, int_gemm as xla_gemm, mosaic_gemm, pallas_gemm,
                             pallas_quantize, triton_gemm)
from int4jax.quantizers import int4_quant, two_level

logger = logging.getLogger("int4jax")

BACKENDS = ("xla", "reference", "pallas", "triton", "mosaic")
AUTO_MIN_FLOPS = 2 * 1024**3  # below this (2*M*N*K), "auto" uses XLA without tuning
_reported = set()
_tuner: Optional[autotune.Autotuner] = None


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


def describe_backend(requested: str = "auto", platform: Optional[str] = None) -> BackendChoice:
  """The backend `requested` resolves to on `platform` (default: jax's default backend).

  Raises ValueError for an unknown name and RuntimeError for one that cannot run here.
  """
  platform = platform or _platform()
  if requested not in BACKENDS and requested != "auto":
    raise ValueError(f"unknown int4jax backend {requested!r}; available: "
                     f"{list(BACKENDS)} or 'auto'")
  gpu = platform in ("gpu", "cuda")
  if requested == "auto":
    if not gpu:
      return BackendChoice("auto", "xla", platform, False,
                           f"on {platform} the Pallas kernels only interpret; XLA's int8 dot is "
                           "exact and fast")
    return BackendChoice("auto", "auto-tuned", platform, False,
                         f"GEMMs under {AUTO_MIN_FLOPS:.2g} FLOPs -> xla; larger: fastest correct "
                         f"of {available_gpu_backends()} per shape bucket; raw int32 sums "
                         "(fuse_bitsplit=False) via XLA")
  if requested == "pallas":
    if gpu:
      return BackendChoice("pallas", "pallas", platform, False,
                           "Pallas Triton lowering; per-tensor or clipped scales (scale_mode="
                           "'tensor', scale_clip) quantize with jnp")
    if platform == "cpu":
      return BackendChoice("pallas", "pallas", platform, True,
                           "Pallas interpreter on CPU (tests; slow); per-tensor or clipped scales "
                           "quantize with jnp")
    raise RuntimeError(f"int4jax backend 'pallas' runs on CUDA GPUs (or interpreted on CPU), "
                       f"not on {platform}")
  if requested == "triton":
    if not triton_gemm.AVAILABLE:
      raise RuntimeError("int4jax backend 'triton' needs jax-triton and a CUDA jaxlib "
                         f"(pip install 'int4jax[triton]'); {triton_gemm.IMPORT_ERROR}")
    if not gpu:
      raise RuntimeError(f"int4jax backend 'triton' needs a CUDA GPU; the platform is {platform}")
    return BackendChoice("triton", "triton", platform, False, "jax-triton")
  if requested == "mosaic":
    if not gpu:
      raise RuntimeError(f"int4jax backend 'mosaic' needs a Hopper GPU (sm_90a); Mosaic GPU "
                         f"kernels do not run on {platform}, not even interpreted")
    return BackendChoice("mosaic", "mosaic", platform, False,
                         "Pallas Mosaic GPU; raw int32 sums (fuse_bitsplit=False) via XLA")
  return BackendChoice(requested, requested, platform, False, "requested")


def _is_hopper() -> bool:
  try:
    return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9.")
  except RuntimeError:
    return False


def available_gpu_backends():
  return (("xla", "pallas") + (("triton",) if triton_gemm.AVAILABLE else ())
          + (("mosaic",) if _is_hopper() else ()))


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


def _scaled_xla(gemm):
  def scaled(a, b, contracting, row_scale=None, col_scale=None):
    out = gemm(a, b, contracting).astype(jnp.float32)
    if row_scale is not None:
      out = out * row_scale
    if col_scale is not None:
      out = out * col_scale
    return out
  return scaled


# Tile sizes the GPU autotuner tries for the Pallas-Triton GEMM (the default first).
PALLAS_BLOCK_CANDIDATES = (
    pallas_gemm.GemmBlocks(128, 128, 64, num_warps=4, num_stages=3),
    pallas_gemm.GemmBlocks(128, 256, 64, num_warps=8, num_stages=3),
    pallas_gemm.GemmBlocks(256, 128, 64, num_warps=8, num_stages=3),
    pallas_gemm.GemmBlocks(128, 128, 128, num_warps=4, num_stages=4),
    pallas_gemm.GemmBlocks(64, 128, 128, num_warps=4, num_stages=4),
)


def pallas_blocks(a_shape, b_shape, contracting, interpret: bool) -> pallas_gemm.GemmBlocks:
  """Tile sizes for the Pallas GEMM at these shapes: the default when interpreted (CPU) or for
  small GEMMs; otherwise the fastest correct candidate for the (M, N, K) bucket, tuned once
  (on random INT4 operands of these shapes) and cached like the backend choice."""
  default = PALLAS_BLOCK_CANDIDATES[0]
  m, n, k = xla_gemm.gemm_shape(jax.ShapeDtypeStruct(a_shape, jnp.int8),
                                jax.ShapeDtypeStruct(b_shape, jnp.int8), contracting)
  if interpret or 2 * m * n * k < AUTO_MIN_FLOPS:
    return default
  (ca,), (cb,) = contracting
  key = f"{jax.devices()[0].device_kind}|pallas_blocks|{ca}{cb}|{autotune.bucket(m, n, k)}"
  rng = np.random.default_rng(1)
  ta = jnp.asarray(rng.integers(-8, 8, a_shape), jnp.int8)
  tb = jnp.asarray(rng.integers(-8, 8, b_shape), jnp.int8)
  want = xla_gemm.int_gemm_xla(ta, tb, contracting)

  def checked(blocks):
    def thunk():
      out = pallas_gemm.scaled_gemm_pallas(ta, tb, contracting=contracting, blocks=blocks)
      if not bool(jnp.array_equal(out, want)):
        raise RuntimeError(f"pallas GEMM with {blocks} disagrees with XLA")
      return out
    return thunk
  names = {repr(b): b for b in PALLAS_BLOCK_CANDIDATES}
  return names[_tuner_instance().pick(key, {n: checked(b) for n, b in names.items()})]


def _scaled_pallas(interpret: bool):
  def scaled(a, b, contracting, row_scale=None, col_scale=None):
    if row_scale is None and col_scale is None:  # keep the contract: a float result
      row_scale = jnp.float32(1.0)
    contracting = _static(contracting)
    blocks = pallas_blocks(a.shape, b.shape, contracting, interpret)
    return pallas_gemm.scaled_gemm_pallas(a, b, row_scale, col_scale, contracting=contracting,
                                          blocks=blocks, interpret=interpret)
  return scaled


def _scaled_triton(a, b, contracting, row_scale=None, col_scale=None):
  if row_scale is None and col_scale is None:
    row_scale = jnp.float32(1.0)
  return triton_gemm.scaled_gemm_triton(a, b, row_scale, col_scale,
                                        contracting=_static(contracting))


def _scaled_mosaic(a, b, contracting, row_scale=None, col_scale=None):
  (ca,), (cb,) = _static(contracting)
  a_mk = a if ca == 1 else a.T  # wgmma wants both operands K-major
  b_nk = b if cb == 1 else b.T
  return mosaic_gemm.scaled_gemm_mosaic(a_mk, b_nk, row_scale, col_scale)


def _static(contracting):
  (ca,), (cb,) = contracting
  return ((int(ca),), (int(cb),))


def _tuner_instance() -> autotune.Autotuner:
  global _tuner
  if _tuner is None:
    _tuner = autotune.Autotuner(os.environ.get("INT4JAX_AUTOTUNE_CACHE"))
  return _tuner


def _gpu_auto(a, b, contracting, row_scale=None, col_scale=None):
  """Per-shape choice on GPU: XLA for small GEMMs, else the autotuned fastest backend."""
  m, n, k = xla_gemm.gemm_shape(a, b, contracting)
  plain = BackendChoice("auto", "xla", _platform(), False, "small GEMM")
  if 2 * m * n * k < AUTO_MIN_FLOPS:
    _report(plain, f"(M,N,K)~{autotune.bucket(m, n, k)}")
    return _scaled_xla(xla_gemm.int_gemm_xla)(a, b, contracting, row_scale, col_scale)
  (ca,), (cb,) = contracting
  key = f"{jax.devices()[0].device_kind}|scaled_gemm|{ca}{cb}|{autotune.bucket(m, n, k)}"
  rng = np.random.default_rng(0)  # concrete operands of the traced shapes, never zeros
  ta = jnp.asarray(rng.integers(-8, 8, a.shape), jnp.int8)
  tb = jnp.asarray(rng.integers(-8, 8, b.shape), jnp.int8)
  want = xla_gemm.int_gemm_xla(ta, tb, contracting).astype(jnp.float32)

  def checked(name):
    """A thunk for the tuner that first checks this backend's result against XLA's."""
    fn, verified = scaled_gemm(name), []

    def thunk():
      out = fn(ta, tb, contracting, None, None)
      if not verified:
        if not bool(jnp.array_equal(out, want)):
          raise RuntimeError(f"backend {name!r} disagrees with XLA at {a.shape}x{b.shape}")
        verified.append(True)
      return out
    return thunk
  candidates = {name: checked(name) for name in available_gpu_backends()}
  best = _tuner_instance().pick(key, candidates)
  _report(BackendChoice("auto", best, _platform(), False, "autotuned"), key)
  return scaled_gemm(best)(a, b, contracting, row_scale, col_scale)


def scaled_gemm(name: str) -> Callable:
  """f(a, b, contracting, row_scale=None, col_scale=None) -> float32 for backend `name`:
  the int32 product of int8 INT4 values times the rank-1 scales (a scalar, (M, 1) or (1, N))."""
  choice = describe_backend(name)
  _report(choice)
  if choice.name == "auto-tuned":
    return _gpu_auto
  if choice.name == "pallas":
    return _scaled_pallas(choice.interpret)
  if choice.name == "triton":
    return _scaled_triton
  if choice.name == "mosaic":
    return _scaled_mosaic
  gemm = xla_gemm.int_gemm_xla if choice.name == "xla" else xla_gemm.int_gemm_reference
  return _scaled_xla(gemm)


def _quantize_jnp(x, axis, qmin, qmax, key, **two_level_settings):
  return two_level.quantize_two_level(x, axis, qmin, qmax, key=key, **two_level_settings)


def _quantize_pallas(interpret: bool):
  def quantize(x, axis, qmin, qmax, key, group=16, levels=1, per_row=True, clip_ratio=None):
    if not per_row or clip_ratio is not None:
      # A per-tensor scale needs a global max first, and the clipped range an RMS whose sum
      # order the kernel cannot match bit for bit: the jnp quantizer, logged once.
      _report(describe_backend("pallas"), "quantizer: jnp for per-tensor / clipped scales")
      return _quantize_jnp(x, axis, qmin, qmax, key, group=group, levels=levels,
                           per_row=per_row, clip_ratio=clip_ratio)
    dither = None if key is None else int4_quant.uniform_dither(key, x.shape)
    q, scale = pallas_quantize.quantize_pallas(
        x, axis=axis, qmin=qmin, qmax=qmax, dither=dither, group=group, levels=levels,
        interpret=interpret)
    return q, (scale[:, None] if axis == 1 else scale[None, :])
  return quantize


def quantizer(name: str) -> Callable:
  """f(x, axis, qmin, qmax, key, *, group, levels, per_row, clip_ratio) -> (int8 values, scales):
  the one quantizer of every dynamic operand (int4jax/quantizers/two_level.py) of a 2-D x along
  its contraction `axis`, stochastic when key is given. "pallas" runs the fused quantizer kernel
  for per-row scales (the same integers, bit for bit; per-tensor scales need a global max first
  and use the jnp quantizer); the other backends run the jnp quantizer, which XLA fuses."""
  choice = describe_backend(name)
  if choice.name == "pallas":
    return _quantize_pallas(choice.interpret)
  return _quantize_jnp


def int_gemm(name: str) -> Callable:
  """f(a, b, contracting) -> int32 for backend `name` (the unfused bit split needs the raw sums)."""
  choice = describe_backend(name)
  _report(choice)
  if choice.name == "pallas":
    return lambda a, b, c: pallas_gemm.scaled_gemm_pallas(
        a, b, contracting=_static(c), interpret=choice.interpret,
        blocks=pallas_blocks(a.shape, b.shape, _static(c), choice.interpret))
  if choice.name == "triton":
    return lambda a, b, c: triton_gemm.scaled_gemm_triton(a, b, contracting=_static(c))
  if choice.name == "reference":
    return xla_gemm.int_gemm_reference
  return xla_gemm.int_gemm_xla  # "xla"; GPU "auto" and "mosaic" (said in their reasons)
