"""Training on a device mesh (experiments.sharding, 8 CPU devices from tests/conftest.py): data,
tensor (2x4) and FSDP parallel steps of a small GPT with INT4 layers equal the one-device step,
params stay where they were placed, and the tensor-parallel step gathers no weight matrix."""

import re

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import int4jax
from experiments import sharding, tasks, train
from experiments.configs import get_config
from tests import experiment_fixtures as fx

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (XLA_FLAGS)")

TINY = dict(vocab_size=300, seq_len=16, num_layers=1, hidden_size=64, num_heads=2,
            batch_size=8, eval_windows=4, sample_tokens=0, steps=2, log_every=1, seeds=(0,),
            warmup_steps=1)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
  data_dir = fx.build_shakespeare(str(tmp_path_factory.mktemp("mesh")))
  config = get_config("shakespeare").replace(data_dir=data_dir, **TINY)
  task = tasks.task_for(config)
  return config, task, task.load(config)


def _run(config, data, tmp_path, variant="int4"):
  return train.train_one(config, str(tmp_path), variant, 0, data, progress=False)


def test_mesh_specs_parse_and_bad_ones_name_the_format():
  assert sharding.parse_mesh("data=4,model=2") == {"data": 4, "model": 2}
  for bad in ("data4", "data=4,data=2", "pipe=2", "data=0"):
    with pytest.raises(ValueError, match="data=4,model=2"):
      sharding.parse_mesh(bad)
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count=64"):
    sharding.make_mesh("data=64")
  with pytest.raises(ValueError, match="fsdp=True needs a mesh"):
    get_config("shakespeare").replace(fsdp=True)


def test_placement_splits_columns_rows_and_fsdp_dimensions():
  mesh = sharding.make_mesh("data=4,model=2")
  params = {"block_0": {"attn": {"query": {"kernel": np.zeros((64, 64)), "bias": np.zeros(64)},
                                 "output": {"kernel": np.zeros((64, 64)), "bias": np.zeros(64)}}},
            "wte": {"embedding": np.zeros((302, 64))}}
  tp = tasks.LanguageModelling.tensor_parallel
  specs = jax.tree.map(lambda s: tuple(s.spec), sharding.tree_shardings(params, mesh, tp))
  assert specs["block_0"]["attn"]["query"] == {"kernel": (None, "model"), "bias": ("model",)}
  assert specs["block_0"]["attn"]["output"] == {"kernel": ("model", None), "bias": (None,)}
  assert specs["wte"]["embedding"] == (None, None)
  fsdp = jax.tree.map(lambda s: tuple(s.spec), sharding.tree_shardings(params, mesh, tp, fsdp=True))
  assert fsdp["block_0"]["attn"]["query"]["kernel"] == ("data", "model")
  assert fsdp["wte"]["embedding"] == (None, "data")  # 302 does not divide by 4
  # FSDP alone: a kernel is split on its output dim (quantized where it lives), even the smaller
  fsdp_only = sharding.tree_shardings({"down": {"kernel": np.zeros((256, 64))}},
                                      sharding.make_mesh("data=8"), tp, fsdp=True)
  assert tuple(fsdp_only["down"]["kernel"].spec) == (None, "data")
  # inside a train state, the optimizer's mu and nu are placed like the params they mirror
  state = {"params": params, "opt": optax.adam(1e-3).init(params)}
  placed = sharding.tree_shardings(state, mesh, tp)
  assert tuple(placed["params"]["block_0"]["attn"]["query"]["kernel"].spec) == (None, "model")
  assert tuple(placed["opt"][0].mu["block_0"]["attn"]["query"]["kernel"].spec) == (None, "model")
  assert tuple(placed["opt"][0].count.spec) == ()


def test_fsdp_gathers_int4_for_dynamic_scales_and_leaves_learned_ones_to_gspmd(lm):
  config, task, data = lm
  fsdp = config.replace(mesh="data=8", fsdp=True)

  def configs(config, variant):
    return [r.config for r in train.build_model(task, config, data, variant).rules if r.config]
  assert all(c.fsdp_axis == "data" for c in configs(fsdp, "int4"))
  assert all(c.fsdp_axis is None for c in configs(fsdp, "int4-paper"))  # LSQ: not packable
  assert all(c.fsdp_axis is None for c in configs(fsdp.replace(fsdp_int4_wire=False), "int4"))
  assert all(c.fsdp_axis is None  # tensor parallelism too: the INT4 gather is FSDP's alone
             for c in configs(fsdp.replace(mesh="data=4,model=2"), "int4"))


def test_on_a_data_parallel_mesh_each_device_samples_its_own_rows(lm):
  """Variants with leverage-score sampling get one sampling block per data-parallel device
  (Int4Config.lss_blocks); without a mesh, or without sampling, the configs are unchanged."""
  config, task, data = lm

  def blocks(config, variant):
    return {r.config.lss_blocks for r in train.build_model(task, config, data, variant).rules
            if r.config}
  assert blocks(config.replace(mesh="data=4,model=2"), "int4-paper") == {4}
  assert blocks(config, "int4-paper") == {1}
  assert blocks(config.replace(mesh="data=4,model=2"), "int4") == {1}  # lss="off"


@pytest.mark.slow  # over 20 s each: the slow run (.ci/run)
@pytest.mark.parametrize("mesh,fsdp", [("data=8", False), ("data=2,model=4", False),
                                       ("data=4,model=2", True), ("data=8", True)])
def test_a_mesh_step_equals_the_one_device_step(lm, tmp_path, mesh, fsdp):
  """Two optimizer steps with every block layer INT4: the same loss and params as one device.
  The sharded program sums floats in another order; that can move a value across an INT4
  rounding boundary, so params agree to a tolerance, not bitwise."""
  config, _, data = lm
  one = _run(config, data, tmp_path / "one")
  many = _run(config.replace(mesh=mesh, fsdp=fsdp), data, tmp_path / "many")
  assert abs(many["val_loss"] - one["val_loss"]) < 1e-4 * one["val_loss"], (many, one)
  flat_one = jax.tree.leaves(one["state"]["params"])
  flat_many = jax.tree.leaves(many["state"]["params"])
  for a, b in zip(flat_many, flat_one):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  kernel = many["state"]["params"]["block_0"]["attn"]["query"]["kernel"]
  expected = sharding.spec_for(
      [jax.tree_util.DictKey(k) for k in ("block_0", "attn", "query", "kernel")], kernel.shape,
      sharding.make_mesh(mesh), tasks.LanguageModelling.tensor_parallel, fsdp)
  assert kernel.sharding.spec == expected  # the step kept the placement


def test_a_data_parallel_gradient_gathers_nothing_and_all_reduces_int32():
  """x split by tokens, w replicated: dW's integer GEMM sums its token shards with an int32
  all-reduce; no operand is gathered (the CPU path's transposed copy of Xq keeps its dims, so it
  stays split)."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.device_put(np.ones((16, 8, 64), np.float32), NamedSharding(mesh, P("data")))
  w = jax.device_put(np.ones((64, 32), np.float32), NamedSharding(mesh, P()))
  grad = jax.jit(jax.grad(lambda w, x: (int4jax.int4_linear(x, w, key=jax.random.key(0)) ** 2)
                          .sum()))
  hlo = grad.lower(w, x).compile().as_text()
  assert "all-gather" not in hlo
  assert re.search(r"= s32\[64,32\]\S* all-reduce\(", hlo), "dW's int32 sum"


@pytest.mark.parametrize("config,bitwise", [
    (int4jax.Int4Config(), True),
    pytest.param(int4jax.Int4Config(forward_rounding="stochastic"), True,
                 marks=pytest.mark.slow),  # the slow run (.ci/run)
    pytest.param(int4jax.Int4Config(scale_mode="tensor"), True, marks=pytest.mark.slow),
    (int4jax.Int4Config(lss="systematic"), False),
], ids=["default", "stochastic-forward", "per-tensor", "systematic-lss"])
def test_data_parallel_under_jit_draws_the_same_bits_as_one_device(config, bitwise):
  """GSPMD partitions the dither by global position (threefry is partitionable) and all-reduces
  the column abs-max and dW's int32 sums, which are exact: the sharded dX and dW equal one
  device's bit for bit. The loss is a float sum of the outputs, summed per shard then across
  shards: XLA:CPU's summation order depends on the program (and the CPU's vector width), so it is
  equal to float rounding. With leverage-score sampling dW is reweighted in float before the
  integer GEMM, summed in another order: equal to float rounding."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.random.normal(jax.random.key(0), (16, 8, 64))
  w = jax.random.normal(jax.random.key(1), (64, 48)) * 0.1
  step = jax.jit(jax.value_and_grad(lambda w, x: (int4jax.int4_linear(
      x, w, key=jax.random.key(2), config=config) ** 2).sum(), argnums=(0, 1)))
  one = jax.tree.leaves(step(w, x))
  many = jax.tree.leaves(step(jax.device_put(w, NamedSharding(mesh, P())),
                              jax.device_put(x, NamedSharding(mesh, P("data")))))
  (loss, grads), (loss_1, grads_1) = (many[0], many[1:]), (one[0], one[1:])
  np.testing.assert_allclose(np.asarray(loss), np.asarray(loss_1), rtol=1e-6)
  for a, b in zip(grads, grads_1):
    if bitwise:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)


def test_a_row_parallel_layer_all_reduces_only_row_ranges_and_int32_sums():
  """Contraction split over "model" (row-parallel), tokens over "data": each device quantizes its
  K slice (Hadamard blocks and scale groups lie inside it), and the only collectives are the max
  all-reduce of the per-row ranges of X (M/2 floats per device) and per-column ranges of W, and
  the exact int32 sum of the output; no operand is gathered, and y equals one device bitwise."""
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  x = jax.random.normal(jax.random.key(0), (32, 256))
  w = jax.random.normal(jax.random.key(1), (256, 64)) * 0.1
  xs = jax.device_put(x, NamedSharding(mesh, P("data", "model")))
  ws = jax.device_put(w, NamedSharding(mesh, P("model", None)))
  forward = jax.jit(lambda x, w: int4jax.int4_linear(x, w))
  hlo = forward.lower(xs, ws).compile().as_text()
  collectives = re.findall(r"= (\(?[\w\[\],{}\s]*?\)?) (all-\w+|reduce-scatter|collective-\w+)\(",
                           hlo)
  assert {kind for _, kind in collectives} == {"all-reduce"}, collectives
  reduced = sorted(re.findall(r"\w+\[[\d,]*\]", " ".join(shapes for shapes, _ in collectives)))
  assert reduced == ["f32[16]", "f32[64]", "s32[16,64]"], reduced
  np.testing.assert_array_equal(np.asarray(forward(xs, ws)), np.asarray(forward(x, w)))


@pytest.mark.parametrize("lss", ["bernoulli", "systematic"])
def test_per_block_sampling_keeps_each_devices_rows_on_it(lss):
  """Int4Config(lss_blocks=8) on 8 data-parallel devices: each device water-fills and draws its
  own 16 token rows, so the compiled gradient gathers nothing and sorts only (1, 16) blocks, and
  it equals one device running the same blocks (to float rounding: dW is reweighted in float and
  summed in another order). With one block the scores are gathered for a global sort."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.random.normal(jax.random.key(0), (16, 8, 64))
  w = jax.random.normal(jax.random.key(1), (64, 48)) * 0.1
  placed = (jax.device_put(w, NamedSharding(mesh, P())),
            jax.device_put(x, NamedSharding(mesh, P("data"))))

  def step(blocks):
    config = int4jax.Int4Config(lss=lss, lss_blocks=blocks)
    return jax.jit(jax.value_and_grad(lambda w, x: (int4jax.int4_linear(
        x, w, key=jax.random.key(2), config=config) ** 2).sum(), argnums=(0, 1)))

  local, whole = step(8), step(1)
  hlo = local.lower(*placed).compile().as_text()
  collectives = re.findall(r"= (\(?[\w\[\],{}\s]*?\)?) (all-\w+|reduce-scatter|collective-\w+)\(",
                           hlo)
  assert {kind for _, kind in collectives} == {"all-reduce"}, collectives  # dW, loss: sums
  sorts = set(re.findall(r"= f32\[([\d,]*)\]\S* sort\(", hlo))
  assert sorts == {"1,16"}, sorts
  assert "all-gather" in whole.lower(*placed).compile().as_text()
  for a, b in zip(jax.tree.leaves(local(*placed)), jax.tree.leaves(local(w, x))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)


def _compiled_step(task, config, data, mesh):
  """(optimized HLO text of the INT4 train step on `mesh`, its initial state)."""
  model = train.build_model(task, config, data, "int4")
  tx, _ = task.optimizer(config, 2)
  with jax.set_mesh(mesh):
    state, others = train.initial_state(task, config, data, model, "int4", 0, tx)
  placement = sharding.tree_shardings(state, mesh, task.tensor_parallel, config.fsdp)
  step = train.make_train_step(task, config, model, tx, others, 0, placement)
  batch = sharding.shard_batch(task.train_batch(config, data, 0, 0), mesh)
  with jax.set_mesh(mesh):
    return step.lower(jax.device_put(state, placement), batch).compile().as_text(), state


def _gathers(hlo):
  """{(dtype, result shape)} of the all-gathers in HLO text."""
  return {(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d))
          for m in re.finditer(r"= (\w+)\[([\d,]*)\][^=\n]*? all-gather\(", hlo)}


@pytest.mark.slow  # over 20 s each: the slow run (.ci/run)
@pytest.mark.parametrize("mesh,fsdp", [("data=2,model=4", False), ("data=8", True)])
def test_the_tensor_parallel_step_gathers_no_weight_matrix(lm, mesh, fsdp):
  """The compiled step's all-gathers: none has a block weight's full shape under tensor
  parallelism; under FSDP the INT4 layers gather their packed INT4 weights (uint8, Kp/2 bytes per
  output column) and no whole block weight, while with fsdp_int4_wire=False GSPMD gathers whole
  block weights, f32 or the int8 operand as its propagation decides (which also shows that the
  check can see a gather)."""
  config, task, data = lm
  config = config.replace(mesh=mesh, fsdp=fsdp)
  mesh = sharding.make_mesh(config.mesh)
  hlo, state = _compiled_step(task, config, data, mesh)
  blocks = {tuple(np.shape(k)) for p, k in jax.tree_util.tree_leaves_with_path(state["params"])
            if "block_0" in jax.tree_util.keystr(p) and np.ndim(k) == 2}
  assert len(blocks) == 3  # (64, 64), (64, 256), (256, 64)
  gathered = _gathers(hlo)
  if fsdp:
    assert not {s for d, s in gathered if d == "f32"} & blocks, gathered
    assert {("u8", (64, 32)), ("u8", (256, 32)), ("u8", (64, 128))} <= gathered, gathered
    floats = _gathers(_compiled_step(task, config.replace(fsdp_int4_wire=False), data, mesh)[0])
    assert {s for _, s in floats} & blocks, floats
  else:
    assert not {s for _, s in gathered} & blocks, (gathered, blocks)
