"""The contractions of a traced forward pass that no linear layer owns, by module path.

`int4jax.plan(model, *example_inputs)` lists every layer (INT4 or float). A model also contracts
outside its layers: attention's QK^T and weights x V, a tied output head written as `x @ E.T`, a
module's own `lax.dot_general`. Those stay float. To name where they are, the plan traces the
forward with each module call inside a `jax.named_scope` that carries the module's path
(`module_scope`), then walks the jaxpr (`unowned_contractions`): every dot_general whose innermost
module is not one of the plan's layers is reported under that module's path ("" for the root).
Nothing is computed; the scopes only tag the trace.
"""

import contextlib
import re
import threading
from typing import Any, Callable, Dict, Iterable, Tuple

import jax
import jax.extend as jex

_MARK = "int4jax<{}>"
_FIND = re.compile(r"int4jax<([^<>]*)>")
LAYER = "@layer"  # the mark of a linear layer whose path is unknown (made inside a transform)
_patching = threading.Lock()

WHY = ("outside a Dense/Einsum layer (activations with activations, as attention's QK^T and "
       "weights x V, or a weight the module applies itself): int4jax quantizes layers")


def module_scope(path: str):
  """A named scope marking the code traced inside it as module `path`'s."""
  return jax.named_scope(_MARK.format(path))


def _dots(jaxpr, prefix: str):
  """(name stack, eqn) for each dot_general, in sub-jaxprs too (their stacks are relative)."""
  for eqn in jaxpr.eqns:
    stack = f"{prefix}/{eqn.source_info.name_stack}"
    if eqn.primitive.name == "dot_general":
      yield stack, eqn
    for sub in jex.core.jaxprs_in_params(eqn.params):
      yield from _dots(sub, stack)


def unowned_contractions(closed_jaxpr, layer_paths: Iterable[str]) -> Dict[str, int]:
  """{module path: how many dot_generals it runs outside the layers in `layer_paths`}."""
  layers = set(layer_paths)
  found: Dict[str, int] = {}
  for stack, _ in _dots(closed_jaxpr.jaxpr, ""):
    marks = _FIND.findall(stack)
    owner = marks[-1] if marks else ""
    if owner in layers or owner == LAYER:
      continue
    found[owner] = found.get(owner, 0) + 1
  return found


def describe(count: int) -> str:
  """The plan's reason for a module with `count` such contractions."""
  return f"{count} contraction{'s' if count != 1 else ''} {WHY}"


def _is_arrays(value) -> bool:
  """Whether `value` is a pytree of arrays (jax or numpy arrays, ShapeDtypeStructs) only."""
  is_array = lambda v: isinstance(v, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(v, "__array__")
  leaves = jax.tree.leaves(value)
  return bool(leaves) and all(is_array(leaf) for leaf in leaves)


def trace_forward(fn: Callable, args: Tuple, kwargs: Dict[str, Any]):
  """jax.make_jaxpr of fn(*args, **kwargs): arguments that are arrays (or ShapeDtypeStructs, or
  pytrees of them) are traced, positional or keyword; every other value (an einsum equation, a
  flag such as deterministic=True, a Python number) is passed as it is."""
  positions = [i for i, a in enumerate(args) if _is_arrays(a)]
  traced = {k: v for k, v in kwargs.items() if _is_arrays(v)}
  static = {k: v for k, v in kwargs.items() if k not in traced}

  def call(arrays, traced_kwargs):
    full = list(args)
    for i, a in zip(positions, arrays):
      full[i] = a
    return fn(*full, **traced_kwargs, **static)

  return jax.make_jaxpr(call)(tuple(args[i] for i in positions), traced)


def _scoped(call, paths, layer_types):
  def wrapped(self, *args, **kwargs):
    path = paths.get(id(self))
    if path is None and isinstance(self, layer_types):
      path = LAYER  # a layer copy made inside a transform (nnx.scan, nnx.remat): still a layer
    if path is None:
      return call(self, *args, **kwargs)
    with module_scope(path):
      return call(self, *args, **kwargs)
  wrapped.__wrapped__ = call
  return wrapped


@contextlib.contextmanager
def scoped_nnx_calls(model, layer_types: Tuple[type, ...] = ()):
  """While active, every `__call__` of the NNX module classes in `model` runs inside
  `module_scope(path)` for the instances registered by the yielded `set_paths(traced_model)`
  (call it on the merged copy being traced: paths are its graph paths). Instances of
  `layer_types` that were not registered (copies a transform such as nnx.scan makes) are marked
  as layers; other unregistered modules are not marked, so their contractions count for the
  nearest marked caller. The classes' `__call__` are patched for the duration and restored
  after; one plan patches at a time (a lock), and other threads' calls meanwhile only gain a
  named scope."""
  from flax import nnx
  paths: Dict[int, str] = {}
  patched = {}

  def set_paths(traced_model):
    paths.clear()
    for path, node in nnx.iter_graph(traced_model):
      if isinstance(node, nnx.Module):
        paths[id(node)] = "/".join(str(p) for p in path)
  with _patching:
    try:
      for _, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
          continue
        owner = next((c for c in type(node).__mro__ if "__call__" in c.__dict__), None)
        if owner is None or owner in patched:
          continue
        patched[owner] = owner.__dict__["__call__"]
        owner.__call__ = _scoped(patched[owner], paths, layer_types)
      yield set_paths
    finally:
      for owner, call in patched.items():
        owner.__call__ = call
