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
  int4-hq-search    int4 with the Hadamard block searched per layer on the first batch (the
                    paper's per-layer search; experiments/results/bert_layer_errors.md shows
                    MiniLM's layers mostly prefer 128 over 32)
"""

from typing import Dict, Optional

from int4jax import Int4Config, QuantRule

VARIANTS: Dict[str, Optional[Int4Config]] = {
    "fp32": None,
    "int4": Int4Config(),
    "int4-per-row": Int4Config(scale_levels=1),
    "int4-paper": Int4Config.paper(),
    "int4-no-hadamard": Int4Config(hadamard_block=1, scale_mode="tensor", scale_levels=1),
    "int4-fwd-only": Int4Config(grad_mode="float"),
    "int4-no-lss": Int4Config.paper(lss="off"),
    "int4-hq-search": Int4Config(hadamard_block="search"),
}

# The paper keeps the classifier head (and the embeddings, which are not Dense) in float.
FLOAT_LAYERS = (r"classifier",)


def rules_for(variant: str):
  """QuantRules for `variant`, or None for the float baseline."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
  config = VARIANTS[variant]
  if config is None:
    return None
  return tuple(QuantRule(path=p, config=None) for p in FLOAT_LAYERS) + (QuantRule(config=config),)
