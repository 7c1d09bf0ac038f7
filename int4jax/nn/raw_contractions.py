"""INT4 for contractions a linen module writes itself: `jax.lax.dot_general(x, self.weight, ...)`
or `jnp.einsum(spec, x, self.kernel)` inside a module's method (a Conv1D-style or DenseGeneral-
style module), matched by the module's path like a Dense layer. Opt-in:
`quantize_model(model, ..., intercept_raw=True)`, since it changes what a model's own einsums do
(a router or a tied output head written as an einsum on a param would become INT4 too).

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
Anything else runs unchanged; a contraction of a matching module that is not such a product
(attention's QK^T: no param operand) is logged once as skipped, with the reason. Configs that
keep quantizer state (hadamard_block="search", scale_mode="lsq") need a Dense/Einsum layer to hold
it, and raise here.
"""

import contextlib
import logging
import threading
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import flax.linen.module as linen_module
import jax
import jax.numpy as jnp

from int4jax import contraction
from int4jax.config import Int4Config
from int4jax.nn.int4_dot import int4_dot_general, int4_einsum
from int4jax.rules import QuantizationPlan, QuantRule, config_for

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


def _skip(path: str, why: str, record) -> None:
  if isinstance(record, QuantizationPlan):
    record.skipped.setdefault(path, why)
  if (path, why) not in _skipped:
    _skipped.add((path, why))
    logger.warning("int4jax: a contraction in %s stays float: %s", path or "<root>", why)


@contextlib.contextmanager
def _int4_code():
  _state.depth = getattr(_state, "depth", 0) + 1
  try:
    yield
  finally:
    _state.depth -= 1


def _rewrite(rules, record, run_int4, skip_types, lhs, rhs, int4_call, float_call, check):
  """int4_call(owner, config) when the call is a matched weight contraction, else float_call()."""
  if getattr(_state, "depth", 0) or (jnp.result_type(lhs) == jnp.int8
                                     and jnp.result_type(rhs) == jnp.int8):
    return float_call()  # int4jax's own integer GEMMs (also when traced after the guard exits)
  owner = _owner(skip_types)
  if owner is None:
    return float_call()
  path = "/".join(str(p) for p in owner.path)
  config = config_for(rules, path)
  if config is None:
    if record is not None and _is_param(owner, rhs):
      record.setdefault(path, None)
    return float_call()
  if not _is_param(owner, rhs) or _is_param(owner, lhs):
    _skip(path, "its second operand is not a param of the module (activations only, or the "
                "weight on the left)", record)
    return float_call()
  why = check()
  if why is not None:
    _skip(path, why, record)
    return float_call()
  if config.hadamard_block == "search" or config.scale_mode == "lsq":
    raise ValueError(f"int4jax: the raw contraction in {path or '<root>'} cannot hold quantizer "
                     f"state (hadamard_block={config.hadamard_block!r}, scale_mode="
                     f"{config.scale_mode!r}); use a config without it there, or a Dense/Einsum "
                     "layer")
  if record is not None:
    record[path] = config
  if not run_int4:
    return float_call()
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

  return _rewrite(*active, lhs, rhs,
                  lambda owner, config: int4_dot_general(owner, lhs, rhs, dimension_numbers,
                                                         config, precision,
                                                         preferred_element_type),
                  float_call, check)


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

  return _rewrite(*active, lhs, rhs,
                  lambda owner, config: int4_einsum(owner, spec, lhs, rhs, config,
                                                    kwargs.get("preferred_element_type")),
                  float_call, check)


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
      _originals.update(dot_general=jax.lax.dot_general, einsum=jnp.einsum)
      jax.lax.dot_general, jnp.einsum = _dot_general, _einsum
    _users[0] += 1
  try:
    yield
  finally:
    stack.pop()
    with _lock:
      _users[0] -= 1
      if _users[0] == 0:
        jax.lax.dot_general, jnp.einsum = _originals["dot_general"], _originals["einsum"]
        _originals.clear()
