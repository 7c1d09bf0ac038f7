"""A small autotuner: time candidate implementations once per shape bucket, keep the fastest.

Buckets round M, N, K up to powers of two, so a model's few distinct layer shapes tune once each.
Choices live in memory for the process and, when a path is given (the environment variable
INT4JAX_AUTOTUNE_CACHE in `int4jax.backend`), in a JSON file that later processes read, keyed by
device kind so a cache from one GPU is not used on another.
"""

import json
import logging
import os
import statistics
import threading
import time
from typing import Callable, Dict, Optional, Tuple

import jax

logger = logging.getLogger("int4jax")


def bucket(m: int, n: int, k: int) -> Tuple[int, int, int]:
  """(M, N, K) rounded up to powers of two."""
  return tuple(1 << max(0, int(v) - 1).bit_length() for v in (m, n, k))


def median_seconds(fn: Callable[[], jax.Array], *, warmup: int = 2, iters: int = 10) -> float:
  """Median wall time of fn() with block_until_ready, after `warmup` untimed calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


class Autotuner:
  """Picks, per key, the candidate whose thunk runs fastest; remembers the answer."""

  def __init__(self, path: Optional[str] = None,
               timer: Callable[[Callable[[], jax.Array]], float] = median_seconds):
    self.path = path
    self.timer = timer
    self._choices: Dict[str, str] = {}
    self._lock = threading.RLock()  # a candidate may tune its own parameters (nested pick)
    if path and os.path.exists(path):
      with open(path) as f:
        self._choices.update(json.load(f))

  def choices(self) -> Dict[str, str]:
    return dict(self._choices)

  def pick(self, key: str, candidates: Dict[str, Callable[[], jax.Array]],
           retune: bool = False) -> str:
    """The fastest candidate name for `key` (timed on the first request, cached afterwards;
    retune=True times it again).

    A candidate that raises is skipped and logged; if all raise, the first error propagates.
    """
    with self._lock:
      if not retune and key in self._choices and self._choices[key] in candidates:
        return self._choices[key]
      timings, first_error = {}, None
      for name, thunk in candidates.items():
        try:
          timings[name] = self.timer(thunk)
        except Exception as e:  # a kernel that cannot run this shape is not a choice
          logger.warning("int4jax autotune %s: candidate %s failed: %s", key, name, e)
          first_error = first_error or e
      if not timings:
        raise first_error
      best = min(timings, key=timings.get)
      logger.info("int4jax autotune %s -> %s (%s)", key, best,
                  ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in sorted(timings.items())))
      self._choices[key] = best
      if self.path:
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
          json.dump(self._choices, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
      return best
