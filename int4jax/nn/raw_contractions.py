"""INT4 for contractions a linen module writes itself: `jax.lax.dot_general(x, self.weight, ...)`
or `jnp.einsum(spec, x, self.kernel)` inside a module's method (Hugging Face-style Conv1D,
MaxText-style DenseGeneral), matched by the module's path like a Dense layer.

While a quantized model traces, `jax.lax.dot_general` and `jnp.einsum` are wrapped (process-wide,
for the duration of the trace; calls that look the functions up at call time are seen, which is
how `lax.dot_general(...)` and `jnp.einsum(...)` are usually written; `x @ w` is not). A call is
rewritten when:
- the innermost module is a user module, not a Dense/DenseGeneral/Einsum layer (those have their
  own interception) and not int4jax's own code;
- its second operand is one of that module's params (the weight) and the first is not;
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
from int4jax.rules import QuantRule, config_for

logger = logging.getLogger("int4jax")
_skipped = set()
_state = threading.local()  # .depth > 0 while int4jax's own code runs (no re-interception)


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


def _skip(path: str, why: str) -> None:
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
  if getattr(_state, "depth", 0):
    return float_call()
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
                "weight on the left)")
    return float_call()
  why = check()
  if why is not None:
    _skip(path, why)
    return float_call()
  if config.hadamard_block == "search" or config.scale_mode == "lsq":
    raise ValueError(f"int4jax: the raw contraction in {path} cannot hold quantizer state "
                     f"(hadamard_block={config.hadamard_block!r}, scale_mode="
                     f"{config.scale_mode!r}); use a config without it there, or a Dense/Einsum "
                     "layer")
  if record is not None:
    record[path] = config
  if not run_int4:
    return float_call()
  with _int4_code():
    return int4_call(owner, config)


@contextlib.contextmanager
def intercept(rules: Sequence[QuantRule], record: Optional[Dict[str, Any]], run_int4: bool,
              skip_types):
  """Wraps jax.lax.dot_general and jnp.einsum for the duration (see the module doc)."""
  dot_general, einsum = jax.lax.dot_general, jnp.einsum

  def int4_or_float_dot_general(lhs, rhs, dimension_numbers, precision=None,
                                preferred_element_type=None, **kwargs):
    float_call = lambda: dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                     preferred_element_type=preferred_element_type, **kwargs)

    def check():
      try:
        contraction.check_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
      except ValueError as e:
        return str(e)
      return None

    return _rewrite(rules, record, run_int4, skip_types, lhs, rhs,
                    lambda owner, config: int4_dot_general(owner, lhs, rhs, dimension_numbers,
                                                           config, precision,
                                                           preferred_element_type),
                    float_call, check)

  def int4_or_float_einsum(spec, *operands, **kwargs):
    float_call = lambda: einsum(spec, *operands, **kwargs)
    if not isinstance(spec, str) or len(operands) != 2:
      return float_call()
    lhs, rhs = operands

    def check():
      try:
        contraction.einsum_dimension_numbers(spec, jnp.ndim(lhs), jnp.ndim(rhs))
      except ValueError as e:
        return str(e)
      return None

    return _rewrite(rules, record, run_int4, skip_types, lhs, rhs,
                    lambda owner, config: int4_einsum(
                        owner, spec, lhs, rhs, config, kwargs.get("preferred_element_type")),
                    float_call, check)

  jax.lax.dot_general, jnp.einsum = int4_or_float_dot_general, int4_or_float_einsum
  try:
    yield
  finally:
    jax.lax.dot_general, jnp.einsum = dot_general, einsum
