"""INT4 for an existing linen model without editing it: method interception on module paths.

Every nn.Dense / nn.DenseGeneral / nn.Einsum call inside the model is intercepted; if its path
matches a rule with a config, the call runs `int4_dense_call` / `int4_einsum_call` on the same
module (so the params keep their names, shapes and initialisers), else it runs unchanged. An
Einsum whose equation is not a (tokens x in) @ (in x out) contraction stays float, logged once.
`lax.dot_general` / `jnp.einsum` calls that a module makes on its own params are intercepted too
(int4jax.nn.raw_contractions; intercept_raw=False turns that off). The interception is part of
JAX's trace cache key (int4jax.nn.retrace), so `nn.jit` never replays another config's trace.
"""

import contextlib
import logging
import types
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from int4jax.config import Int4Config
from int4jax import contraction, contraction_scan
from int4jax.nn.dense import Dense, DenseGeneral, int4_dense_call, packed_dims
from int4jax.nn.einsum import Einsum, einsum_spec, int4_einsum_call
from int4jax.nn import raw_contractions, retrace
from int4jax.nn.int4_dot import STATE_COLLECTION
from int4jax.serving import einsum_packing
from int4jax.rules import (QuantizationPlan, QuantRule, check_all_match, config_for,
                           make_rules)


logger = logging.getLogger("int4jax")
_skipped = set()
# {interception key: the layer paths its traces visited}: for calls that replay a cached trace
_visited: Dict[Any, set] = {}
LINEAR_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum)
INT4_LAYERS = (Dense, DenseGeneral, Einsum)  # already INT4 by construction


def _module_path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def _unmappable(layer: nn.Module, args, kwargs) -> Optional[str]:
  """Why this Einsum call is not an INT4 GEMM (None if it is, or for Dense layers)."""
  if not isinstance(layer, nn.Einsum):
    return None
  spec = kwargs.get("einsum_str", args[1] if len(args) > 1 else None)
  inputs = kwargs["inputs"] if "inputs" in kwargs else args[0]
  try:
    contraction.einsum_dimension_numbers(einsum_spec(layer, spec), inputs.ndim,
                                         len(layer.shape))
  except ValueError as e:
    return str(e)
  return None


def _record_packable(record, path: str, layer: nn.Module, args, kwargs) -> None:
  """Notes in a QuantizationPlan how a Dense / DenseGeneral / Einsum call's kernel is exported
  packed, when it can serve one (int4jax.nn.dense.packed_dims, int4jax.serving.einsum_packing)."""
  if not isinstance(record, QuantizationPlan):
    return
  inputs = kwargs["inputs"] if "inputs" in kwargs else args[0]
  if isinstance(layer, nn.Einsum):
    spec = einsum_spec(layer, kwargs.get("einsum_str", args[1] if len(args) > 1 else None))
    layout = einsum_packing(spec, jnp.ndim(inputs), len(layer.shape))
    if layout is not None:
      record.contracted_dims[path] = layout[1]
      if layout[0]:
        record.kernel_perms[path] = layout[0]
    return
  dims = packed_dims(layer, jnp.ndim(inputs))
  if dims is not None:
    record.contracted_dims[path] = dims


def _interceptor(rules: Sequence[QuantRule], record: Optional[Dict[str, Any]], run_int4: bool):
  def intercept(next_fun, args, kwargs, context):
    layer = context.module
    if context.method_name != "__call__" or not isinstance(layer, LINEAR_LAYERS):
      return next_fun(*args, **kwargs)
    path = _module_path(layer)
    if isinstance(layer, INT4_LAYERS):  # INT4 by construction: listed, not rewritten
      if record is not None:
        record[path] = layer.config
        _record_packable(record, path, layer, args, kwargs)
      return next_fun(*args, **kwargs)
    config = config_for(rules, path)
    why_not = _unmappable(layer, args, kwargs) if config is not None else None
    if why_not is not None:
      if path not in _skipped:
        _skipped.add(path)
        logger.warning("int4jax: %s stays float: %s", path, why_not)
      if isinstance(record, QuantizationPlan):
        record.skipped.setdefault(path, why_not)
      config = None
    if record is not None:
      record[path] = config
      if config is not None:
        _record_packable(record, path, layer, args, kwargs)
    if config is None or not run_int4:
      return next_fun(*args, **kwargs)
    if isinstance(layer, nn.Einsum):
      return int4_einsum_call(layer, *args, config=config, **kwargs)
    return int4_dense_call(layer, *args, config=config, **kwargs)

  return intercept


@contextlib.contextmanager
def int4_rules(rules: Sequence[QuantRule] = None, *, config: Int4Config = Int4Config(),
               exclude: Sequence[str] = (), intercept_raw: bool = True):
  """Context manager: linen Dense/DenseGeneral calls traced inside it follow `rules`.

  Prefer `quantize_model`, which keeps the rules with the model; this form must surround every
  trace (init, apply, and each jit retrace).
  """
  rules = make_rules(rules, config, exclude)
  with retrace.interception(("int4_rules", rules, intercept_raw)), \
      nn.intercept_methods(_interceptor(rules, None, True)), \
      _raw(rules, None, True, intercept_raw):
    yield


def _raw(rules, record, run_int4, enabled: bool):
  """The interception of lax.dot_general / jnp.einsum written inside modules (raw_contractions),
  when enabled."""
  if not enabled:
    return contextlib.nullcontext()
  return raw_contractions.intercept(rules, record, run_int4, LINEAR_LAYERS + (QuantizedModel,))


def _kernel_paths(variables) -> set:
  """The '/'-joined module paths that hold a "kernel" param."""
  flat = jax.tree_util.tree_flatten_with_path(variables.get("params", {}))[0]
  return {"/".join(str(k.key) for k in path[:-1]) for path, _ in flat
          if path and getattr(path[-1], "key", None) == "kernel"}


class QuantizedModel(nn.Module):
  """`model` with its matched contractions in INT4. Same param tree as `model` (the wrapper
  shares its scope), plus the documented quantizer state for configs that need it. A drop-in:
  call it as you would `model`, and its other attributes and methods are the model's
  (`.config`, `.init_cache(...)`, `apply(..., method="decode")`); methods run with the same
  INT4 rules as `__call__` when bound."""

  model: nn.Module
  rules: Tuple[QuantRule, ...]
  strict: bool = False  # a pattern that matches no layer raises instead of warning
  # also rewrite lax.dot_general / jnp.einsum that modules run on their own params
  # (int4jax.nn.raw_contractions); on by default, as the rules name the contractions
  intercept_raw: bool = True

  def setup(self):
    nn.share_scope(self, self.model)

  def __call__(self, *args, **kwargs):
    return self._intercepted(lambda model: model(*args, **kwargs))

  def _intercepted(self, run):
    """run(self.model) with this model's rules, at trace time once per trace."""
    seen = QuantizationPlan()
    key = ("quantize_model", self.rules, self.intercept_raw)
    with retrace.interception(key), \
        nn.intercept_methods(_interceptor(self.rules, seen, True)), \
        _raw(self.rules, seen, True, self.intercept_raw):
      out = run(self.model)
    # A call that runs part of the model (an encoder alone) does not trace every layer: the
    # layers whose params exist count too. A call that replays a cached trace (a method wrapped
    # in nn.jit) visits no layer: the layers an earlier trace under the same rules visited count
    # too.
    _visited.setdefault(key, set()).update(set(seen) | seen.scopes)
    layers = set(seen) | _visited[key]
    if not self.is_initializing():
      layers |= _kernel_paths(self.variables)
    check_all_match(self.rules, layers, self.strict)
    raw_contractions.report_skipped(type(self.model).__name__, seen)
    return out

  def __getattr__(self, name):
    """The wrapped model's attribute; its methods run under this model's INT4 rules."""
    try:
      return super().__getattr__(name)
    except AttributeError:
      model = self.__dict__.get("model")
      if name.startswith("_") or model is None:
        raise
    attr = getattr(model, name)
    if not (callable(attr) and getattr(attr, "__self__", None) is model):
      return attr

    def forwarded(wrapper, *args, **kwargs):
      if wrapper.scope is None:  # unbound: the model's own method (e.g. an empty cache)
        return getattr(wrapper.model, name)(*args, **kwargs)
      return wrapper._intercepted(lambda m: getattr(m, name)(*args, **kwargs))

    return types.MethodType(forwarded, self)

  def plan(self, *args, **kwargs) -> QuantizationPlan:
    """{module path: its Int4Config, or None when it stays float} for each Dense, DenseGeneral
    and Einsum called on these example inputs (shape-only: nothing is computed), and with
    intercept_raw each module's own weight contractions; `.skipped` says which contractions stay
    float and why (int4jax.rules.QuantizationPlan)."""
    record = QuantizationPlan()

    def scope(next_fun, args, kwargs, context):
      with contraction_scan.module_scope(_module_path(context.module)):
        return next_fun(*args, **kwargs)

    def init(*a, **k):
      with retrace.interception(retrace.fresh_key()), nn.intercept_methods(scope), \
          nn.intercept_methods(_interceptor(self.rules, record, False)), \
          _raw(self.rules, record, False, self.intercept_raw):
        return self.model.init(jax.random.key(0), *a, **k)

    traced = contraction_scan.trace_forward(init, args, kwargs)
    owned = set(record) | record.scopes
    for path, count in contraction_scan.unowned_contractions(traced, owned).items():
      record.skipped.setdefault(path, contraction_scan.describe(count))
    check_all_match(self.rules, owned, self.strict)
    return record


def quantize_linen(model: nn.Module, rules: Optional[Sequence[QuantRule]] = None, *,
                   config: Int4Config = Int4Config(), exclude: Sequence[str] = (),
                   strict: bool = False, intercept_raw: bool = True):
  if not isinstance(model, nn.Module):
    raise TypeError(f"quantize_model: expected a flax module, got {type(model).__name__}")
  return QuantizedModel(model=model.clone(parent=None), rules=make_rules(rules, config, exclude),
                        strict=strict, intercept_raw=intercept_raw)


def calibrate(model: nn.Module, variables, *args, **kwargs):
  """Variables with the INT4 quantizer state (LSQ scales, searched Hadamard blocks) created from
  this batch for params that lack it, e.g. float params loaded from a checkpoint. Existing
  entries are kept. Runs eagerly (the block search needs concrete values)."""
  _, state = model.apply(variables, *args, rngs={"params": jax.random.key(0)},
                         mutable=["params", STATE_COLLECTION], **kwargs)
  return {**variables, **state}
