"""The interception is part of every JAX trace cache key, so a cached trace is never reused
under another config.

Interception works at trace time (flax's `nn.intercept_methods`, the wrapped `lax.dot_general` /
`jnp.einsum`), which caches do not see: flax's `nn.jit` keys its trace on the module's fields,
`jax.jit` and `jax.checkpoint` on the function and its avals. Without this, a model whose
`__call__` is wrapped in `nn.jit` (gemma's Transformer) traced once as float, or under config A,
silently replays that trace under config B. `jax.make_user_context` adds a value to the key of
every JAX cache (jit, checkpoint, scan, the compilation cache); `interception(key)` sets it for
the duration of a trace. Keys nest: an inner interception's value holds the outer one's.
"""

import contextlib
import itertools
from typing import Hashable

import jax

_CONTEXT = jax.make_user_context(None)
_fresh = itertools.count()


@contextlib.contextmanager
def interception(key: Hashable):
  """Traces inside see `key` (with the enclosing interception's) in JAX's cache keys."""
  with _CONTEXT((_CONTEXT.value, key)):
    yield


def fresh_key() -> Hashable:
  """A key no other trace has: for traces that must run (a plan records what the trace visits)."""
  return ("fresh", next(_fresh))
