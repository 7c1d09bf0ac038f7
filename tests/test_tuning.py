"""Tuning runs ahead of time (int4jax.tune), never under a trace: GPU "auto" dispatch and the
Pallas tile sizes are pure lookups under jit. The GPU platform is simulated on CPU by mocking the
platform the backend switch sees; the kernels and the tuner's thunks are the real ones."""

import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import int4jax
from int4jax import Int4Config, backend, backends, int4_linear, tuning
from int4jax import nn as inn
from int4jax.backends import pallas as pallas_backend
from int4jax.kernels import autotune, pallas_gemm

# A MiniLM-sized MLP layer at 4096 tokens: 384 -> 1536, every GEMM above MIN_TUNED_FLOPS.
TOKENS, D_IN, D_OUT = 4096, 384, 1536
KEY = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)  # an abstract PRNG key


class _NoTiming:
  def __call__(self, thunk):
    raise AssertionError("the autotuner timed a kernel")


@pytest.fixture
def fresh_tuner(monkeypatch):
  """An empty tuning cache and no pending requests, restored afterwards."""
  monkeypatch.setattr(tuning, "_tuner", autotune.Autotuner(timer=_NoTiming()))
  monkeypatch.setattr(tuning, "_pending", {})
  backend._reported.clear()
  return tuning


@pytest.fixture
def mocked_gpu(monkeypatch):
  """The backend switch sees a GPU platform; the candidates that can run on this CPU are XLA
  and the int32 reference (the real GPU kernels cannot execute here)."""
  monkeypatch.setattr(backend, "_platform", lambda: "gpu")
  monkeypatch.setattr(backend, "available_gpu_backends", lambda platform=None: ("xla",
                                                                               "reference"))
  assert backend.describe_backend("auto").name == "auto-tuned"


def _layer_step(config):
  layer = inn.Dense(D_OUT, config=config)
  x = jax.ShapeDtypeStruct((TOKENS, D_IN), jnp.float32)
  params = jax.eval_shape(layer.init, KEY, x)

  def step(params, x, key):
    return jax.grad(lambda p: jnp.sum(layer.apply(p, x, rngs={"quant": key})))(params)
  return step, params, x


def test_the_guard_catches_execution():
  """The guard the next tests trace under: an eager computation that moves data to or from the
  host (concrete operands made from numpy or Python values, or a result read back, as a tuner's
  check does) raises; lowering does not. The tuner's timer is replaced by one that raises too."""
  with jax.transfer_guard("disallow_explicit"):
    jax.jit(lambda x: x @ x.T).lower(jax.ShapeDtypeStruct((8, 8), jnp.float32))
    with pytest.raises(Exception):
      jnp.ones(3) + 1


def test_gpu_auto_under_jit_with_an_empty_cache_executes_nothing_and_uses_xla(
    fresh_tuner, mocked_gpu, caplog):
  with caplog.at_level(logging.INFO, logger="int4jax"), jax.transfer_guard("disallow_explicit"):
    step, params, x = _layer_step(Int4Config())
    jax.jit(step).lower(params, x, KEY)
  missed = tuning.pending()
  assert len(missed) == 3, sorted(missed)  # forward, dX and dW GEMMs: three layouts
  assert all("scaled_gemm" in k for k in missed)
  logged = [r.getMessage() for r in caplog.records]
  assert sum("no tuned choice" in m for m in logged) == 3
  assert any("-> 'xla'" in m and "tuned lookup" in m for m in logged)


def test_gpu_auto_result_equals_xla_when_untuned(fresh_tuner, mocked_gpu):
  x, w = (jax.random.normal(k, s) for k, s in zip(jax.random.split(jax.random.key(1)),
                                                   [(TOKENS, D_IN), (D_IN, D_OUT)]))
  y_auto = jax.jit(lambda x, w: int4_linear(x, w, config=Int4Config(backend="auto")))(x, w)
  y_xla = int4_linear(x, w, config=Int4Config(backend="xla"))
  np.testing.assert_array_equal(y_auto, y_xla)


def test_tune_times_each_choice_once_then_jit_only_looks_up(fresh_tuner, mocked_gpu,
                                                            monkeypatch, caplog):
  times = itertools.cycle([2.0, 1.0])  # per key: xla 2.0, reference 1.0 (in candidate order)
  timed = []

  def timer(thunk):
    thunk()  # runs the candidate, which checks it against XLA bit for bit
    timed.append(thunk)
    return next(times)
  monkeypatch.setattr(tuning.tuner(), "timer", timer)
  step, params, x = _layer_step(Int4Config())
  made = int4jax.tune(step, params, x, jax.random.key(0))
  assert len(made) == 3 and set(made.values()) == {"reference"}
  assert len(timed) == 6 and tuning.pending() == {}
  monkeypatch.setattr(tuning.tuner(), "timer", _NoTiming())
  with caplog.at_level(logging.INFO, logger="int4jax"), jax.transfer_guard("disallow_explicit"):
    jax.jit(step).lower(params, x, KEY)
  assert tuning.pending() == {}
  assert any("-> 'reference'" in r.getMessage() for r in caplog.records)
  assert int4jax.tune(step, params, x, jax.random.key(0)) == {}  # nothing left to tune


def test_tune_refuses_a_candidate_that_disagrees_with_xla(fresh_tuner, mocked_gpu, monkeypatch):
  """A wrong kernel is skipped (logged), never chosen: the check runs inside the timed thunk."""
  wrong = backends.base.Backend(
      name="wrong-for-test", unavailable=lambda p: None, reason=lambda p: "test",
      scaled_gemm=lambda p: lambda a, b, c, r=None, s=None: jnp.zeros(
          (a.shape[1 - c[0][0]], b.shape[1 - c[1][0]]), jnp.float32))
  monkeypatch.setitem(backends.base._REGISTRY, wrong.name, wrong)
  monkeypatch.setattr(backend, "available_gpu_backends", lambda platform=None: (
      "wrong-for-test", "xla"))
  monkeypatch.setattr(tuning.tuner(), "timer", lambda thunk: thunk() is not None and 1.0)
  made = int4jax.tune(lambda x, w: int4_linear(x, w), jnp.ones((TOKENS, D_IN)),
                      jnp.ones((D_IN, D_OUT)))
  assert list(made.values()) == ["xla"]


def test_pallas_tile_sizes_are_a_lookup_and_tune_fills_them(fresh_tuner, monkeypatch):
  """Compiled (not interpreted) Pallas on a large GEMM: the untuned lookup returns the default
  tiles without running anything; inside `tune` the tiles are timed (here by a fake timer that
  prefers one candidate) and the lookup then returns them."""
  fastest = pallas_backend.BLOCK_CANDIDATES[2]
  times = iter([1.0, 1.0, 0.5, 1.0, 1.0])  # in candidate order (no GPU here to run them)
  timed = []
  monkeypatch.setattr(tuning.tuner(), "timer", lambda thunk: timed.append(thunk) or next(times))
  shapes = ((TOKENS, D_IN), (D_IN, D_OUT), ((1,), (0,)))
  with jax.transfer_guard("disallow_explicit"):
    assert pallas_backend.gemm_blocks(*shapes, interpret=False) == pallas_backend.BLOCK_CANDIDATES[0]
  assert len(tuning.pending()) == 1 and not timed
  (choice_key,) = tuning.pending()
  # tune() picks it up from the pending list (its own trace finds nothing new).
  made = int4jax.tune(lambda: None)
  assert made == {choice_key: repr(fastest)} and len(timed) == 5
  assert pallas_backend.gemm_blocks(*shapes, interpret=False) == fastest
  assert pallas_backend.gemm_blocks(*shapes, interpret=True) == pallas_gemm.GemmBlocks()


def test_mosaic_kernel_variant_is_a_lookup_and_tune_fills_it(fresh_tuner, monkeypatch):
  """The same for the Mosaic GEMM's variants (one warpgroup, warp-specialized, ...): the untuned
  lookup is the first variant; `tune` times every variant (a fake timer here) and keeps the
  fastest."""
  from int4jax.backends import mosaic as mosaic_backend
  from int4jax.kernels import mosaic_gemm
  names = list(mosaic_gemm.VARIANTS)
  times = iter([1.0, 2.0, 0.5, 0.7])  # in variant order
  timed = []
  monkeypatch.setattr(tuning.tuner(), "timer", lambda thunk: timed.append(thunk) or next(times))
  m, n, k = 2048, 1024, 1024
  assert mosaic_backend.gemm_blocks(m, n, k) == mosaic_gemm.VARIANTS[names[0]]
  assert len(tuning.pending()) == 1 and not timed
  (choice_key,) = tuning.pending()
  assert int4jax.tune(lambda: None) == {choice_key: names[2]} and len(timed) == len(names)
  assert mosaic_backend.gemm_blocks(m, n, k) == mosaic_gemm.VARIANTS[names[2]]
  assert mosaic_backend.gemm_blocks(64, 64, 64) == mosaic_gemm.VARIANTS[names[0]]  # small


def test_small_gemms_are_never_tuned(fresh_tuner, mocked_gpu):
  jax.jit(lambda x, w: int4_linear(x, w)).lower(jnp.ones((64, 128)), jnp.ones((128, 64)))
  assert tuning.pending() == {}
