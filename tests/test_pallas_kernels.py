"""Pallas-Triton kernels against their pure-jnp references (interpret mode on CPU), and their
lowering for CUDA (on CPU, no GPU needed), which catches a missing Triton lowering rule."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from int4jax.kernels import mosaic_gemm, pallas_gemm, pallas_quantize
from int4jax.quantizers import int4_quant

SMALL_GEMM = pallas_gemm.GemmBlocks(block_m=32, block_n=32, block_k=16)
SMALL_QUANT = pallas_quantize.QuantizeBlocks(block_groups=16, block_red=32)
LAYOUTS = {"NN": ((1,), (0,)), "NT": ((1,), (1,)), "TN": ((0,), (0,)), "TT": ((0,), (1,))}


def _int4(rng, shape):
  return jnp.asarray(rng.integers(-8, 8, shape), jnp.int8)


def _operands(rng, m, n, k, contracting):
  (ca,), (cb,) = contracting
  a = _int4(rng, (k, m) if ca == 0 else (m, k))
  b = _int4(rng, (n, k) if cb == 1 else (k, n))
  return a, b


# Multiples of the blocks and not: (M, N, K) = (64, 32, 48) fills whole tiles; the others pad.
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("m,n,k", [(64, 32, 48), (37, 50, 23), (1, 7, 130)])
def test_int_gemm_is_bit_exact(layout, m, n, k):
  a, b = _operands(np.random.default_rng(m + n + k), m, n, k, LAYOUTS[layout])
  got = pallas_gemm.scaled_gemm_pallas(a, b, contracting=LAYOUTS[layout], blocks=SMALL_GEMM,
                                       interpret=True)
  want = pallas_gemm.scaled_gemm_reference(a, b, contracting=LAYOUTS[layout])
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, want)


def test_int_gemm_extreme_values_accumulate_exactly():
  # -8 * -8 summed over K = 1024 is 65536: no int8/int16 wraparound anywhere.
  a = jnp.full((32, 1024), -8, jnp.int8)
  b = jnp.full((1024, 32), -8, jnp.int8)
  got = pallas_gemm.scaled_gemm_pallas(a, b, blocks=SMALL_GEMM, interpret=True)
  assert int(got.min()) == int(got.max()) == 65536


@pytest.mark.parametrize("layout", ["NN", "TN", "NT"])
@pytest.mark.parametrize("out_dtype,rtol", [(jnp.float32, 2 ** -21), (jnp.bfloat16, 2 ** -8)])
def test_fused_epilogue_matches_reference(layout, out_dtype, rtol):
  """The same float32 epilogue, up to XLA reassociating acc * row * col + bias (a few f32 ulps
  of the largest output; one bf16 ulp where that flips the final rounding)."""
  rng = np.random.default_rng(3)
  m, n, k = 45, 40, 70
  a, b = _operands(rng, m, n, k, LAYOUTS[layout])
  row = jnp.asarray(rng.random((m, 1)) + 0.1, jnp.float32)  # (M, 1), as int4_linear's scales
  col = jnp.asarray(rng.random((1, n)) + 0.1, jnp.float32)
  bias = jnp.asarray(rng.standard_normal(n), jnp.float32)
  kw = dict(contracting=LAYOUTS[layout], out_dtype=out_dtype)
  got = pallas_gemm.scaled_gemm_pallas(a, b, row, col, bias, blocks=SMALL_GEMM, interpret=True,
                                       **kw)
  want = pallas_gemm.scaled_gemm_reference(a, b, row, col, bias, **kw)
  assert got.dtype == out_dtype
  want32 = np.asarray(want, np.float32)
  # relative to each value, and to the largest one where + bias cancels
  np.testing.assert_allclose(np.asarray(got, np.float32), want32, rtol=rtol,
                             atol=rtol * np.abs(want32).max())
  # and the reference is what it claims: the int32 product times the rank-1 scales
  acc = np.asarray(a.astype(jnp.int32)).T if layout == "TN" else np.asarray(a, np.int64)
  bb = np.asarray(b, np.int64).T if layout == "NT" else np.asarray(b, np.int64)
  exact = (acc @ bb) * np.asarray(row) * np.asarray(col) + np.asarray(bias)
  tol = 1e-6 if out_dtype == jnp.float32 else 2 ** -8
  np.testing.assert_allclose(np.asarray(want, np.float32), exact, rtol=tol, atol=tol)


def test_scalar_scales_broadcast():
  rng = np.random.default_rng(4)
  a, b = _operands(rng, 20, 30, 40, LAYOUTS["NN"])
  got = pallas_gemm.scaled_gemm_pallas(a, b, jnp.float32(0.5), jnp.float32(3.0),
                                       blocks=SMALL_GEMM, interpret=True)
  want = pallas_gemm.scaled_gemm_reference(a, b) * 1.5
  np.testing.assert_array_equal(got, want)


def test_gemm_bad_input_is_refused():
  a = jnp.zeros((8, 16), jnp.int8)
  with pytest.raises(TypeError, match="int8"):
    pallas_gemm.scaled_gemm_pallas(a.astype(jnp.int32), a.T, interpret=True)
  with pytest.raises(ValueError, match="contracting dims differ"):
    pallas_gemm.scaled_gemm_pallas(a, a, interpret=True)
  with pytest.raises(ValueError, match="row_scale"):
    pallas_gemm.scaled_gemm_pallas(a, a.T, jnp.ones(5), interpret=True)
  with pytest.raises(ValueError, match="power of two"):
    pallas_gemm.GemmBlocks(block_m=48)


def _activation(rng, shape, outliers=True):
  x = rng.standard_normal(shape)
  if outliers:
    x[:, : 3] *= 30.0
  return jnp.asarray(x, jnp.float32)


QUANT_CASES = {
    # forward X: rows along K, Hadamard 32, INT4
    "fwd_x": dict(shape=(40, 96), axis=1, qmax=7, hadamard_block=32),
    # forward W: columns along K, Hadamard 32, written transposed (K-major for the GEMM)
    "fwd_w": dict(shape=(96, 40), axis=0, qmax=7, hadamard_block=32, transpose_out=True),
    # dX's dY: rows, fused bit split range, stochastic
    "dx_dy": dict(shape=(50, 70), axis=1, qmax=119, stochastic=True),
    # dW's dY: columns over leverage-score-sampled, reweighted rows, stochastic
    "dw_dy": dict(shape=(50, 70), axis=0, qmax=119, stochastic=True, gather=30),
    # gather + Hadamard + transposed output together, odd lengths
    "mixed": dict(shape=(37, 64), axis=1, qmax=7, hadamard_block=16, gather=21,
                  transpose_out=True),
    # two-level scales (the default forward): X rows and W columns, group 16, 16 levels
    "two_level_x": dict(shape=(40, 96), axis=1, qmax=7, hadamard_block=32, levels=16),
    "two_level_w": dict(shape=(96, 40), axis=0, qmax=7, hadamard_block=32, levels=16,
                        transpose_out=True),
    # group 32 spanning two Hadamard blocks of 16, 8 levels, odd row count
    "two_level_g32": dict(shape=(37, 64), axis=1, qmax=7, hadamard_block=16, levels=8,
                          group=32),
    # the multiplier search (variant int4-search: 2 candidates per group), and 3 on W columns
    "search_x": dict(shape=(40, 96), axis=1, qmax=7, hadamard_block=32, levels=16, search=2),
    "search_w": dict(shape=(96, 40), axis=0, qmax=7, hadamard_block=32, levels=16, search=3,
                     transpose_out=True),
    # stochastic rounding keeps the ceil rule (nothing clips), whatever search says
    "search_stochastic": dict(shape=(40, 96), axis=1, qmax=7, hadamard_block=32, levels=16,
                              search=2, stochastic=True),
}


def _quant_args(case, rng):
  c = dict(QUANT_CASES[case])
  shape = c.pop("shape")
  x = _activation(rng, shape)
  n_rows = shape[0]
  kw = dict(axis=c["axis"], qmin=-c["qmax"], qmax=c["qmax"],
            hadamard_block=c.get("hadamard_block", 1), transpose_out=c.get("transpose_out", False),
            levels=c.get("levels", 1), group=c.get("group", 16), search=c.get("search", 1))
  if "gather" in c:
    n_rows = c["gather"]
    kw["rows"] = jnp.asarray(rng.integers(0, shape[0], n_rows), jnp.int32)
    kw["row_weights"] = jnp.asarray(rng.random(n_rows) + 0.5, jnp.float32)
  if c.get("stochastic"):
    kw["dither"] = int4_quant.uniform_dither(jax.random.key(7), (n_rows, shape[1]))
  return x, kw


@pytest.mark.parametrize("case", sorted(QUANT_CASES))
def test_fused_quantizer_matches_reference(case):
  """Integers identical; scales within 4 float32 ulps (the Hadamard sums in another order)."""
  x, kw = _quant_args(case, np.random.default_rng(11))
  q, s = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True, **kw)
  q_ref, s_ref = pallas_quantize.quantize_reference(x, **kw)
  assert q.dtype == jnp.int8 and q.shape == q_ref.shape and s.shape == s_ref.shape
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_allclose(s, s_ref, rtol=4 * 2 ** -23)
  assert int(jnp.max(jnp.abs(q))) <= kw["qmax"] * kw["levels"]
  if kw["levels"] > 1:  # the multipliers are really used
    assert int(jnp.max(jnp.abs(q))) > kw["qmax"]


@pytest.mark.parametrize("case", [
    "two_level_w", "dw_dy",  # W columns with multipliers; gathered, weighted, stochastic rows
    *(pytest.param(c, marks=pytest.mark.slow)
      for c in ("fwd_x", "two_level_x", "mixed", "two_level_g32"))])
def test_fused_quantizer_writes_both_layouts_in_one_pass(case):
  """both_layouts: the operand and its transpose (the copy a backward GEMM reads K-major) from one
  kernel, each equal to the reference's integers in that layout."""
  x, kw = _quant_args(case, np.random.default_rng(17))
  kw["transpose_out"] = False
  (q, q_t), s = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True,
                                                both_layouts=True, **kw)
  (q_ref, q_t_ref), s_ref = pallas_quantize.quantize_reference(x, both_layouts=True, **kw)
  q_one, _ = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True, **kw)
  n_rows = kw["rows"].shape[0] if "rows" in kw else x.shape[0]
  assert q.shape == (n_rows, x.shape[1]) and q_t.shape == q.shape[::-1]
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_array_equal(q_t, q_t_ref)
  np.testing.assert_array_equal(q, q_one)  # the same integers as the one-layout kernel
  np.testing.assert_allclose(s, s_ref, rtol=4 * 2 ** -23)
  with pytest.raises(ValueError, match="leave transpose_out False"):
    pallas_quantize.quantize_pallas(x, interpret=True, both_layouts=True,
                                    **dict(kw, transpose_out=True))


@pytest.mark.parametrize("case", sorted(c for c in QUANT_CASES if "stochastic" in QUANT_CASES[c]))
def test_the_kernel_hashes_the_same_dither_as_the_jnp_quantizer(case):
  """With `seed` the kernel computes the dither from the element's flat index (nothing read from
  memory): the same integers as the dither array and as the reference with the key, including
  gathered rows and column groups."""
  x, kw = _quant_args(case, np.random.default_rng(15))
  key = jax.random.key(7)  # _quant_args's dither is uniform_dither(key, gathered shape)
  dither = kw.pop("dither")
  q_seed, s_seed = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True,
                                                   seed=int4_quant.dither_seed(key), **kw)
  q_arr, _ = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True,
                                             dither=dither, **kw)
  q_ref, _ = pallas_quantize.quantize_reference(x, key=key, **kw)
  np.testing.assert_array_equal(q_seed, q_arr)
  np.testing.assert_array_equal(q_seed, q_ref)
  q_near, _ = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True, **kw)
  assert not np.array_equal(q_seed, q_near)  # the dither is really applied


@pytest.mark.parametrize("case", ["search_x", "search_w", "search_stochastic"])
def test_the_kernel_searches_multipliers_only_when_rounding_to_nearest(case):
  x, kw = _quant_args(case, np.random.default_rng(16))
  q, _ = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True, **kw)
  q_ceil, _ = pallas_quantize.quantize_pallas(x, blocks=SMALL_QUANT, interpret=True,
                                              **dict(kw, search=1))
  assert np.array_equal(q, q_ceil) == ("dither" in kw)


def test_quantizer_reference_agrees_with_the_library_quantizers():
  """The kernel's reference is the op's own math: block Hadamard + abs-max per row + RTN (one
  level: the plain abs-max quantizer)."""
  from int4jax.quantizers import hadamard
  x = _activation(np.random.default_rng(12), (24, 64))
  q_ref, s_ref = pallas_quantize.quantize_reference(x, axis=1, qmin=-7, qmax=7, hadamard_block=32)
  q_lib, s_lib = int4_quant.quantize_absmax(hadamard.block_hadamard(x, 32, 1), -7, 7, 1)
  np.testing.assert_array_equal(q_ref, q_lib)
  np.testing.assert_array_equal(s_ref, s_lib.reshape(-1))


def test_quantizer_round_half_even_ties():
  # values landing exactly on .5 steps: scale = 7 / 7 = 1, so v = x
  x = jnp.asarray([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 7.0, 3.5] + [0.0] * 8] * 16, jnp.float32)
  q, s = pallas_quantize.quantize_pallas(x, axis=1, qmin=-7, qmax=7, blocks=SMALL_QUANT,
                                         interpret=True)
  np.testing.assert_array_equal(q[0, :8], [0, 2, 2, 0, -2, -2, 7, 4])
  np.testing.assert_array_equal(s, 1.0)


def test_quantizer_nonfinite_and_zero_groups():
  x = np.random.default_rng(13).standard_normal((16, 32)).astype(np.float32)
  x[1, 5] = np.nan
  x[2, 0] = np.inf
  x[3] = 0.0
  q, s = pallas_quantize.quantize_pallas(jnp.asarray(x), axis=1, qmin=-7, qmax=7,
                                         blocks=SMALL_QUANT, interpret=True)
  assert np.isnan(s[1]) and np.isnan(s[2]) and s[3] == 1.0 and np.isfinite(s[4:]).all()
  assert not q[1].any() and not q[2].any() and not q[3].any()
  q_ref, s_ref = pallas_quantize.quantize_reference(jnp.asarray(x), axis=1, qmin=-7, qmax=7)
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_array_equal(s, s_ref)


def test_stochastic_rounding_in_the_kernel_is_unbiased():
  x = jnp.full((16, 64), 0.3, jnp.float32).at[:, 0].set(7.0)  # scale 1: v = 0.3
  draws = []
  for seed in range(64):
    u = int4_quant.uniform_dither(jax.random.key(seed), x.shape)
    q, _ = pallas_quantize.quantize_pallas(x, axis=1, qmin=-7, qmax=7, dither=u,
                                           blocks=SMALL_QUANT, interpret=True)
    draws.append(np.asarray(q[:, 1:], np.float64))
  mean = np.mean(draws)
  # 64 * 16 * 63 Bernoulli(0.3) draws: std of the mean ~ 0.0018
  assert abs(mean - 0.3) < 0.01, mean


def test_quantizer_bad_input_is_refused():
  x = jnp.ones((16, 48), jnp.float32)
  with pytest.raises(ValueError, match="hadamard_block=32"):
    pallas_quantize.quantize_pallas(x, axis=1, qmin=-7, qmax=7, hadamard_block=32, interpret=True)
  with pytest.raises(TypeError, match="float"):
    pallas_quantize.quantize_pallas(x.astype(jnp.int8), axis=1, qmin=-7, qmax=7, interpret=True)
  with pytest.raises(ValueError, match="dither"):
    pallas_quantize.quantize_pallas(x, axis=1, qmin=-7, qmax=7, dither=jnp.ones((2, 2)),
                                    interpret=True)
  seed = int4_quant.dither_seed(jax.random.key(0))
  with pytest.raises(ValueError, match="not both"):
    pallas_quantize.quantize_pallas(x, axis=1, qmin=-7, qmax=7, dither=jnp.ones((16, 48)),
                                    seed=seed, interpret=True)
  with pytest.raises(TypeError, match="uint32"):
    pallas_quantize.quantize_pallas(x, axis=1, qmin=-7, qmax=7, seed=seed.astype(jnp.int32),
                                    interpret=True)
  with pytest.raises(ValueError, match="search=1"):
    pallas_quantize.quantize_pallas(jnp.ones((16, 4096)), axis=1, qmin=-7, qmax=7, group=4096,
                                    levels=16, search=2, interpret=True)


def _lowered_for_cuda(fn, *avals):
  return jax.jit(fn).trace(*avals).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gemm_lowers_for_cuda_without_a_gpu(layout):
  (ca,), (cb,) = LAYOUTS[layout]
  s = jax.ShapeDtypeStruct
  a = s((512, 256) if ca == 0 else (256, 512), jnp.int8)
  b = s((384, 512) if cb == 1 else (512, 384), jnp.int8)
  text = _lowered_for_cuda(
      lambda a, b, r, c: pallas_gemm.scaled_gemm_pallas(a, b, r, c, contracting=LAYOUTS[layout],
                                                        out_dtype=jnp.bfloat16),
      a, b, s((256, 1), jnp.float32), s((1, 384), jnp.float32))
  assert "__gpu$xla.gpu.triton" in text


@pytest.mark.parametrize("case", sorted(QUANT_CASES) + ["dw_dy_hashed", "two_level_x_both"])
def test_quantizer_lowers_for_cuda_without_a_gpu(case):
  hashed, both = case.endswith("_hashed"), case.endswith("_both")
  x, kw = _quant_args(case.removesuffix("_hashed").removesuffix("_both"),
                      np.random.default_rng(14))
  kw["both_layouts"] = both
  if hashed:  # the dither computed in the kernel (uint32 hash) instead of read
    kw["seed"] = int4_quant.dither_seed(jax.random.key(0))
    kw.pop("dither")
  arrays = {k: kw.pop(k) for k in ("rows", "row_weights", "dither", "seed") if k in kw}
  text = _lowered_for_cuda(lambda x, arrays: pallas_quantize.quantize_pallas(x, **arrays, **kw),
                           x.astype(jnp.bfloat16), arrays)
  assert "__gpu$xla.gpu.triton" in text


# Every variant lowers at one shape in the default run (the launch test below); here the
# warp-specialized one at every shape and dtype is in the slow run.
@pytest.mark.parametrize("variant", ["1wg", pytest.param("2wg", marks=pytest.mark.slow)])
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("m,n,k", [(512, 256, 384), (200, 72, 100)])
def test_mosaic_gemm_lowers_for_cuda_without_a_gpu(m, n, k, out_dtype, variant):
  """The Mosaic GPU kernels cannot run on CPU (not even interpreted); lowering them checks the
  wgmma operand/accumulator types, layouts and TMA shapes (a float32 accumulator, say, fails
  here with "WGMMA with element type i8 only supports accumulators of type s32")."""
  from int4jax.kernels import mosaic_gemm
  s = jax.ShapeDtypeStruct
  blocks = mosaic_gemm.VARIANTS[variant]
  text = _lowered_for_cuda(
      lambda a, b, r, c: mosaic_gemm.scaled_gemm_mosaic(a, b, r, c, out_dtype=out_dtype,
                                                        blocks=blocks),
      s((m, k), jnp.int8), s((n, k), jnp.int8), s((m, 1), jnp.float32), s((1, n), jnp.float32))
  assert "mosaic_gpu" in text


def _mosaic_module_text(fn, *avals) -> str:
  """The Mosaic GPU module inside the lowered custom call, as MLIR text."""
  from jax._src.interpreters import mlir
  from jax._src.lib.mlir import ir
  module = jax.jit(fn).trace(*avals).lower(lowering_platforms=("cuda",)).compiler_ir("stablehlo")
  blobs = [op.attributes["mhlo.backend_config"]["module"]
           for func in module.body.operations for block in func.regions[0].blocks
           for op in block.operations if op.name == "stablehlo.custom_call"]
  assert len(blobs) == 1, f"expected one Mosaic GPU call, found {len(blobs)}"
  with mlir.make_ir_context() as ctx:
    ctx.allow_unregistered_dialects = True
    return str(ir.Module.parse(bytes(ir.StringAttr(blobs[0]).value_bytes)))


def _mosaic_kernel(blocks, m, n, k):
  """(module text, (threads per CTA, dynamic shared memory bytes)) of the Mosaic GEMM with
  `blocks` lowered for CUDA at (M, N, K), read from the module's gpu.launch."""
  from int4jax.kernels import mosaic_gemm
  s = jax.ShapeDtypeStruct
  text = _mosaic_module_text(
      lambda a, b: mosaic_gemm.scaled_gemm_mosaic(a, b, blocks=blocks),
      s((m, k), jnp.int8), s((n, k), jnp.int8))
  launch = re.search(r'gpu\.launch"\(((?:%\w+(?:, )?)+)\)', text).group(1).split(", ")
  consts = dict(re.findall(r"(%\w+) = \"stable_mosaic_gpu\.arith\.constant\"\(\) \{value = (\d+) :",
                           text))
  # operands: the async token, grid (x, y, z), block (x, y, z), dynamic shared memory
  block, smem = [int(consts[v]) for v in launch[4:7]], int(consts[launch[7]])
  return text, (block[0] * block[1] * block[2], smem)


@pytest.mark.parametrize("in_flight,k", [(1, 384), (1, 128), (0, 384), (2, 640)])
def test_mosaic_gemm_keeps_wgmmas_in_flight_across_pipeline_steps(in_flight, k):
  """Each K step waits only until `wgmma_in_flight` wgmma groups are left running (the stage they
  read is released that many steps late), and the epilogue waits for all of them."""
  from int4jax.kernels import mosaic_gemm
  for warpgroups in (1, 2):
    blocks = mosaic_gemm.MosaicBlocks(wgmma_in_flight=in_flight, max_concurrent_steps=3,
                                      consumer_warpgroups=warpgroups)
    # Each stage is refilled only `in_flight` steps after the step that read it.
    assert [spec.delay_release for spec in mosaic_gemm._in_specs(blocks)] == [in_flight] * 2
    text, _ = _mosaic_kernel(blocks, 256, 128, k)
    waits = re.findall(r"nvvm\.wgmma\.wait\.group\.sync\.aligned\"\(\) \{group = (\d+)", text)
    assert "wgmma.mma_async" in text and "s8" in text
    assert sorted(set(map(int, waits))) == sorted({in_flight, 0}), waits
    assert waits[-1] == "0", "the accumulator is read before its last wgmma finished"


@pytest.mark.parametrize("name", list(mosaic_gemm.VARIANTS))
def test_mosaic_gemm_variants_launch_their_warpgroups_within_hopper_shared_memory(name):
  """Each tuning variant lowers with the threads it claims (a producer warpgroup, register
  reallocation and two consumers when warp-specialized) and the shared memory its budget says,
  under Hopper's 227 KiB per CTA (Mosaic would refuse more only when compiling on the GPU)."""
  from int4jax.kernels import mosaic_gemm
  blocks = mosaic_gemm.VARIANTS[name]
  text, (threads, smem) = _mosaic_kernel(blocks, 512, 384, 640)
  specialized = blocks.consumer_warpgroups == 2
  assert threads == 128 * (blocks.consumer_warpgroups + specialized)
  assert ("nvvm.setmaxregister" in text) == specialized
  assert mosaic_gemm.shared_memory_bytes(blocks) <= smem <= mosaic_gemm.HOPPER_SHARED_MEMORY
  assert smem - mosaic_gemm.shared_memory_bytes(blocks) < 2048  # barriers and alignment only


def test_mosaic_gemm_bad_input_is_refused():
  from int4jax.kernels import mosaic_gemm
  a = jnp.zeros((64, 128), jnp.int8)
  with pytest.raises(ValueError, match=r"b_t \(N, K\)"):
    mosaic_gemm.scaled_gemm_mosaic(a, a.T)
  with pytest.raises(ValueError, match="float"):
    mosaic_gemm.scaled_gemm_mosaic(a, a, out_dtype=jnp.int32)
  with pytest.raises(ValueError, match="tile_m % 64"):
    mosaic_gemm.MosaicBlocks(tile_m=32)
  with pytest.raises(ValueError, match="wgmma_in_flight < max_concurrent_steps"):
    mosaic_gemm.MosaicBlocks(max_concurrent_steps=2, wgmma_in_flight=2)
  with pytest.raises(ValueError, match="consumer_warpgroups must be 1 or 2"):
    mosaic_gemm.MosaicBlocks(consumer_warpgroups=3)
  with pytest.raises(ValueError, match="shared memory"):
    mosaic_gemm.scaled_gemm_mosaic(a, a, blocks=mosaic_gemm.MosaicBlocks(
        consumer_warpgroups=2, max_concurrent_steps=4))


@pytest.mark.parametrize("arch,instruction", [
    (90, "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8"),
    (80, "mma.sync.aligned.m16n8k32.row.col")])
def test_jax_triton_kernel_compiles_to_pipelined_int8_tensor_core_mma(arch, instruction):
  """The jax-triton kernel compiled by Triton without a GPU, as a real launch compiles it (16-byte
  aligned buffers, B K-major as scaled_gemm_triton passes it): s8 x s8 -> s32 on tensor cores
  (wgmma on Hopper, mma.sync on Ampere), and every operand tile loaded with cp.async (pipelined):
  the only synchronous global loads left are the epilogue's row and column scales."""
  from int4jax.kernels import triton_gemm
  if not triton_gemm.HAS_TRITON:
    pytest.skip(f"the triton package is not installed: {triton_gemm.IMPORT_ERROR}")
  ptx = triton_gemm.compile_for_cuda(arch)["ptx"]
  assert instruction in ptx and ".s8.s8" in ptx
  assert "cp.async.cg" in ptx and "cp.async.commit_group" in ptx
  assert ptx.count("ld.global") == 2, ptx.count("ld.global")


def test_jax_triton_needs_k_major_b_and_alignment_to_pipeline_on_hopper():
  """Why scaled_gemm_triton transposes B to (N, K) and why the compile check passes alignment:
  on sm_90 a (K, N) B tile is loaded synchronously (more ld.global), and without alignment
  nothing is pipelined at all."""
  from int4jax.kernels import triton_gemm
  if not triton_gemm.HAS_TRITON:
    pytest.skip(f"the triton package is not installed: {triton_gemm.IMPORT_ERROR}")
  k_n = triton_gemm.compile_for_cuda(90, transposed_b=False)["ptx"]
  assert k_n.count("ld.global") > 2
  unaligned = triton_gemm.compile_for_cuda(90, aligned=False)["ptx"]
  assert "cp.async" not in unaligned

@pytest.mark.parametrize("block,group,levels,width", [(32, 16, 16, 32), (128, 16, 16, 128),
                                                      (8, 16, 1, 16), (16, 32, 8, 32)])
def test_the_kernel_transforms_one_hadamard_block_per_chunk(block, group, levels, width):
  """The in-kernel Hadamard is a (width, width) matrix: the Hadamard block itself, not a 128-wide
  block diagonal that multiplies zeros (at least 16 wide, Triton's smallest dot, and one group)."""
  x = jax.ShapeDtypeStruct((64, 256), jnp.bfloat16)
  text = _lowered_for_cuda(lambda x: pallas_quantize.quantize_pallas(
      x, axis=1, qmin=-7, qmax=7, hadamard_block=block, group=group, levels=levels), x)
  matrices = set(re.findall(r"tensor<(\d+)x\1xf32>", text))
  assert matrices == {str(width)}, matrices
