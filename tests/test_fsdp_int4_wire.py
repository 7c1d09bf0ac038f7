"""FSDP with INT4 weights on the wire (Int4Config.fsdp_axis, int4jax/fsdp.py), on 8 CPU devices:
the weight is quantized shard by shard where it lives and gathered packed. That equals gathering
the float weight and then quantizing it, bit for bit; the compiled program gathers bytes, not
floats, and at most 1/3 of what a bf16 weight gather moves."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from int4jax import Int4Config, int4_linear

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (XLA_FLAGS)")

KEY = jax.random.key(3)
BYTES = {"f32": 4, "bf16": 2, "s8": 1, "u8": 1, "s32": 4}


def _mesh(axis_type=jax.sharding.AxisType.Auto):
  """GSPMD's mesh (Auto: sharding constraints) or sharding in types (Explicit: reshards)."""
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


def _step(config, mesh, kernel_spec=P(None, "data")):
  """jit of (loss, dL/dw, dL/dx) for L = sum(y * cot): x split by tokens, w as FSDP keeps it."""
  def loss(w, x, cot, key):
    return jnp.sum(int4_linear(x, w, key=key, config=config) * cot)
  shard = lambda *spec: NamedSharding(mesh, P(*spec))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                 in_shardings=(NamedSharding(mesh, kernel_spec), shard("data"), shard("data"),
                               None))


def _operands(k=96, n=64, m=32):
  ks = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(ks[0], (m, k)).at[:, 5].mul(30.0)  # an outlier channel
  w = jax.random.normal(ks[1], (k, n)) * 0.05
  return x, w, jax.random.normal(ks[2], (m, n))


def _run(config, kernel_spec=P(None, "data"), operands=None, axis_type=jax.sharding.AxisType.Auto):
  mesh = _mesh(axis_type)
  x, w, cot = operands or _operands()
  step = _step(config, mesh, kernel_spec)
  with jax.set_mesh(mesh):
    loss, (dw, dx) = step(w, x, cot, KEY)
    hlo = step.lower(w, x, cot, KEY).compile().as_text()
  return (loss, dw, dx), hlo


def _all_gathers(hlo):
  """(dtype, shape) of every all-gather's result in the compiled HLO."""
  return [(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d))
          for m in re.finditer(r"= (\w+)\[([\d,]*)\][^=\n]*? all-gather(?:-start)?\(", hlo)]


SLOW = pytest.mark.slow  # the other formats: the slow run (.ci/run) keeps the default one fast


@pytest.mark.parametrize("config", [
    Int4Config(),  # two-level scales: values and multipliers packed
    pytest.param(Int4Config(scale_levels=1), marks=SLOW),  # one scale per column: values packed
    # one scale for the whole weight: an all-reduce of a max
    pytest.param(Int4Config(scale_mode="tensor"), marks=SLOW),
    pytest.param(Int4Config(forward_bits=8, scale_levels=1), marks=SLOW),  # int8, as it is
    # the dither covers the whole operand
    pytest.param(Int4Config(forward_rounding="stochastic"), marks=SLOW),
    # searched multipliers (some groups clip) are the ones packed; stochastic keeps the ceil rule
    Int4Config(scale_search=2),
    pytest.param(Int4Config(scale_search=2, forward_rounding="stochastic"), marks=SLOW),
], ids=["two-level", "per-row", "per-tensor", "int8", "stochastic", "search",
        "search-stochastic"])
def test_quantizing_the_shards_equals_gathering_then_quantizing(config):
  (loss, dw, dx), _ = _run(config.replace(fsdp_axis="data"))
  (loss_f, dw_f, dx_f), _ = _run(config)  # GSPMD gathers the float weight, then quantizes
  np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss_f))
  np.testing.assert_array_equal(np.asarray(dw), np.asarray(dw_f))
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_f))


def test_explicit_mesh_axes_reshard_and_equal_the_same():
  explicit = jax.sharding.AxisType.Explicit
  (loss, dw, dx), hlo = _run(Int4Config(fsdp_axis="data"), axis_type=explicit)
  (loss_f, dw_f, dx_f), _ = _run(Int4Config(), axis_type=explicit)
  np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss_f))
  np.testing.assert_array_equal(np.asarray(dw), np.asarray(dw_f))
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_f))
  assert ("u8", (64, 48)) in _all_gathers(hlo)  # values: 64 columns x 96 / 2 bytes


def test_a_contraction_that_needs_padding_gathers_packed_and_equal():
  """K = 100 is padded to 128 before the Hadamard; the packed operand carries the padding."""
  operands = _operands(k=100)
  (loss, dw, dx), hlo = _run(Int4Config(fsdp_axis="data"), operands=operands)
  (loss_f, dw_f, dx_f), _ = _run(Int4Config(), operands=operands)
  np.testing.assert_array_equal(np.asarray(dw), np.asarray(dw_f))
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_f))
  assert ("u8", (64, 64)) in _all_gathers(hlo)  # 64 columns x 128 / 2 bytes


def test_the_sharded_step_equals_one_device():
  """Against the op on one device: the same loss and gradients up to float summation order."""
  config = Int4Config(fsdp_axis="data")
  (loss, dw, dx), _ = _run(config)
  x, w, cot = _operands()
  one = jax.jit(jax.value_and_grad(
      lambda w, x: jnp.sum(int4_linear(x, w, key=KEY, config=Int4Config()) * cot),
      argnums=(0, 1)))(w, x)
  np.testing.assert_allclose(float(loss), float(one[0]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dw), np.asarray(one[1][0]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dx), np.asarray(one[1][1]), rtol=1e-4, atol=1e-6)


def test_the_weight_gather_moves_packed_bytes_at_most_a_third_of_bf16():
  """Without fsdp_axis GSPMD gathers the weight whole (here the int8 operand: it quantizes the
  shards itself, as the propagation keeps them split; in a full step it may gather f32). With it,
  nothing of the weight's shape is gathered, and the packed gathers (u8 values and multipliers,
  f32 scales) stay under a third of a bf16 weight gather. The gathers of the activations (s8,
  tokens x features) are not the weight's and are left out."""
  k, n, m = 256, 128, 32
  operands = _operands(k=k, n=n, m=m)
  _, hlo_int4 = _run(Int4Config(fsdp_axis="data"), operands=operands)
  _, hlo_plain = _run(Int4Config(), operands=operands)
  whole = lambda gathers: [g for g in gathers if g[1] in ((k, n), (n, k))]
  assert whole(_all_gathers(hlo_plain)), _all_gathers(hlo_plain)  # the check sees a weight
  gathers = _all_gathers(hlo_int4)
  assert not whole(gathers), gathers
  packed = [g for g in gathers if g[0] == "u8" or (g[0] == "f32" and np.prod(g[1]) <= n)]
  assert [g for g in packed if g[0] == "u8"], gathers
  assert [g for g in gathers if g not in packed] == [g for g in gathers if m in g[1]], gathers
  gathered = sum(BYTES[dtype] * int(np.prod(shape)) for dtype, shape in packed)
  assert gathered <= 2 * k * n / 3, (gathered, gathers)


def test_per_tensor_scales_under_fsdp_equal_the_unsharded_ones():
  """scale_mode='tensor' takes the max over every shard (an all-reduce): the same scale, so the
  same forward, as one device."""
  config = Int4Config(scale_mode="tensor", grad_mode="float")
  x, w, _ = _operands()
  mesh = _mesh()
  fwd = jax.jit(lambda w, x: int4_linear(x, w, config=config.replace(fsdp_axis="data")),
                in_shardings=(NamedSharding(mesh, P(None, "data")),
                              NamedSharding(mesh, P("data"))))
  with jax.set_mesh(mesh):
    y = fwd(w, x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(
      lambda w, x: int4_linear(x, w, config=config))(w, x)))


@SLOW
def test_a_kernel_split_on_its_input_dim_is_resharded_and_still_equal():
  (loss, dw, dx), _ = _run(Int4Config(fsdp_axis="data"), kernel_spec=P("data", None))
  (loss_f, dw_f, dx_f), _ = _run(Int4Config(), kernel_spec=P("data", None))
  np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss_f))
  np.testing.assert_array_equal(np.asarray(dw), np.asarray(dw_f))


def test_columns_that_do_not_split_gather_floats_and_say_so(caplog, monkeypatch):
  from int4jax import fsdp
  monkeypatch.setattr(fsdp, "_warned", set())  # "once" is per process
  operands = _operands(n=60)  # 60 output columns over 8 devices
  with caplog.at_level(logging.WARNING, logger="int4jax"):
    (loss, _, _), _ = _run(Int4Config(fsdp_axis="data"), kernel_spec=P(), operands=operands)
  assert "do not split over 8 devices" in caplog.text
  (loss_f, _, _), _ = _run(Int4Config(), kernel_spec=P(), operands=operands)
  np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss_f))


def test_without_a_mesh_the_error_names_set_mesh():
  x, w, _ = _operands()
  with pytest.raises(ValueError, match=r"jax\.set_mesh"):
    jax.jit(lambda x, w: int4_linear(x, w, config=Int4Config(fsdp_axis="data")))(x, w)
  with jax.set_mesh(_mesh()), pytest.raises(ValueError, match="has axes"):
    jax.jit(lambda x, w: int4_linear(x, w, config=Int4Config(fsdp_axis="fsdp")))(x, w)


def test_learned_scales_cannot_be_gathered_packed():
  with pytest.raises(ValueError, match="scale_mode='lsq'"):
    Int4Config.paper(fsdp_axis="data")
