"""Ahead-of-time tuning: `int4jax.tune(fn, *args)` times the kernel choices that `fn` will look
up, so that under `jit` every choice is a pure lookup and nothing runs while tracing.

Tuned choices are keyed by device kind, what is chosen, operand layout and the (M, N, K)
power-of-two bucket (int4jax/kernels/autotune.py), kept for the process and, with
INT4JAX_AUTOTUNE_CACHE=path.json, in a file later processes read. A lookup that misses returns
its fixed default, logs that once, and remembers the request, which `tune` then times.

Choices are fixed when `jit` traces, and `tune` itself traces `fn`; so when `tune` makes a
choice it clears JAX's trace and compilation caches (`jax.clear_caches()`), and the next call of
a jitted function traces again and sees the tuned choices.
"""

import logging
import os
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from int4jax.kernels import autotune

logger = logging.getLogger("int4jax")

MIN_TUNED_FLOPS = 2 * 1024**3  # GEMMs below this (2*M*N*K) use the default, untuned
Candidates = Callable[[], Dict[str, Callable[[], jax.Array]]]

_tuner: Optional[autotune.Autotuner] = None
_pending: Dict[str, Candidates] = {}
_tuning = False  # True only while `tune` runs candidates, outside any trace


def tuner() -> autotune.Autotuner:
  """The process's autotuner (reading INT4JAX_AUTOTUNE_CACHE on first use)."""
  global _tuner
  if _tuner is None:
    _tuner = autotune.Autotuner(os.environ.get("INT4JAX_AUTOTUNE_CACHE"))
  return _tuner


def key(what: str, layout: str, m: int, n: int, k: int) -> str:
  """The cache key of one choice: device kind, what is chosen, layout, (M, N, K) bucket."""
  return f"{jax.devices()[0].device_kind}|{what}|{layout}|{autotune.bucket(m, n, k)}"


def lookup(choice_key: str, default: str, candidates: Candidates, valid=None) -> str:
  """The tuned choice for `choice_key`, or `default` if none was tuned. Never times anything
  (safe under a trace), except inside `tune`, where a miss is tuned on the spot.

  candidates() builds {name: thunk} on concrete operands; it is called only by `tune`.
  valid: the names that can run here; a cached choice outside it (e.g. from a cache file written
  where jax-triton was installed) is ignored, logged, and tuned again.
  """
  choice = tuner().choices().get(choice_key)
  if choice is not None and (valid is None or choice in valid):
    return choice
  if choice is not None and choice_key not in _pending:
    logger.warning("int4jax: the tuned choice %r for %s cannot run here; using %r",
                   choice, choice_key, default)
  if _tuning:
    return tuner().pick(choice_key, candidates(), retune=choice is not None)
  if choice_key not in _pending:
    logger.info("int4jax: no tuned choice for %s; using %r (int4jax.tune(fn, *args) tunes it)",
                choice_key, default)
  _pending[choice_key] = candidates
  return default


def pending() -> Dict[str, Candidates]:
  """The lookups that missed since they were last tuned, by key."""
  return dict(_pending)


def random_int4(shape, seed: int) -> jax.Array:
  """Concrete INT4 operands (never all zeros) for timing a candidate."""
  return jnp.asarray(np.random.default_rng(seed).integers(-8, 8, shape), jnp.int8)


def checked(run: Callable[[], jax.Array], want: Callable[[], jax.Array], what: str):
  """A thunk that runs `run`, and the first time checks it against `want` bit for bit."""
  verified = []

  def thunk():
    out = run()
    if not verified:
      if not bool(jnp.array_equal(out, want())):
        raise RuntimeError(f"{what} disagrees with XLA")
      verified.append(True)
    return out
  return thunk


def lookup_variant(choice_key: str, variants: Dict[str, Any], default: str, a_shape, b_shape,
                   run: Callable, want: Callable, what: str):
  """variants[name] for the name tuned under `choice_key` (`default` if none): a kernel's
  configurations, chosen by `lookup`. Inside `tune`, each run(variant, a, b) on random INT4
  operands of a_shape and b_shape is checked against want(a, b) bit for bit, then timed."""
  def candidates():
    a, b = random_int4(a_shape, 1), random_int4(b_shape, 2)
    return {name: checked(lambda v=v: run(v, a, b), lambda: want(a, b), f"{what} {name}")
            for name, v in variants.items()}
  return variants[lookup(choice_key, default, candidates, valid=variants)]


def tune(fn: Callable, *args, **kwargs) -> Dict[str, str]:
  """Traces fn(*args, **kwargs) (abstractly: args may be arrays or jax.ShapeDtypeStructs) to find
  the kernel choices it looks up, times each untuned one on concrete operands, and returns
  {key: choice} for them (empty where nothing needs tuning, e.g. on CPU). Also tunes lookups that
  missed earlier in the process. Call it outside `jit`. When it makes a choice it clears JAX's
  caches, so that functions traced before (by `tune` itself, too) trace again."""
  global _tuning
  jax.eval_shape(fn, *args, **kwargs)
  made = {}
  _tuning = True
  try:
    while _pending:
      choice_key, candidates = next(iter(_pending.items()))
      _pending.pop(choice_key)
      try:  # a key whose every candidate fails keeps its default; the others still tune
        made[choice_key] = tuner().pick(choice_key, candidates(), retune=True)
      except Exception as e:
        logger.warning("int4jax.tune: %s could not be tuned (%s: %s); it keeps its default",
                       choice_key, type(e).__name__, e)
  finally:
    _tuning = False
  if made:
    jax.clear_caches()
  return made
