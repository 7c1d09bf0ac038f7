"""INT4 for contractions a linen module writes itself: `jax.lax.dot_general(x, self.weight, ...)`
or `jnp.einsum(spec, x, self.kernel)` inside a module's method (a Conv1D-style or DenseGeneral-
style module, gemma's `Einsum`), matched by path like a Dense layer. On by default, as in Qwix
(`quantize_model(model, ..., intercept_raw=False)` turns it off): a router or an output head
written as an einsum on a param becomes INT4 too unless a rule keeps its path float, and the plan
lists each one. A contraction is named by its module's path when the module holds one weight,
else by the param's path (`layer_0/mlp/gating_einsum`), so a rule can keep any single GEMM float.

While such a model traces, `jax.lax.dot_general` and `jnp.einsum` are wrapped (installed once for
all threads, acting only on the tracing thread's calls; calls that look the functions up at call
time are seen, which is how `lax.dot_general(...)` and `jnp.einsum(...)` are usually written;
`x @ w` is not). A call is rewritten when:
- the innermost module is a user module, not a Dense/DenseGeneral/Einsum layer (those have their
  own interception) and not int4jax's own code;
- its second operand is one of that module's params (the weight) and the first is not: the very
  array, so a weight transposed or cast first (Hugging Face's FlaxConv1D transposes its kernel)
  is not recognized, and that contraction stays float (logged);
- the contraction maps to (tokens x in) @ (in x out) per batch index (int4jax.contraction);
- the module's path matches a rule with a config.
Anything else runs unchanged; a contraction of a matching module that is not such a product is
counted in the plan's `.skipped` with the reason and logged once per model: at INFO when it is
expected (attention's QK^T and PV: no param operand), as a WARNING when a weight could not be
made INT4 (the weight on the left). Configs that keep quantizer state (hadamard_block="search",
scale_mode="lsq") need a Dense/Einsum layer to hold it, and raise here.
"""

import contextlib
import logging
import threading
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.core.scope as flax_scope
import flax.linen as nn
import flax.linen.module as linen_module
import jax
import jax.numpy as jnp

from int4jax import contraction, serving
from int4jax.config import Int4Config
from int4jax.nn.int4_dot import int4_dot_general, int4_einsum
from int4jax.rules import QuantizationPlan, QuantRule, config_for
from int4jax.serving import PackedWeight

logger = logging.getLogger("int4jax")
_skipped = set()
# per thread: .depth > 0 while int4jax's own code runs (no re-interception); .active: the
# (rules, record, run_int4, skip_types) of the innermost `intercept`
_state = threading.local()


def _owner(skip_types) -> Optional[nn.Module]:
  """The innermost module, unless it is a linear layer (intercepted as a layer) or int4jax's."""
  stack = linen_module._context.module_stack
  module = stack[-1] if stack else None
  if (not isinstance(module, nn.Module) or isinstance(module, skip_types)
      or type(module).__module__.startswith("int4jax.")):
    return None
  return module


def _is_param(module: nn.Module, x) -> bool:
  return any(x is p for p in jax.tree.leaves(module.variables.get("params", {})))


def contraction_name(module: nn.Module, path: str, weight) -> Tuple[str, str]:
  """(the plan's name, the param's path) for a contraction of `module` (at `path`) with its
  param `weight`. The name is the module's path when the module holds one weight (ndim >= 2;
  gemma's Einsum `w`, a Conv1D's `weight`), else the param's path (`layer_0/mlp/gating_einsum`,
  `layer_0/mlp/linear`), so every GEMM of a module that holds several has its own entry."""
  flat = jax.tree_util.tree_flatten_with_path(module.variables.get("params", {}))[0]
  weights = [(keys, leaf) for keys, leaf in flat if jnp.ndim(leaf) >= 2]
  for keys, leaf in weights:
    if leaf is weight:
      param = "/".join([path] * bool(path) + [str(getattr(k, "key", k)) for k in keys])
      return (param if len(weights) > 1 else path), param
  return path, path


# Why a contraction stays float, and whether a user probably wanted it INT4 (logged as a WARNING;
# the others, such as attention's QK^T, are expected and logged at INFO).
ACTIVATIONS_ONLY = ("activations only (no param operand: attention's QK^T and weights x V, or "
                    "a weight transposed or cast before the call)")
WEIGHT_ON_LEFT = "the weight is the left operand (int4jax contracts activations @ weights)"


def expected(why: str) -> bool:
  return why == ACTIVATIONS_ONLY


def _skip(path: str, why: str, record) -> None:
  """Counts a float contraction in the record (reported once per model when the trace ends,
  `report_skipped`); without a record (int4_rules), logs it once per process."""
  if isinstance(record, QuantizationPlan):
    count = record.skip_counts.get((path, why), 0) + 1
    record.skip_counts[(path, why)] = count
    reasons = [f"{n} contraction{'s' if n != 1 else ''}: {w}"
               for (p, w), n in record.skip_counts.items() if p == path]
    record.skipped[path] = "; ".join(reasons)
    return
  if (path, why) not in _skipped:
    _skipped.add((path, why))
    log = logger.info if expected(why) else logger.warning
    log("int4jax: a contraction in %s stays float: %s", path or "<root>", why)


_reported = set()


def report_skipped(model_name: str, record: QuantizationPlan) -> None:
  """Once per model and set of reasons: one INFO line counting the expected float contractions
  by reason, and a WARNING for each module whose weight contraction could not be made INT4."""
  counts = tuple(sorted(record.skip_counts.items()))
  if not counts or (model_name, counts) in _reported:
    return
  _reported.add((model_name, counts))
  by_reason: Dict[str, int] = {}
  for (path, why), n in counts:
    if expected(why):
      by_reason[why] = by_reason.get(why, 0) + n
    else:
      logger.warning("int4jax: %s: %d contraction%s stay%s float: %s", path or "<root>", n,
                     "s" if n != 1 else "", "" if n != 1 else "s", why)
  if by_reason:
    logger.info("int4jax: %s: %s stay float, as expected", model_name,
                "; ".join(f"{n} contraction{'s' if n != 1 else ''} {why}"
                          for why, n in by_reason.items()))


@contextlib.contextmanager
def _int4_code():
  _state.depth = getattr(_state, "depth", 0) + 1
  try:
    yield
  finally:
    _state.depth -= 1


def _rewrite(rules, record, run_int4, skip_types, lhs, rhs, int4_call, float_call, check,
             packing):
  """int4_call(owner, config) when the call is a matched weight contraction, else float_call().
  packing(): how int4jax.export packs the weight, (kernel_perm, contracted_dims) or None.
  A float call runs with the interception paused: the dot_general inside a float jnp.einsum is
  the same contraction, not a second one."""
  def run_float():
    with _int4_code():
      return float_call()

  if getattr(_state, "depth", 0) or (jnp.result_type(lhs) == jnp.int8
                                     and jnp.result_type(rhs) == jnp.int8):
    return run_float()  # int4jax's own integer GEMMs (also when traced after the guard exits)
  owner = _owner(skip_types)
  if owner is None:
    return run_float()
  path = "/".join(str(p) for p in owner.path)
  weight = _is_param(owner, rhs) and not _is_param(owner, lhs)
  name, param = contraction_name(owner, path, rhs) if weight else (path, path)
  config = config_for(rules, name, path)
  if config is None:
    if record is not None and weight:
      record.setdefault(name, None)
      if name != path and isinstance(record, QuantizationPlan):
        record.scopes.add(path)
    return run_float()
  if not weight:
    _skip(path, WEIGHT_ON_LEFT if _is_param(owner, lhs) else ACTIVATIONS_ONLY, record)
    return run_float()
  why = check()
  if why is not None:
    _skip(path, why, record)
    return run_float()
  if config.hadamard_block == "search" or config.scale_mode == "lsq":
    raise ValueError(f"int4jax: the raw contraction {name or '<root>'} cannot hold quantizer "
                     f"state (hadamard_block={config.hadamard_block!r}, scale_mode="
                     f"{config.scale_mode!r}); use a config without it there, or a Dense/Einsum "
                     "layer")
  if record is not None:
    record[name] = config
    if isinstance(record, QuantizationPlan):
      if name != path:
        record.scopes.add(path)
      record.param_paths[name] = param
      layout = packing()
      if layout is not None:
        record.contracted_dims[name] = layout[1]
        if layout[0]:
          record.kernel_perms[name] = layout[0]
  if not run_int4:
    return run_float()
  with _int4_code():
    return int4_call(owner, config)


def _active():
  stack = getattr(_state, "active", None)
  return stack[-1] if stack else None


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                 **kwargs):
  float_call = lambda: _originals["dot_general"](
      lhs, rhs, dimension_numbers, precision=precision,
      preferred_element_type=preferred_element_type, **kwargs)
  active = _active()
  if active is None:
    return float_call()

  def check():
    try:
      contraction.check_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
    except ValueError as e:
      return str(e)
    return None

  if isinstance(rhs, PackedWeight):  # served from int4jax.export's packed weight
    return serving.packed_dot_general(lhs, rhs, dimension_numbers)
  return _rewrite(*active, lhs, rhs,
                  lambda owner, config: int4_dot_general(owner, lhs, rhs, dimension_numbers,
                                                         config, precision,
                                                         preferred_element_type),
                  float_call, check,
                  lambda: serving.dot_general_packing(dimension_numbers, jnp.ndim(rhs)))


def _einsum(spec, *operands, **kwargs):
  float_call = lambda: _originals["einsum"](spec, *operands, **kwargs)
  active = _active()
  if active is None or not isinstance(spec, str) or len(operands) != 2:
    return float_call()
  lhs, rhs = operands

  def check():
    try:
      contraction.einsum_dimension_numbers(spec, jnp.ndim(lhs), jnp.ndim(rhs))
    except ValueError as e:
      return str(e)
    return None

  if isinstance(rhs, PackedWeight):  # served from int4jax.export's packed weight
    return serving.packed_einsum(spec.replace(" ", ""), lhs, rhs)
  return _rewrite(*active, lhs, rhs,
                  lambda owner, config: int4_einsum(owner, spec, lhs, rhs, config,
                                                    kwargs.get("preferred_element_type")),
                  float_call, check,
                  lambda: serving.einsum_packing(spec.replace(" ", ""), jnp.ndim(lhs),
                                                 jnp.ndim(rhs)))


def _param(scope, name, init_fn, *init_args, unbox=True, **init_kwargs):
  """flax's Scope.param, except that a param int4jax.export packed is returned as it is: flax
  checks an existing param's shape against its initializer, which a PackedWeight (the kernel's
  INT4 values, two per byte) does not have; the contraction that reads it checks its layout."""
  if _active() is not None and scope.has_variable("params", name):
    value = scope.get_variable("params", name)
    if isinstance(value, PackedWeight):
      scope.reserve(name, "params")
      return value
  return _originals["param"](scope, name, init_fn, *init_args, unbox=unbox, **init_kwargs)


_lock = threading.Lock()
_originals: Dict[str, Any] = {}  # the unwrapped functions while the wrappers are installed
_users = [0]  # traces (any thread) inside `intercept`; the wrappers stay installed while > 0


@contextlib.contextmanager
def intercept(rules: Sequence[QuantRule], record: Optional[Dict[str, Any]], run_int4: bool,
              skip_types):
  """Rewrites this thread's lax.dot_general / jnp.einsum calls for the duration (see the module
  doc). The wrappers are installed once for all threads and pass other threads' calls (and calls
  outside any `intercept`) through unchanged; the last exit removes them."""
  stack = _state.__dict__.setdefault("active", [])
  stack.append((rules, record, run_int4, skip_types))
  with _lock:
    if _users[0] == 0:
      _originals.update(dot_general=jax.lax.dot_general, einsum=jnp.einsum,
                        param=flax_scope.Scope.param)
      jax.lax.dot_general, jnp.einsum = _dot_general, _einsum
      flax_scope.Scope.param = _param
    _users[0] += 1
  try:
    yield
  finally:
    stack.pop()
    with _lock:
      _users[0] -= 1
      if _users[0] == 0:
        jax.lax.dot_general, jnp.einsum = _originals["dot_general"], _originals["einsum"]
        flax_scope.Scope.param = _originals["param"]
        _originals.clear()
