"""Int4Config: every choice the INT4 linear op makes, in one frozen dataclass."""

import dataclasses
import numbers
from typing import Literal, Optional, Tuple, Union

from int4jax import backends
from int4jax.quantizers import hadamard, int4_quant as quantize, two_level

ScaleMode = Literal["row", "tensor", "lsq"]
GradMode = Literal["bitsplit", "int4", "float"]
LssMode = Literal["off", "nonzero", "bernoulli", "systematic"]
Backend = str  # "auto" or a registered backend name (int4jax/backends/)

_CHOICES = {
    "scale_mode": ("row", "tensor", "lsq"),
    "int_range": ("symmetric", "full"),
    "forward_bits": (4, 8),
    "forward_rounding": ("nearest", "stochastic"),
    "grad_mode": ("bitsplit", "int4", "float"),
    "lss": ("off", "nonzero", "bernoulli", "systematic"),
}

# Fields checked by type before their values (a bool is not an int here, a str not a number).
_INTS = ("scale_group", "scale_levels", "scale_search", "lss_blocks", "forward_bits")
_BOOLS = ("stochastic_rounding", "fuse_bitsplit", "pack_residuals")
_REALS = ("lss_budget",)
_OPTIONAL_REALS = ("scale_clip",)
_STRS = ("scale_mode", "int_range", "forward_rounding", "grad_mode", "lss", "backend")
_OPTIONAL_STRS = ("fsdp_axis",)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_types(config) -> None:
  """A TypeError naming the field for a value of the wrong type (scale_levels=2.5,
  stochastic_rounding="no", hadamard_block=True, lss_budget="0.5"), before any value check."""
  def bad(name, want):
    value = getattr(config, name)
    raise TypeError(f"Int4Config.{name} must be {want}, got {value!r} "
                    f"({type(value).__name__})")

  for name in _INTS:
    if not _is_int(getattr(config, name)):
      bad(name, "an int")
  for name in _BOOLS:
    if not isinstance(getattr(config, name), bool):
      bad(name, "a bool (True or False)")
  for name in _REALS:
    if not _is_real(getattr(config, name)):
      bad(name, "a number")
  for name in _OPTIONAL_REALS:
    if getattr(config, name) is not None and not _is_real(getattr(config, name)):
      bad(name, "a number or None")
  for name in _STRS:
    if not isinstance(getattr(config, name), str):
      bad(name, "a str")
  for name in _OPTIONAL_STRS:
    if getattr(config, name) is not None and not isinstance(getattr(config, name), str):
      bad(name, "a str (a mesh axis name) or None")
  if config.hadamard_block != "search" and not _is_int(config.hadamard_block):
    bad("hadamard_block", "an int (a power of two) or 'search'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Int4Config:
  """How `int4_linear` quantizes. The default needs no extra state (dynamic scales).

  Defaults and why (tests/test_defaults.py; on real activations experiments/results/
  bert_layer_errors.md): a 32-block Hadamard spreads outlier channels; two-level scales (a float
  scale per row times an integer multiplier 1..16 per 16 contraction elements, inside the int8
  operand) cut the forward error well below one scale per row at the same GEMM cost; bit
  splitting is ~INT8-accurate at one int8 GEMM per backward product; sampling is off by default
  because on int8 hardware the fused bit split already costs one GEMM, and LSS trades that for
  variance (opt in with `lss=`).
  """

  # Block size b of the block-diagonal Hadamard along the contraction dim (a power of two;
  # 1 disables HQ). A contraction not divisible by b is zero-padded up to a multiple of b
  # (exact: the padding contributes nothing) so every layer gets the full transform.
  # "search" is resolved per layer on the first batch by the Flax modules
  # (`int4jax.quantizers.search_hadamard_block`); the functional op needs an int.
  hadamard_block: Union[int, Literal["search"]] = 32
  # Forward scales (the outer, float level): "row" = one scale per row of each GEMM operand
  # along its kept dim (per token for X, per output channel for W); "tensor" = one scale per
  # tensor; "lsq" = learnable per-tensor step sizes passed in (`scales=`), with the LSQ gradient.
  # "row" and "tensor" are dynamic (from the data) and take the two-level fields below.
  scale_mode: ScaleMode = "row"
  # Two-level scales (int4jax/quantizers/two_level.py): each group of `scale_group` consecutive
  # contraction elements gets an integer multiplier m in {1, ..., scale_levels} on top of the
  # outer scale, held inside the int8 operand as m * q (|m * q| <= 7 * scale_levels), so every
  # product is still one int8 GEMM. scale_levels=1 is plain abs-max per row / per tensor.
  # Group length (a power of two; with scale_levels > 1 the contraction is zero-padded to a
  # multiple of max(scale_group, hadamard_block)).
  scale_group: int = 16
  # Number of multiplier levels L: m * q must fit int8 (L <= 18; L <= 16 for int_range="full").
  scale_levels: int = 16
  # Multiplier candidates per group (round-to-nearest operands only; two_level.py): besides
  # m = ceil(L * groupmax / R), try the next scale_search - 1 smaller ones and keep the one with
  # the least squared error (a finer step that may clip the group's largest values). 1: the ceil
  # rule alone (nothing clips). 2 lowers the forward error on MiniLM's real layers
  # (experiments/results/bert_layer_errors.md) but did not raise BERT accuracy on either task
  # (variant int4-search, experiments/results/bert_summary.md), so it is off. No effect with
  # scale_levels=1, nor on stochastically rounded operands (a forward_rounding="stochastic"
  # call with a key keeps the ceil rule, so it stays unbiased; without a key, as in evaluation
  # and packed serving, it rounds to nearest and searches).
  scale_search: int = 1
  # Clip the outer scale's range at clip_ratio * RMS of the row instead of its abs-max (MSE
  # clipping for near-Gaussian rows). None: abs-max, nothing clips; clipping raised the error on
  # MiniLM's real layers (experiments/results/bert_layer_errors.md), so it is off.
  scale_clip: Optional[float] = None
  # INT4 range: "symmetric" [-7, 7] (the paper's text) or "full" [-8, 7] (its released code).
  int_range: Literal["symmetric", "full"] = "symmetric"
  # Bits of the forward operands X^ and W^: 4, or 8 for layers a policy keeps at INT8 (e.g. the
  # attention's query/key projections). On int8 hardware both cost the same GEMM. At 8 bits
  # the range is [-127, 127] ([-128, 127] with int_range="full") and scale_levels must be 1
  # (m * q has no spare bits). The backward's dY quantization (grad_mode) is unchanged.
  forward_bits: Literal[4, 8] = 4
  # Rounding of the forward operands X^ and W^: "nearest" (half to even, deterministic) or
  # "stochastic" (unbiased, E[X^] = XH; a candidate for the LM gap, experiments/variants.py).
  # Stochastic rounding uses the op's key (independent of the backward's draws); a call
  # without a key, e.g. linen evaluation with no 'quant' rng, rounds to nearest. NNX layers
  # draw a key from their rng stream on every call, so evaluate them with a nearest config.
  forward_rounding: Literal["nearest", "stochastic"] = "nearest"
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
  # Per-block budgets: dW's token rows are sampled in this many equal contiguous blocks, each
  # water-filled to lss_budget x its rows and drawn on its own (still unbiased). Set it to the
  # data-parallel size under jit with tokens split over devices, so each device samples its own
  # rows with no global sort and no cross-device row gather; the token count must divide by it.
  # Systematic sampling keeps round(lss_budget x rows per block) rows in each block (so
  # blocks x that, which for small blocks can differ from lss_budget x tokens), and none are
  # dropped when that is every row of a block. Ignored when lss is "off" or "nonzero".
  # Inside shard_map each shard already sees only its rows: leave it at 1 there.
  lss_blocks: int = 1
  # Run the bit-split (hi, lo) pair as ONE int8 GEMM of R*hi + lo (bit-identical to two INT4
  # GEMMs on int8 hardware; False runs the two INT4 GEMMs, as INT4 tensor cores would).
  fuse_bitsplit: bool = True
  # Keep the forward's INT4 operands for the backward packed: two INT4 values per byte plus the
  # group multipliers (two per byte), about 4.25 bits per element instead of the int8 operand's
  # 8, unpacked inside the backward (int4jax/quantizers/packing.py). The gradients are bit-
  # identical; it trades the unpack for the saved residual memory. Needs forward_bits=4; the
  # FSDP weight (fsdp_axis) is kept as its packed shards either way.
  pack_residuals: bool = False
  # Integer GEMM implementation: "xla" (lax.dot_general int8 x int8 -> int32: cuBLAS on GPU,
  # exact on CPU); "reference" (plain int32 jnp matmul); "pallas" (Pallas-Triton kernel with the
  # dequantization fused; interpreted on CPU); "triton" (jax-triton kernel, GPU only);
  # "mosaic" (Pallas Mosaic GPU kernel, Hopper only); any other backend registered in
  # int4jax/backends/; "auto" picks per platform and GEMM shape (on GPU from int4jax.tune's
  # choices, a pure lookup under jit) and reports it (int4jax.backend.describe_backend).
  backend: Backend = "auto"
  # FSDP with INT4 weights on the wire (int4jax/fsdp.py): the name of the mesh axis that FSDP
  # splits weights over. Each (in, out) kernel is then quantized where it lives, split on its
  # output dim over this axis, and the packed INT4 values, group multipliers and scales are
  # all-gathered instead of the float weight (~0.27x bf16's bytes at the default). The mesh must
  # be set when the step is traced (`with jax.set_mesh(mesh):`). None: GSPMD gathers whatever
  # the placement asks for (float weights under FSDP).
  fsdp_axis: Optional[str] = None

  def __post_init__(self):
    _check_types(self)
    if self.scale_mode == "group":
      raise ValueError("Int4Config: scale_mode='group' (one integer GEMM per group) was retired; "
                       "the default scale_mode='row' has per-group scales in one GEMM "
                       "(scale_group=, scale_levels=)")
    for name, allowed in dict(_CHOICES, backend=("auto",) + backends.names()).items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"Int4Config.{name} must be one of {allowed}, got {getattr(self, name)!r}")
    b = self.hadamard_block
    if b != "search" and not hadamard.is_power_of_two(b):
      raise ValueError(f"Int4Config.hadamard_block must be a power of two or 'search', got {b!r}")
    if not hadamard.is_power_of_two(self.scale_group):
      raise ValueError(f"Int4Config.scale_group must be a power of two, got {self.scale_group!r}")
    if self.forward_bits == 8 and self.scale_levels != 1:
      raise ValueError("Int4Config: forward_bits=8 fills the int8 operand, so the group "
                       f"multipliers have no room; set scale_levels=1 (got {self.scale_levels})")
    if self.pack_residuals and (self.forward_bits != 4 or self.scale_levels > 16):
      raise ValueError("Int4Config.pack_residuals keeps INT4 values and multipliers 1..16, a "
                       "nibble each: it needs forward_bits=4 and scale_levels <= 16 (got "
                       f"forward_bits={self.forward_bits}, scale_levels={self.scale_levels}); "
                       "set pack_residuals=False for such layers")
    if not two_level.fits_int8(self.forward_qrange, self.scale_levels):
      raise ValueError(f"Int4Config.scale_levels must be >= 1 with m * q inside int8 for q in "
                       f"{self.qrange} (<= 18 symmetric, <= 16 full), got {self.scale_levels!r}")
    if self.scale_mode == "lsq" and (self.scale_levels != 1 or self.scale_clip is not None):
      raise ValueError("Int4Config: scale_mode='lsq' learns one step size per tensor; set "
                       "scale_levels=1 and scale_clip=None (Int4Config.paper() does)")
    if self.scale_mode == "lsq" and self.forward_rounding != "nearest":
      raise ValueError("Int4Config: scale_mode='lsq' has its step-size gradient defined for "
                       "round-to-nearest; set forward_rounding='nearest'")
    if isinstance(self.scale_search, bool) or not (isinstance(self.scale_search, int)
                                                     and self.scale_search >= 1):
      raise ValueError(f"Int4Config.scale_search must be an int >= 1 (1: the ceil rule), got "
                       f"{self.scale_search!r}")
    if (self.scale_search > 1 and self.scale_levels > 1
        and self.scale_group > two_level.MAX_SEARCH_GROUP):
      raise ValueError(f"Int4Config: scale_search counts errors in int32 for groups of at most "
                       f"{two_level.MAX_SEARCH_GROUP} elements (scale_group={self.scale_group}); "
                       "set scale_search=1 or a smaller scale_group")
    if self.scale_clip is not None and not self.scale_clip > 0:
      raise ValueError(f"Int4Config.scale_clip must be > 0 or None, got {self.scale_clip!r}")
    if self.fsdp_axis is not None and self.scale_mode == "lsq":
      raise ValueError("Int4Config: fsdp_axis gathers dynamically quantized weights; "
                       "scale_mode='lsq' quantizes with learned scales, so use 'row' or 'tensor'")
    if self.fsdp_axis is not None and self.scale_levels > 16:
      raise ValueError("Int4Config: fsdp_axis packs the group multipliers in 4 bits; set "
                       f"scale_levels <= 16 (got {self.scale_levels})")
    if isinstance(self.lss_blocks, bool) or not (isinstance(self.lss_blocks, int)
                                                   and self.lss_blocks >= 1):
      raise ValueError(f"Int4Config.lss_blocks must be an int >= 1, got {self.lss_blocks!r}")
    if not 0.0 < self.lss_budget <= 1.0:
      raise ValueError(f"Int4Config.lss_budget must be in (0, 1], got {self.lss_budget!r}")

  @classmethod
  def paper(cls, **overrides) -> "Int4Config":
    """The paper's method: HQ block 32 with learned per-tensor LSQ scales, [-8, 7] as in its code,
    bit-split gradients with stochastic rounding, Bernoulli leverage-score sampling."""
    settings = dict(hadamard_block=32, scale_mode="lsq", scale_levels=1, int_range="full",
                    grad_mode="bitsplit",
                    stochastic_rounding=True, lss="bernoulli", lss_budget=0.5)
    settings.update(overrides)
    return cls(**settings)

  @property
  def qrange(self) -> Tuple[int, int]:
    return quantize.int_range(self.int_range)

  @property
  def forward_qrange(self) -> Tuple[int, int]:
    """(qmin, qmax) of the forward operands: qrange at 4 bits, its 8-bit analogue at 8."""
    if self.forward_bits == 4:
      return self.qrange
    return (-128 if self.int_range == "full" else -127, 127)

  @property
  def contraction_multiple(self) -> int:
    """int4_linear zero-pads the contraction dim to a multiple of this (exact: zeros add 0)."""
    if self.scale_levels > 1:
      return max(self.hadamard_block, self.scale_group)
    return self.hadamard_block

  @property
  def needs_key(self) -> bool:
    """Whether training draws random numbers (a gradient without a key raises)."""
    quantized_grads = self.grad_mode != "float"
    return ((quantized_grads and self.stochastic_rounding) or self.forward_rounding == "stochastic"
            or self.lss in ("bernoulli", "systematic"))

  def replace(self, **changes) -> "Int4Config":
    return dataclasses.replace(self, **changes)
