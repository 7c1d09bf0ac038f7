"""Int4Config: every choice the INT4 linear op makes, in one frozen dataclass."""

import dataclasses
from typing import Literal, Tuple, Union

from int4jax.quantizers import hadamard, int4_quant as quantize

ScaleMode = Literal["row", "tensor", "lsq", "group"]
GradMode = Literal["bitsplit", "int4", "float"]
LssMode = Literal["off", "nonzero", "bernoulli", "systematic"]
Backend = Literal["auto", "xla", "reference", "pallas", "triton", "mosaic"]

_CHOICES = {
    "scale_mode": ("row", "tensor", "lsq", "group"),
    "int_range": ("symmetric", "full"),
    "grad_mode": ("bitsplit", "int4", "float"),
    "lss": ("off", "nonzero", "bernoulli", "systematic"),
    "backend": ("auto", "xla", "reference", "pallas", "triton", "mosaic"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Int4Config:
  """How `int4_linear` quantizes. The default needs no extra state (dynamic scales).

  Defaults and why (measured in tests/test_defaults.py): per-row scales after a 32-block
  Hadamard give the lowest forward error of the dynamic modes on activations with outlier
  channels; bit splitting is ~INT8-accurate at one int8 GEMM per backward product; sampling is
  off by default because on int8 hardware the fused bit split already costs one GEMM, and LSS
  trades that for variance (opt in with `lss=`).
  """

  # Block size b of the block-diagonal Hadamard along the contraction dim (a power of two;
  # 1 disables HQ). A contraction not divisible by b is zero-padded up to a multiple of b
  # (exact: the padding contributes nothing) so every layer gets the full transform.
  # "search" is resolved per layer on the first batch by the Flax modules
  # (`int4jax.quantizers.search_hadamard_block`); the functional op needs an int.
  hadamard_block: Union[int, Literal["search"]] = 32
  # Forward scales: "row" = one abs-max scale per row of each GEMM operand along its kept dim
  # (per token for X, per output channel for W); "tensor" = one abs-max scale per tensor;
  # "lsq" = learnable per-tensor step sizes passed in (`scales=`), with the LSQ gradient;
  # "group" = one abs-max scale per row and per `scale_group` consecutive contraction elements
  # (per token x group for X, per group x output channel for W; see int4jax/grouped.py for the
  # cost: each group is its own integer GEMM, summed in float32).
  scale_mode: ScaleMode = "row"
  # Group length along the contraction dim for scale_mode="group" (a power of two; the
  # contraction is zero-padded to a multiple of max(scale_group, hadamard_block)).
  scale_group: int = 32
  # INT4 range: "symmetric" [-7, 7] (the paper's text) or "full" [-8, 7] (its released code).
  int_range: Literal["symmetric", "full"] = "symmetric"
  # Gradient (dY) quantization for both backward GEMMs: "bitsplit" = hi + residual INT4 parts
  # (~INT8); "int4" = one INT4 part; "float" = dY unquantized, float GEMMs against the saved
  # dequantized INT4 operands (the "forward only" ablation).
  grad_mode: GradMode = "bitsplit"
  # Stochastic (unbiased) rounding of dY; False rounds to nearest (deterministic, biased).
  stochastic_rounding: bool = True
  # Leverage-score sampling of the token rows of dW's GEMM: "off"; "nonzero" (keep rows with a
  # non-zero score: the paper's released code, numerically the same as off); "bernoulli" (the
  # paper: independent rows, unbiased, GEMM size unchanged); "systematic" (exactly
  # round(lss_budget * tokens) rows, unbiased, the GEMM shrinks to that many rows).
  lss: LssMode = "off"
  # Fraction of token rows kept (in expectation for "bernoulli"), in (0, 1].
  lss_budget: float = 0.5
  # Run the bit-split (hi, lo) pair as ONE int8 GEMM of R*hi + lo (bit-identical to two INT4
  # GEMMs on int8 hardware; False runs the two INT4 GEMMs, as INT4 tensor cores would).
  fuse_bitsplit: bool = True
  # Integer GEMM implementation: "xla" (lax.dot_general int8 x int8 -> int32: cuBLAS on GPU,
  # exact on CPU); "reference" (plain int32 jnp matmul); "pallas" (Pallas-Triton kernel with the
  # dequantization fused; interpreted on CPU); "triton" (jax-triton kernel, GPU only);
  # "mosaic" (Pallas Mosaic GPU kernel, Hopper only); "auto"
  # picks per platform and GEMM shape and reports it (int4jax.backend.describe_backend).
  backend: Backend = "auto"

  def __post_init__(self):
    for name, allowed in _CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"Int4Config.{name} must be one of {allowed}, got {getattr(self, name)!r}")
    b = self.hadamard_block
    if b != "search" and not hadamard.is_power_of_two(b):
      raise ValueError(f"Int4Config.hadamard_block must be a power of two or 'search', got {b!r}")
    if not hadamard.is_power_of_two(self.scale_group):
      raise ValueError(f"Int4Config.scale_group must be a power of two, got {self.scale_group!r}")
    if self.scale_mode == "group":
      if self.backend not in ("auto", "xla", "reference"):
        raise ValueError("Int4Config: scale_mode='group' runs on the 'xla' or 'reference' backend "
                         f"(batched int8 dot_general); backend={self.backend!r} has no grouped "
                         "kernel")
      if b == "search":
        raise ValueError("Int4Config: hadamard_block='search' is not available with "
                         "scale_mode='group' (the search scores per-row or per-tensor scales); "
                         "set hadamard_block to a power of two")
      if not self.fuse_bitsplit:
        raise ValueError("Int4Config: scale_mode='group' runs the bit split fused "
                         "(fuse_bitsplit=True, bit-identical to the two-GEMM form)")
    if not 0.0 < self.lss_budget <= 1.0:
      raise ValueError(f"Int4Config.lss_budget must be in (0, 1], got {self.lss_budget!r}")

  @classmethod
  def paper(cls, **overrides) -> "Int4Config":
    """The paper's method: HQ block 32 with learned per-tensor LSQ scales, [-8, 7] as in its code,
    bit-split gradients with stochastic rounding, Bernoulli leverage-score sampling."""
    settings = dict(hadamard_block=32, scale_mode="lsq", int_range="full", grad_mode="bitsplit",
                    stochastic_rounding=True, lss="bernoulli", lss_budget=0.5)
    settings.update(overrides)
    return cls(**settings)

  @property
  def qrange(self) -> Tuple[int, int]:
    return quantize.int_range(self.int_range)

  @property
  def contraction_multiple(self) -> int:
    """int4_linear zero-pads the contraction dim to a multiple of this (exact: zeros add 0)."""
    if self.scale_mode == "group":
      return max(self.hadamard_block, self.scale_group)
    return self.hadamard_block

  @property
  def needs_key(self) -> bool:
    """Whether the backward pass draws random numbers."""
    quantized_grads = self.grad_mode != "float"
    return (quantized_grads and self.stochastic_rounding) or self.lss in ("bernoulli",
                                                                           "systematic")

  def replace(self, **changes) -> "Int4Config":
    return dataclasses.replace(self, **changes)
