"""The GPU kernels compiled and run on a GPU, against the same references as the CPU tests.

Marked `gpu`: skipped (and reported as skipped) without one. experiments/benchmarks/gpu_check.sh
runs these together with the benchmarks in one call on the GPU machine.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import int4jax
from int4jax import Int4Config, backend, int4_linear, tuning
from int4jax.backends.mosaic import is_hopper
from int4jax.kernels import mosaic_gemm, pallas_gemm, pallas_quantize, triton_gemm
from int4jax.quantizers import int4_quant
from tests.helpers import make_xw

pytestmark = pytest.mark.gpu

LAYOUTS = {"NN": ((1,), (0,)), "NT": ((1,), (1,)), "TN": ((0,), (0,))}
SHAPES = [(1024, 1024, 1024), (333, 200, 520), (4096, 64, 256)]


def _operands(m, n, k, contracting, seed=0):
  rng = np.random.default_rng(seed)
  (ca,), (cb,) = contracting
  a = jnp.asarray(rng.integers(-8, 8, (k, m) if ca == 0 else (m, k)), jnp.int8)
  b = jnp.asarray(rng.integers(-8, 8, (n, k) if cb == 1 else (k, n)), jnp.int8)
  row = jnp.asarray(rng.random((m, 1)) + 0.1, jnp.float32)
  col = jnp.asarray(rng.random((1, n)) + 0.1, jnp.float32)
  return a, b, row, col


def _backends():
  names = ["pallas"]
  if triton_gemm.AVAILABLE:
    names.append("triton")
  if is_hopper():
    names.append("mosaic")
  return names


@pytest.mark.parametrize("name", ["pallas", "triton", "mosaic"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_scaled_gemm_on_gpu_matches_reference(name, layout, m, n, k):
  if name not in _backends():
    pytest.skip(f"backend {name} is not available on this GPU")
  a, b, row, col = _operands(m, n, k, LAYOUTS[layout])
  got = backend.scaled_gemm(name)(a, b, LAYOUTS[layout], row, col)
  want = pallas_gemm.scaled_gemm_reference(a, b, row, col, contracting=LAYOUTS[layout])
  np.testing.assert_allclose(got, want, rtol=2 ** -21, atol=2 ** -21 * float(jnp.abs(want).max()))
  raw = backend.int_gemm(name)(a, b, LAYOUTS[layout])
  np.testing.assert_array_equal(raw, pallas_gemm.scaled_gemm_reference(
      a, b, contracting=LAYOUTS[layout]))


@pytest.mark.parametrize("variant", list(mosaic_gemm.VARIANTS))
@pytest.mark.parametrize("m,n,k", [(1024, 1024, 1024), (333, 200, 520)])
def test_every_mosaic_variant_on_gpu_matches_reference(variant, m, n, k):
  """Each kernel variant `int4jax.tune` may pick (mosaic_gemm.VARIANTS), K-major operands."""
  if not is_hopper():
    pytest.skip("the Mosaic kernels need a Hopper GPU")
  a, b_t, row, col = _operands(m, n, k, LAYOUTS["NT"], seed=3)
  got = mosaic_gemm.scaled_gemm_mosaic(a, b_t, row, col, blocks=mosaic_gemm.VARIANTS[variant])
  want = pallas_gemm.scaled_gemm_reference(a, b_t, row, col, contracting=LAYOUTS["NT"])
  np.testing.assert_allclose(got, want, rtol=2 ** -21, atol=2 ** -21 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("both", [False, True])
@pytest.mark.parametrize("axis,gather", [(1, False), (0, False), (0, True)])
def test_fused_quantizer_on_gpu_writes_both_layouts(both, axis, gather):
  x, _ = make_xw(1000, 768, 8, outliers=True)
  kw = dict(axis=axis, qmin=-7, qmax=7, levels=16, both_layouts=both)
  if gather:  # dW's dY: leverage-score rows, weighted
    kw.update(rows=jax.random.choice(jax.random.key(1), 1000, (512,)),
              row_weights=jax.random.uniform(jax.random.key(2), (512,)) + 0.5)
  q, s = pallas_quantize.quantize_pallas(x, **kw)
  q_ref, s_ref = pallas_quantize.quantize_reference(x, **kw)
  for got, want in zip(q if both else [q], q_ref if both else [q_ref]):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(s, s_ref, rtol=4 * 2 ** -23)


@pytest.mark.parametrize("axis,transpose_out,block", [(1, False, 32), (0, True, 32), (0, False, 1)])
def test_fused_quantizer_on_gpu_matches_reference(axis, transpose_out, block):
  x, _ = make_xw(1000, 768, 8, outliers=True)
  kw = dict(axis=axis, qmin=-7, qmax=7, hadamard_block=block, transpose_out=transpose_out)
  q, s = pallas_quantize.quantize_pallas(x, **kw)
  q_ref, s_ref = pallas_quantize.quantize_reference(x, **kw)
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_allclose(s, s_ref, rtol=4 * 2 ** -23)


def test_fused_quantizer_on_gpu_gather_and_stochastic():
  x, _ = make_xw(512, 256, 8)
  rows = jax.random.choice(jax.random.key(1), 512, (200,))
  w = jax.random.uniform(jax.random.key(2), (200,)) + 0.5
  u = int4_quant.uniform_dither(jax.random.key(3), (200, 256))
  kw = dict(axis=0, qmin=-119, qmax=119, rows=rows, row_weights=w, dither=u)
  q, s = pallas_quantize.quantize_pallas(x, **kw)
  q_ref, s_ref = pallas_quantize.quantize_reference(x, **kw)
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_allclose(s, s_ref, rtol=4 * 2 ** -23)


@pytest.mark.parametrize("name", ["pallas", "triton", "mosaic"])
def test_int4_linear_on_gpu_equals_xla(name):
  if name not in _backends():
    pytest.skip(f"backend {name} is not available on this GPU")
  x, w = make_xw(512, 768, 256, seed=1, outliers=True)
  key = jax.random.key(4)

  def run(b):
    f = jax.jit(jax.value_and_grad(
        lambda x, w: jnp.sum(jnp.sin(int4_linear(x, w, key=key, config=Int4Config(backend=b)))),
        (0, 1)))
    return f(x, w)
  for got, want in zip(jax.tree.leaves(run(name)), jax.tree.leaves(run("xla"))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_auto_on_gpu_picks_a_correct_backend():
  x, w = make_xw(2048, 2048, 2048, seed=2)
  int4jax.tune(lambda x, w: int4_linear(x, w, config=Int4Config(backend="auto")), x, w)
  assert any("scaled_gemm" in k for k in tuning.tuner().choices()), "no GEMM choice was tuned"
  y_auto = jax.jit(lambda x, w: int4_linear(x, w, config=Int4Config(backend="auto")))(x, w)
  y_xla = int4_linear(x, w, config=Int4Config(backend="xla"))
  np.testing.assert_allclose(y_auto, y_xla, rtol=1e-5, atol=1e-5 * float(jnp.abs(y_xla).max()))
