"""INT4 for an existing NNX model: swap its matched nnx.Linear, nnx.LinearGeneral (the q, k, v
and out projections of nnx.MultiHeadAttention) and nnx.Einsum layers for their int4jax.nnx
versions, which share the same Params."""

import logging

from typing import Optional, Sequence

from flax import nnx

from int4jax import contraction
from int4jax.config import Int4Config
from int4jax.nnx.general import Einsum, LinearGeneral
from int4jax.nnx.linear import Linear
from int4jax.rules import (QuantizationPlan, QuantRule, check_all_match, config_for,
                           make_rules)


logger = logging.getLogger("int4jax")

# float layer type -> its INT4 replacement's constructor from it
SWAPS = ((nnx.Linear, Linear.from_linear), (nnx.LinearGeneral, LinearGeneral.from_layer),
         (nnx.Einsum, Einsum.from_layer))
INT4_TYPES = (Linear, LinearGeneral, Einsum)


# set on the layers quantize_model swapped in (not on layers INT4 by construction, which keep
# their own config): a later quantize_model may swap them again, with its own config
REWRITTEN = "int4jax_rewritten"


def _swap_for(node):
  """The constructor of node's INT4 replacement: for a float layer, and for an INT4 layer an
  earlier quantize_model swapped in (re-quantized with the new rules); None otherwise."""
  if isinstance(node, INT4_TYPES) and not getattr(node, REWRITTEN, False):
    return None
  for float_type, make in SWAPS:
    if isinstance(node, float_type):
      return make
  return None


def _requantize_check(path: str, layer, config: Optional[Int4Config]) -> None:
  """An INT4 layer swapped in by an earlier quantize_model can take another config, not go back
  to float in place."""
  if isinstance(layer, INT4_TYPES) and config is None:
    raise ValueError(
        f"quantize_model: {path} was made INT4 in place by an earlier quantize_model, and these "
        "rules keep it float; an NNX model cannot be turned back to float in place. Quantize a "
        "copy of the float model instead (int4jax.quantize_model(nnx.clone(float_model), ...)), "
        "or give it a config")


def einsum_problem(layer) -> Optional[str]:
  """Why an nnx.Einsum's equation is not an INT4 GEMM, or None."""
  if not isinstance(layer, nnx.Einsum):
    return None
  try:
    contraction.einsum_dimension_numbers(layer.einsum_str.replace(" ", ""),
                                         len(layer.einsum_str.split(",")[0].replace("...", "")),
                                         len(layer.kernel_shape))
  except ValueError as e:
    return str(e)
  return None


def _stacked_dims(layer) -> tuple:
  """The leading dims of a layer's kernel beyond the layer's own (layers created under
  nnx.vmap for nnx.scan: one slice per scanned layer), () for a plain layer."""
  if isinstance(layer, nnx.Einsum):
    own = len(layer.kernel_shape)
  elif isinstance(layer, nnx.LinearGeneral):
    own = (len(layer.in_features) + len(layer.out_features)
           + len(getattr(layer, "batch_axis", None) or ()))
  else:
    own = 2
  shape = layer.kernel.shape
  return tuple(shape[:len(shape) - own])


def _path(path) -> str:
  return "/".join(str(p) for p in path)


def _set_child(parent, name, value):
  if isinstance(name, int) or not hasattr(parent, "__dict__") or isinstance(parent, (list, dict)):
    parent[name] = value
  else:
    setattr(parent, name, value)


def _get_child(parent, name):
  if isinstance(parent, (list, tuple, dict)) or not hasattr(parent, str(name)):
    return parent[name]
  return getattr(parent, str(name))


def quantize_nnx(model: nnx.Module, rules: Optional[Sequence[QuantRule]] = None, *,
                 config: Int4Config = Int4Config(), exclude: Sequence[str] = (),
                 rngs: Optional[nnx.Rngs] = None,
                 strict: bool = False) -> QuantizationPlan:
  """Replaces, IN PLACE, every nnx.Linear / LinearGeneral / Einsum whose path matches a rule with
  a config by its int4jax.nnx version sharing its Params. Returns the plan {path: config or None
  (float)}. An Einsum whose equation is not an INT4 GEMM stays float (logged). A rule or exclude
  pattern that matches no layer warns (strict=True: raises) before anything is replaced.
  A layer an earlier quantize_model swapped in takes these rules' config: it is swapped again,
  sharing its Params and rng stream, with fresh quantizer state; one these rules keep float
  raises (an NNX model cannot go back to float in place). Layers INT4 by construction keep
  their own config.

  rngs: where the INT4 layers draw backward randomness ('quant' stream, or 'default'); without
  it a stochastic config can run forward but a gradient raises, or pass rngs= at call time.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"quantize_model: expected an nnx.Module, got {type(model).__name__}")
  rules = make_rules(rules, config, exclude)
  plan = QuantizationPlan()
  layers = [(tuple(p), node) for p, node in nnx.iter_graph(model)
            if isinstance(node, tuple(t for t, _ in SWAPS))]  # float and already-INT4 ones
  found = [(p, node, _swap_for(node)) for p, node in layers if _swap_for(node) is not None]
  if any(not p for p, _, _ in found):
    raise TypeError("quantize_model: the model itself is a single layer; use its int4jax.nnx "
                    "version (int4jax.nnx.Linear, LinearGeneral, Einsum)")
  check_all_match(rules, [_path(p) for p, _ in layers], strict)
  for path, layer, _ in found:  # before anything is swapped: the model is changed in place
    cfg = config_for(rules, _path(path))
    stack = _stacked_dims(layer)
    if stack and cfg is not None and (cfg.scale_mode == "lsq" or cfg.hadamard_block == "search"):
      raise ValueError(f"quantize_model: {_path(path)} is a stack of {stack} layers (made under "
                       "nnx.vmap); its quantizer state (scale_mode='lsq', hadamard_block="
                       "'search') is one per layer, not per slice: use a dynamic-scale config "
                       "with a fixed block there")
  for path, layer, _ in found:
    _requantize_check(_path(path), layer, config_for(rules, _path(path)))
  for path, layer, make in found:
    cfg = config_for(rules, _path(path))
    if isinstance(layer, INT4_TYPES) and cfg == layer.config:
      plan[_path(path)] = cfg
      continue  # already this config: its quantizer state stays
    problem = einsum_problem(layer) if cfg is not None else None
    if problem is not None:
      logger.warning("int4jax: %s stays float: %s", _path(path), problem)
      plan.skipped[_path(path)] = problem
      cfg = None
    plan[_path(path)] = cfg
    if cfg is None:
      continue
    parent = model
    for name in path[:-1]:
      parent = _get_child(parent, name)
    new = make(layer, cfg, rngs)
    stack = _stacked_dims(layer)
    if rngs is None and isinstance(layer, INT4_TYPES):
      new.quant_rngs = layer.quant_rngs  # re-quantized: it keeps its stream(s)
    elif stack and new.quant_rngs is not None:  # a stack (nnx.vmap-made): a stream per slice
      new.quant_rngs = nnx.data(new.quant_rngs.split(stack))
    setattr(new, REWRITTEN, True)
    _set_child(parent, path[-1], new)
  return plan


def calibrate(model: nnx.Module, *args, **kwargs):
  """Runs `model(*args, **kwargs)` once, eagerly, so every int4jax.nnx.Linear makes its
  quantizer state (LSQ scales, searched Hadamard block) from this batch. Returns the output."""
  return model(*args, **kwargs)
