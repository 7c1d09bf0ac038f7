"""K-major operands (int4jax/linear.py, "Layouts"): a backend whose GEMMs read both operands
contracting over dim 1 gets them that way, written so by the quantizer (no transpose or pad
between a quantizer and a GEMM), with the same bits as the layouts the other backends get."""

import chex
import jax
import jax.numpy as jnp
import pytest

from int4jax import Int4Config, backend, int4_linear
from tests.helpers import make_xw

KEY = jax.random.key(5)
CONFIGS = {
    "default": Int4Config(),
    "systematic-2-blocks": Int4Config(lss="systematic", lss_budget=0.5, lss_blocks=2),
    "bernoulli": Int4Config(lss="bernoulli", lss_budget=0.5),
    "unfused-bitsplit": Int4Config(fuse_bitsplit=False),
    "float-grads": Int4Config(grad_mode="float", lss="systematic", lss_budget=0.5),
    "int4-grads-per-tensor": Int4Config(grad_mode="int4", scale_mode="tensor"),
    "forward-stochastic-one-level": Int4Config(forward_rounding="stochastic", scale_levels=1),
    "lsq": Int4Config(scale_mode="lsq", scale_levels=1),
}
LSQ_SCALES = (jnp.float32(0.5), jnp.float32(0.02))  # learned step sizes of X and W
FAST = ("default", "systematic-2-blocks")  # the others: the slow run (.ci/run)


def _cases():
  return [pytest.param(name, marks=() if name in FAST else pytest.mark.slow)
          for name in sorted(CONFIGS)]


def _value_and_grads(config, x, w):
  scales = LSQ_SCALES if config.scale_mode == "lsq" else None
  loss = lambda x, w, scales: jnp.sum(jnp.sin(int4_linear(x, w, key=KEY, config=config,
                                                          scales=scales)))
  return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(x, w, scales)


@pytest.mark.parametrize("name", _cases())
def test_the_fused_quantizer_kernel_feeds_k_major_with_the_bits_of_the_xla_path(name):
  """"pallas" quantizes every operand with the kernel straight into K-major layouts (both
  layouts of X and W from one pass; dW's dY as (N, M)); "xla" on the CPU keeps x's layouts. The
  loss and both gradients agree bit for bit (odd sizes: the kernels pad)."""
  assert backend.k_major("pallas") and not backend.k_major("xla")
  x, w = make_xw(50, 96, 37, seed=3, outliers=True)
  config = CONFIGS[name]
  got = _value_and_grads(config.replace(backend="pallas"), x, w)
  want = _value_and_grads(config.replace(backend="xla"), x, w)
  chex.assert_trees_all_equal(got, want)


@pytest.fixture
def gpu_platform(monkeypatch):
  """The backend switch sees a GPU, and no GEMM gets a sharding wrapper (these tests read the
  operands that reach the kernels)."""
  monkeypatch.setattr(backend, "_platform", lambda: "gpu")
  monkeypatch.setattr(backend, "_with_sharding_rule", lambda name, gemm, scaled: gemm)


@pytest.mark.parametrize("name", ["default",
                                  pytest.param("systematic-2-blocks", marks=pytest.mark.slow)])
def test_on_a_gpu_xla_is_fed_k_major_with_the_same_bits(name, monkeypatch):
  """XLA's cuBLAS int8 GEMM reads K-major operands too: on a GPU platform the jnp quantizer
  writes them (XLA runs the dots here, on the CPU), and the results do not change."""
  x, w = make_xw(48, 64, 40, seed=4)
  config = CONFIGS[name].replace(backend="xla")
  want = _value_and_grads(config, x, w)
  monkeypatch.setattr(backend, "_platform", lambda: "gpu")
  assert backend.k_major("xla") and backend.k_major("auto")
  chex.assert_trees_all_equal(_value_and_grads(config, x, w), want)


def _int8_transposes_and_pads(config, m, k, n):
  x = jax.ShapeDtypeStruct((m, k), jnp.float32)
  w = jax.ShapeDtypeStruct((k, n), jnp.float32)
  loss = lambda x, w: jnp.sum(jnp.sin(int4_linear(x, w, key=KEY, config=config)))
  text = jax.jit(jax.value_and_grad(loss, (0, 1))).trace(x, w).lower(
      lowering_platforms=("cuda",)).as_text()
  return [line.strip() for line in text.splitlines()
          if ("stablehlo.transpose" in line or "stablehlo.pad" in line) and "xi8>" in line], text


@pytest.mark.parametrize("name,kernel", [("mosaic", "mosaic_gpu"), ("pallas", "triton")])
def test_gpu_training_step_hands_the_gemm_kernels_k_major_operands(name, kernel, gpu_platform):
  """The value-and-grad of a layer lowered for CUDA as a Hopper run gets it: the quantizer kernel
  writes Xq, Xq^T, Wq^T, Wq and dY's two quantizations where the GEMM kernels read them, so no
  int8 array is transposed or padded on the way (tile-multiple sizes; others are padded)."""
  moved, text = _int8_transposes_and_pads(Int4Config(backend=name, lss="systematic"), 256, 256,
                                          128)
  assert kernel in text
  assert not moved, moved
  # The check sees them when they are there: a per-tensor forward scale quantizes X and W with
  # jnp, which writes their transposed copies as XLA transposes (dY keeps per-row scales).
  moved, _ = _int8_transposes_and_pads(Int4Config(backend=name, scale_mode="tensor"), 256, 256,
                                       128)
  assert len(moved) == 2, moved  # Xq^T and Wq^T


def test_describe_backend_names_the_fused_quantizer_for_the_gpu_gemm_kernels():
  for name in ("mosaic", "triton"):
    reason = backend.backends.get(name).reason("gpu")
    assert "fused quantizer" in reason and "K-major" in reason


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (XLA_FLAGS)")
@pytest.mark.parametrize("config", [
    # the packed weight gathered, then transposed for the forward
    pytest.param(Int4Config(fsdp_axis="data"), marks=pytest.mark.slow),
    # the fused kernel (interpreted) quantizing each shard, the Pallas GEMM partitioned (the
    # partitioning rule's own test, in the default run, is tests/test_kernel_partitioning.py)
    pytest.param(Int4Config(fsdp_axis="data", backend="pallas"), marks=pytest.mark.slow),
    pytest.param(Int4Config(lss="systematic", lss_budget=0.5, lss_blocks=8),  # per-device columns
                 marks=pytest.mark.slow),
], ids=["fsdp", "fsdp-pallas", "per-device-sampling"])
def test_k_major_layouts_are_the_same_bits_on_a_data_parallel_mesh(config, monkeypatch):
  """Tokens split over 8 devices (and the weight too, under FSDP), GSPMD partitioning the
  K-major program: the same loss and gradients as the CPU's layouts, bit for bit."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x, w = make_xw(64, 96, 64, seed=6, outliers=True)
  cot = jax.random.normal(jax.random.key(7), (64, 64))
  shard = lambda *spec: NamedSharding(mesh, P(*spec))

  def run():
    loss = lambda w, x: jnp.sum(int4_linear(x, w, key=KEY, config=config) * cot)
    step = jax.jit(jax.value_and_grad(loss, (0, 1)),
                   in_shardings=(shard(None, "data") if config.fsdp_axis else shard(),
                                 shard("data")))
    with jax.set_mesh(mesh):
      return step(w, x)
  if config.backend == "pallas":  # K-major on the CPU too: against XLA's layouts
    want, config = run(), config.replace(backend="xla")
    chex.assert_trees_all_equal(want, run())
    return
  want = run()
  monkeypatch.setattr(backend, "_platform", lambda: "gpu")
  assert backend.k_major(config.backend)
  chex.assert_trees_all_equal(run(), want)
