"""The backend switch: one place decides, every choice is reported, kernels agree with XLA."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax import Int4Config, backend, describe_backend, int4_linear, resolve_backend
from int4jax.kernels import autotune, triton_gemm
from tests.helpers import make_xw


def test_auto_on_cpu_is_xla_and_the_choice_is_logged_once(caplog):
  backend._reported.clear()
  with caplog.at_level(logging.INFO, logger="int4jax"):
    assert resolve_backend("auto") == "xla"
    resolve_backend("auto")
  lines = [r.getMessage() for r in caplog.records if "backend 'auto'" in r.getMessage()]
  assert len(lines) == 1 and "'xla'" in lines[0] and "cpu" in lines[0]


def test_describe_backend_reports_what_runs_and_why():
  pallas = describe_backend("pallas", platform="cpu")
  assert pallas.name == "pallas" and pallas.interpret and "interpret" in pallas.reason
  assert not describe_backend("pallas", platform="gpu").interpret
  gpu_auto = describe_backend("auto", platform="gpu")
  assert gpu_auto.name == "auto-tuned" and "xla" in gpu_auto.reason
  assert describe_backend("xla").name == "xla"


def test_pallas_on_cpu_is_logged_as_interpreted(caplog):
  backend._reported.clear()
  with caplog.at_level(logging.INFO, logger="int4jax"):
    backend.scaled_gemm("pallas")
  assert any("interpret" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(triton_gemm.AVAILABLE, reason="jax-triton is importable here")
def test_triton_without_jax_triton_says_what_to_install():
  with pytest.raises(RuntimeError, match=r"jax-triton.*int4jax\[triton\]"):
    describe_backend("triton")
  x, w = make_xw(8, 32, 8)
  with pytest.raises(RuntimeError, match="jax-triton"):
    int4_linear(x, w, config=Int4Config(backend="triton"))


def test_unknown_backend_is_rejected():
  with pytest.raises(ValueError, match="backend"):
    Int4Config(backend="cuda")
  with pytest.raises(ValueError, match="unknown int4jax backend"):
    resolve_backend("cuda")
  with pytest.raises(RuntimeError, match="not on tpu"):
    describe_backend("pallas", platform="tpu")


def test_mosaic_needs_a_hopper_gpu():
  with pytest.raises(RuntimeError, match="Hopper"):
    describe_backend("mosaic", platform="cpu")
  assert describe_backend("mosaic", platform="gpu").name == "mosaic"
  x, w = make_xw(8, 32, 8)
  with pytest.raises(RuntimeError, match="Hopper"):
    int4_linear(x, w, config=Int4Config(backend="mosaic"))


def test_xla_reference_and_auto_agree_bit_for_bit():
  x, w = make_xw(33, 100, 17)
  outs = [int4_linear(x, w, config=Int4Config(backend=b)) for b in ("xla", "reference", "auto")]
  for out in outs[1:]:
    np.testing.assert_array_equal(out, outs[0])


CONFIGS = {
    "default": Int4Config(),
    "paper": Int4Config.paper(),  # LSQ per-tensor scales, [-8, 7], Bernoulli LSS
    "systematic_lss": Int4Config(lss="systematic", lss_budget=0.5),
    "unfused_bitsplit": Int4Config(fuse_bitsplit=False),
    "int4_grads_tensor_scales": Int4Config(grad_mode="int4", scale_mode="tensor"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_int4_linear_pallas_equals_xla(name):
  """Same key -> same integers in all three GEMMs; outputs and gradients agree to float32
  rounding of the fused epilogue (a few ulps of each tensor's largest value)."""
  config = CONFIGS[name]
  x, w = make_xw(40, 96, 24, seed=3, outliers=True)
  bias = jnp.linspace(-1.0, 1.0, 24)
  scales = (jnp.float32(0.5), jnp.float32(0.05)) if config.scale_mode == "lsq" else None
  key = jax.random.key(9)

  def loss(backend_name, x, w, bias, scales):
    y = int4_linear(x, w, bias, key=key, scales=scales,
                    config=config.replace(backend=backend_name))
    return jnp.sum(y * jnp.cos(y)), y

  results = {}
  for b in ("xla", "pallas"):
    grad_fn = jax.grad(loss, argnums=(1, 2, 3, 4), has_aux=True)
    grads, y = grad_fn(b, x, w, bias, scales)
    results[b] = (y, grads)
  flat_xla = jax.tree.leaves(results["xla"])
  flat_pallas = jax.tree.leaves(results["pallas"])
  assert len(flat_xla) == len(flat_pallas)
  for a, b in zip(flat_pallas, flat_xla):
    a, b = np.asarray(a), np.asarray(b)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_pallas_backend_inside_flax_layer_with_batch_dims():
  """The kernel under vmap (DenseGeneral's batch dims) and jit, through int4jax.nn."""
  from int4jax import nn as inn
  x = jax.random.normal(jax.random.key(0), (2, 3, 40))
  outs = {}
  for b in ("xla", "pallas"):
    layer = inn.Dense(16, config=Int4Config(backend=b))
    params = layer.init(jax.random.key(1), x)
    outs[b] = jax.jit(layer.apply)(params, x)
  np.testing.assert_allclose(outs["pallas"], outs["xla"], rtol=1e-5, atol=1e-6)


class _FakeTimer:
  def __init__(self, times):
    self.times, self.calls = times, []

  def __call__(self, thunk):
    name = thunk()
    self.calls.append(name)
    if isinstance(self.times[name], Exception):
      raise self.times[name]
    return self.times[name]


def test_autotuner_picks_the_fastest_once_and_persists(tmp_path):
  path = str(tmp_path / "tune.json")
  timer = _FakeTimer({"xla": 2.0, "pallas": 1.0, "triton": RuntimeError("no GPU")})
  tuner = autotune.Autotuner(path, timer=timer)
  cands = {n: (lambda n=n: n) for n in ("xla", "pallas", "triton")}
  assert tuner.pick("k1", cands) == "pallas"
  assert tuner.pick("k1", cands) == "pallas"
  assert timer.calls == ["xla", "pallas", "triton"]  # timed once, failure skipped
  assert json.load(open(path)) == {"k1": "pallas"}
  reloaded = autotune.Autotuner(path, timer=_FakeTimer({}))
  assert reloaded.pick("k1", cands) == "pallas"  # no timing: from the file
  with pytest.raises(RuntimeError, match="no GPU"):
    autotune.Autotuner(timer=timer).pick("k2", {"triton": cands["triton"]})


def test_bucket_rounds_up_to_powers_of_two():
  assert autotune.bucket(8192, 4096, 4096) == (8192, 4096, 4096)
  assert autotune.bucket(5000, 1, 3) == (8192, 1, 4)


def test_median_seconds_times_real_work():
  t = autotune.median_seconds(lambda: jnp.ones((64, 64)) @ jnp.ones((64, 64)), iters=3)
  assert 0.0 < t < 1.0


def test_pallas_backend_runs_all_gemms_and_quantizers_as_pallas_kernels():
  x, w = make_xw(16, 64, 8)
  f = jax.grad(lambda x, w: jnp.sum(int4_linear(x, w, key=jax.random.key(0),
                                                config=Int4Config(backend="pallas"))), (0, 1))
  text = str(jax.make_jaxpr(f)(x, w))
  assert text.count("name=int4jax_scaled_gemm") == 3  # forward, dX, dW
  assert text.count("name=int4jax_quantize") == 4  # X, W, and dY twice (rows for dX, cols for dW)
  assert text.count("pallas_call[") == 7


def test_a_registered_backend_is_accepted_by_the_config_and_runs_every_gemm(monkeypatch):
  """A new backend is one `Backend` registered in int4jax.backends: the config accepts its
  name, describe_backend reports it, and the op runs its GEMMs (here XLA's, counted)."""
  from int4jax import backends
  from int4jax.backends.xla import with_scales
  from int4jax.kernels import int_gemm
  calls = []

  def counted(a, b, contracting):
    calls.append(contracting)
    return int_gemm.int_gemm_xla(a, b, contracting)
  mine = backends.Backend(name="counted-xla", unavailable=lambda p: None,
                          reason=lambda p: "counts its GEMMs",
                          scaled_gemm=lambda p: with_scales(counted))
  with pytest.raises(ValueError, match="backend"):
    Int4Config(backend="counted-xla")
  monkeypatch.setitem(backends.base._REGISTRY, mine.name, mine)
  assert "counted-xla" in backends.names()
  assert describe_backend("counted-xla").reason == "counts its GEMMs"
  config = Int4Config(backend="counted-xla")
  x, w = make_xw(16, 64, 8)
  got = jax.grad(lambda w: int4_linear(x, w, key=jax.random.key(0), config=config).sum())(w)
  want = jax.grad(lambda w: int4_linear(x, w, key=jax.random.key(0)).sum())(w)
  np.testing.assert_array_equal(got, want)
  assert len(calls) == 3  # forward, dX, dW
  with pytest.raises(ValueError, match="already registered"):
    backends.register(mine)
