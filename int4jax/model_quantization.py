"""One call to make an existing Flax model INT4, linen or NNX, by regex rules on module paths."""

from typing import Optional, Sequence

import flax.linen as nn
from flax import nnx

from int4jax import contraction_scan
from int4jax.config import Int4Config
from int4jax.nn.quantize import QuantizedModel, quantize_linen
from int4jax.nnx.quantize import INT4_TYPES as NNX_INT4_TYPES, SWAPS as NNX_SWAPS
from int4jax.nnx.quantize import einsum_problem, quantize_nnx
from int4jax.nnx.serving import packing as nnx_packing
from int4jax.rules import QuantizationPlan, QuantRule


def quantize_model(model, rules: Optional[Sequence[QuantRule]] = None, *,
                   config: Int4Config = Int4Config(), exclude: Sequence[str] = (),
                   rngs: Optional[nnx.Rngs] = None, strict: bool = False,
                   intercept_raw: Optional[bool] = None):
  """INT4 for the linear layers of `model` that the rules pick: linen Dense, DenseGeneral and
  Einsum; NNX Linear, LinearGeneral (nnx.MultiHeadAttention's projections) and Einsum.

  rules: QuantRule(path=regex, config=Int4Config or None), first full match on the '/'-joined
    module path wins, unmatched layers stay float. Shorthand without rules: every layer gets
    `config` except paths matching a regex in `exclude` (e.g. the classifier head).
  linen: returns a new module (`QuantizedModel`) with the same param tree; the model's code is
    untouched. Its `.plan(*example_args)` lists which layers are INT4.
  A rule or exclude pattern that matches no layer (a typo) warns; strict=True raises instead
    (NNX: at this call; linen: when the model is first traced or planned).
  NNX: swaps the matched layers IN PLACE for their int4jax.nnx versions sharing their Params and
    returns the same model; `rngs` supplies the 'quant' stream for backward randomness.
  Embeddings, attention's QK^T / PV, norms and activations are not linear layers here and stay
    float, as does an Einsum whose equation is not a (tokens x in) @ (in x out) contraction
    (logged).
  intercept_raw (linen; default on): also make INT4 the `lax.dot_general` / `jnp.einsum` calls
    that modules run on their own params (gemma's Einsum modules, a Conv1D), each named by its
    module's path, or by the param's path when the module holds several weights
    (`layer_0/mlp/linear`; int4jax.nn.raw_contractions). A contraction on a param used
    transposed (a tied head `x @ table.T`) stays float and is listed in the plan. False: only
    Dense, DenseGeneral and Einsum layers.
  """
  if isinstance(model, nn.Module):
    if rngs is not None:
      raise ValueError("rngs= is for NNX models; a linen model takes rngs={'quant': key} in apply")
    return quantize_linen(model, rules, config=config, exclude=exclude, strict=strict,
                          intercept_raw=True if intercept_raw is None else intercept_raw)
  if isinstance(model, nnx.Module):
    if intercept_raw:
      raise ValueError("intercept_raw is for linen models; NNX models get INT4 for nnx.Linear, "
                       "nnx.LinearGeneral and nnx.Einsum layers")
    quantize_nnx(model, rules, config=config, exclude=exclude, rngs=rngs, strict=strict)
    return model
  raise TypeError(f"quantize_model: expected a flax.linen or flax.nnx Module, got "
                  f"{type(model).__name__}")


def quantization_plan(model, *example_args, **example_kwargs) -> QuantizationPlan:
  """Which contractions of `model` are INT4: {layer path: Int4Config, or None when float}, with
  `.skipped` {path: why a contraction there stays float} and `.describe()` listing them all
  (int4jax.rules.QuantizationPlan). Linen: a QuantizedModel traced on example inputs (shapes
  are enough). NNX: the model's Linear / LinearGeneral / Einsum layers as they are now; a float
  Einsum whose equation is not an INT4 GEMM is listed as skipped. With example inputs (required
  for linen, optional for NNX) the forward is traced, and every module that contracts outside
  those layers (attention's QK^T and weights x V, a tied head) is listed as skipped too
  (int4jax.contraction_scan). Also `int4jax.plan`."""
  if isinstance(model, QuantizedModel):
    if not example_args and not example_kwargs:
      raise TypeError("quantization_plan(model, *example_inputs): a linen model's layers are "
                      "known only when it is traced, so pass an example input (shapes are "
                      "enough: jax.ShapeDtypeStruct works)")
    return model.plan(*example_args, **example_kwargs)
  if isinstance(model, nnx.Module):
    layer_types = tuple(t for t, _ in NNX_SWAPS)
    result = QuantizationPlan()
    for path, node in nnx.iter_graph(model):
      if isinstance(node, layer_types):
        name = "/".join(str(p) for p in path)
        result[name] = node.config if isinstance(node, NNX_INT4_TYPES) else None
        problem = None if result[name] is not None else einsum_problem(node)
        if problem is not None:
          result.skipped[name] = problem
        layout = nnx_packing(node) if result[name] is not None else None
        if layout is not None:
          result.contracted_dims[name] = layout[1]
          if layout[0]:
            result.kernel_perms[name] = layout[0]
    if example_args or example_kwargs:
      for path, count in _nnx_unowned_contractions(model, example_args, example_kwargs).items():
        result.skipped.setdefault(path, contraction_scan.describe(count))
    return result
  raise TypeError(f"quantization_plan: expected a QuantizedModel or an nnx.Module, got "
                  f"{type(model).__name__}")


plan = quantization_plan


def _nnx_unowned_contractions(model, args, kwargs):
  """contraction_scan.unowned_contractions of the NNX model's forward on these inputs, traced on
  a merged copy (shapes are enough; the model's state is untouched)."""
  graphdef, state = nnx.split(model)
  layer_types = tuple(t for t, _ in NNX_SWAPS)
  layers = ["/".join(str(p) for p in path) for path, node in nnx.iter_graph(model)
            if isinstance(node, layer_types)]
  with contraction_scan.scoped_nnx_calls(model, layer_types) as set_paths:
    def forward(state, *a, **k):
      traced = nnx.merge(graphdef, state)
      set_paths(traced)
      return traced(*a, **k)
    jaxpr = contraction_scan.trace_forward(forward, (state,) + tuple(args), kwargs)
  return contraction_scan.unowned_contractions(jaxpr, layers)
