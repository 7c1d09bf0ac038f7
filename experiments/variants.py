"""The variants every experiment runs, same seed and data order: one model code, INT4 from rules.

  fp32              the float baseline
  int4              int4jax's default (HQ block 32, two-level scales: a float scale per row times
                    an integer multiplier 1..16 per 16 contraction elements, bit-split dY, no
                    sampling)
  int4-per-row      the previous default: the same with one abs-max scale per row
                    (scale_levels=1)
  int4-paper        the paper's method (LSQ per-tensor scales, [-8, 7], Bernoulli LSS at 0.5)
  int4-no-hadamard  forward per-tensor RTN without the Hadamard (the paper's RTN ablation);
                    backward as int4
  int4-fwd-only     int4's forward, float backward (the paper's forward-only ablation)
  int4-no-lss       the paper's method without leverage-score sampling
  int4-search       int4 with each group's multiplier chosen by least squared error between
                    the ceil rule's m and m - 1 (Int4Config.scale_search=2; m - 1 may clip)
  int4-hq-search    int4 with the Hadamard block searched per layer on the first batch (the
                    paper's per-layer search)
  int4-hq128        int4 with Hadamard blocks of 128 instead of 32 (a candidate for the LM gap)
  int4-mse-clip     int4-per-row with each row's range clipped at GAUSSIAN_MSE_CLIP x its RMS,
                    the clip that minimizes INT4 rounding + clipping error on Gaussian rows
                    (Hadamard-mixed rows are near-Gaussian); compare with int4-per-row
  int4-fwd-sr       int4 with stochastic (unbiased) rounding of the forward operands
  attn-proj-float   int4 on the MLP layers only; the attention projections stay float
  mlp-float         int4 on the attention projections only; the MLP layers stay float
  int4-qk8          int4, with the attention's query and key projections at 8 bits forward
                    (forward_bits=8: the softmax sees less logit noise; the same int8 GEMM)
  bf16, fp8         float baselines for speed (experiments.baselines): the same layers' GEMMs
                    in bfloat16, or FP8 via XLA with per-tensor scales; not in the default runs

Levers for the LM gap (not in the default runs):
  int8-fwd          every block layer with an 8-bit forward (forward_bits=8; on int8 tensor
                    cores the same GEMM as INT4), the backward as int4's
  int4-anneal8      int4, then the last 10% of the steps as int8-fwd (precision annealing)

For speed and memory (experiments.benchmarks.train_step; not in the default runs):
  int4-packed       int4 with the backward's INT4 operands kept packed (pack_residuals=True):
                    bit-identical gradients, fewer residual bytes

Diagnosis of the gap (not in the default runs):
  gemm-fwd-x, gemm-fwd-w, gemm-fwd, gemm-dx, gemm-dw
                    the default's INT4 quantizers on one GEMM's operands only (the forward's X,
                    its W, both, the dX GEMM, the dW GEMM), every other GEMM float, simulated in
                    float (experiments.gemm_ablation)
  only-qk, only-vo, only-up, only-down
                    the default INT4 on one layer type only (attention's query/key, value/output,
                    the MLP's up or down projection), every other layer float

Every INT4 variant keeps the task's head (classifier, lm_head) float, as the paper does; the
embeddings are not linear layers. Which layers a task calls "attn" and "mlp" is its
`layer_groups` (experiments.tasks).
"""

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

from int4jax import Int4Config, QuantRule

# Clip ratio (x RMS) with the least mean squared error for symmetric INT4 [-7, 7] on Gaussian
# rows (tests/test_experiments.py checks it against its neighbours).
GAUSSIAN_MSE_CLIP = 2.5

@dataclasses.dataclass(frozen=True)
class Variant:
  config: Optional[Int4Config]  # the block layers' config; None: the float baseline
  # (task layer group, its config; None: float), overriding `config` for that group's layers
  groups: Tuple[Tuple[str, Optional[Int4Config]], ...] = ()
  # with config None: run the INT4 variants' layers as these float GEMMs ("bf16" or "fp8",
  # experiments.baselines) instead of float32
  baseline: Optional[str] = None
  # with config None: the default's quantizers on these GEMMs of the INT4 variants' layers only
  # (experiments.gemm_ablation.PARTS), simulated in float
  gemms: Tuple[str, ...] = ()
  # precision annealing: the last `anneal_fraction` of the steps train (and evaluate) as the
  # variant named here, e.g. an 8-bit forward: still integer GEMMs, on the same state
  anneal_to: Optional[str] = None
  anneal_fraction: float = 0.0


VARIANTS: Dict[str, Variant] = {
    "fp32": Variant(None),
    "int4": Variant(Int4Config()),
    "int4-per-row": Variant(Int4Config(scale_levels=1)),
    "int4-paper": Variant(Int4Config.paper()),
    "int4-no-hadamard": Variant(Int4Config(hadamard_block=1, scale_mode="tensor",
                                           scale_levels=1)),
    "int4-fwd-only": Variant(Int4Config(grad_mode="float")),
    "int4-no-lss": Variant(Int4Config.paper(lss="off")),
    "int4-search": Variant(Int4Config(scale_search=2)),
    "int4-hq-search": Variant(Int4Config(hadamard_block="search")),
    "int4-hq128": Variant(Int4Config(hadamard_block=128)),
    "int4-mse-clip": Variant(Int4Config(scale_levels=1, scale_clip=GAUSSIAN_MSE_CLIP)),
    "int4-fwd-sr": Variant(Int4Config(forward_rounding="stochastic")),
    "attn-proj-float": Variant(Int4Config(), groups=(("attn", None),)),
    "mlp-float": Variant(Int4Config(), groups=(("mlp", None),)),
    "int4-qk8": Variant(Int4Config(), groups=(("qk", Int4Config(forward_bits=8,
                                                                scale_levels=1)),)),
    "bf16": Variant(None, baseline="bf16"),
    "fp8": Variant(None, baseline="fp8"),
    "int4-packed": Variant(Int4Config(pack_residuals=True)),
    "int8-fwd": Variant(Int4Config(forward_bits=8, scale_levels=1)),
    "int4-anneal8": Variant(Int4Config(), anneal_to="int8-fwd", anneal_fraction=0.1),
    "gemm-fwd-x": Variant(None, gemms=("fwd_x",)),
    "gemm-fwd-w": Variant(None, gemms=("fwd_w",)),
    "gemm-fwd": Variant(None, gemms=("fwd_x", "fwd_w")),
    "gemm-dx": Variant(None, gemms=("dx",)),
    "gemm-dw": Variant(None, gemms=("dw",)),
    "only-qk": Variant(None, groups=(("qk", Int4Config()),)),
    "only-vo": Variant(None, groups=(("vo", Int4Config()),)),
    "only-up": Variant(None, groups=(("up", Int4Config()),)),
    "only-down": Variant(None, groups=(("down", Int4Config()),)),
}
# Diagnosis variants: one GEMM or one layer type INT4, the rest float.
DIAGNOSIS = tuple(name for name, v in VARIANTS.items()
                  if v.gemms or (v.config is None and v.groups))
# What an experiment runs unless told otherwise: every variant but the speed baselines and the
# diagnosis.
LEVERS = ("int8-fwd", "int4-anneal8")
# The same numbers as a default-run variant, for speed and memory only (bit-identical to int4).
SAME_AS = {"int4-packed": "int4"}
DEFAULT_VARIANTS = tuple(name for name, v in VARIANTS.items()
                         if v.baseline is None and name not in DIAGNOSIS + LEVERS
                         and name not in SAME_AS)


def is_quantized(variant: str) -> bool:
  """Whether `variant` runs int4jax's INT4 op on some layers (its params then get calibrated)."""
  v = VARIANTS[variant]
  return v.config is not None or any(c is not None for _, c in v.groups)


def rules_for(variant: str, float_layers: Tuple[str, ...] = (),
              layer_groups: Mapping[str, str] = None):
  """QuantRules for `variant` on a task whose head layers are `float_layers` and whose layer
  types are `layer_groups`; None for the float baseline. The first matching rule wins."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
  v = VARIANTS[variant]
  if not is_quantized(variant):
    return None
  layer_groups = layer_groups or {}
  missing = [g for g, _ in v.groups if g not in layer_groups]
  if missing:
    raise ValueError(f"variant {variant!r} sets the layer groups {missing}, but this task "
                     f"defines only {sorted(layer_groups)}")
  return (tuple(QuantRule(path=p, config=None) for p in float_layers)
          + tuple(QuantRule(path=layer_groups[g], config=c) for g, c in v.groups)
          + (QuantRule(config=v.config),))
