"""The GPU benchmark scripts run end to end on CPU at tiny sizes and write the documented JSON;
a backend that cannot run here is a row that says why, not a missing row."""

import json

import jax
import pytest

from experiments.benchmarks import gemm, linear

ROW_KEYS = {"op", "backend", "shape", "median_ms", "tflops", "speedup_vs_bf16"}


def _load(tmp_path, name):
  result = json.load(open(tmp_path / f"{name}.json"))
  assert {"device", "driver", "jax_version", "date", "rows"} <= set(result)
  table = (tmp_path / f"{name}.md").read_text()
  assert table.count("\n|") == len(result["rows"]) + 2  # header, rule, one line per row
  for row in result["rows"]:
    assert ROW_KEYS <= set(row)
    assert (row["median_ms"] is None) == ("error" in row)
  return result


def test_bench_gemm_writes_every_row(tmp_path):
  gemm.main(["--sizes", "64", "--repeats", "2", "--backends", "pallas", "mosaic",
             "--out", str(tmp_path)])
  result = _load(tmp_path, "bench_gemm")
  rows = {r["backend"]: r for r in result["rows"]}
  from int4jax.kernels import mosaic_gemm
  variants = {f"mosaic:{v}" for v in mosaic_gemm.VARIANTS}
  assert set(rows) == {"xla-bf16", "xla-fp8-e4m3", "xla-int8", "xla-int8+dequant", "pallas",
                       "mosaic"} | variants
  assert rows["xla-bf16"]["speedup_vs_bf16"] == 1.0
  assert rows["pallas"]["median_ms"] > 0  # interpreted on CPU, but it ran and was checked
  assert all("Hopper" in rows[name]["error"] for name in variants | {"mosaic"})
  assert "64" in result["xla_int8_dot_custom_call_targets"]


@pytest.mark.parametrize("backends", [["xla", "mosaic"]])
def test_bench_linear_writes_every_row(tmp_path, backends):
  linear.main(["--shapes", "64,32,32", "--repeats", "2", "--backends", *backends,
               "--out", str(tmp_path)])
  rows = {r["backend"]: r for r in _load(tmp_path, "bench_linear")["rows"]}
  assert set(rows) == {"xla-bf16", "int4-xla", "int4-mosaic"}
  assert rows["int4-xla"]["median_ms"] > 0 and "Hopper" in rows["int4-mosaic"]["error"]


def test_bench_cpu_linear_times_every_variant_in_one_process(tmp_path):
  from experiments.benchmarks import cpu_linear
  out = tmp_path / "cpu.json"
  result = cpu_linear.main(["--tokens", "64", "--size", "32", "--repeats", "2",
                            "--out", str(out)])
  assert json.load(open(out)) == result
  names = [r["variant"] for r in result["rows"]]
  assert names[0] == "float32" and "int4 default" in names
  assert all(r["median_ms"] > 0 for r in result["rows"])


@pytest.mark.slow  # runs the analysis script
def test_lss_variance_reports_both_forms(tmp_path):
  from experiments.analysis import lss_variance
  out = tmp_path / "lss.md"
  lss_variance.main(["--draws", "2", "--out", str(out)])
  rows = json.loads(out.read_text().strip().splitlines()[-1])
  assert {r["lss"] for r in rows} == {"off", "bernoulli", "systematic"}
  for r in rows:
    assert r["fold (the op)"] > 0 and r["after (float bound)"] > 0


@pytest.mark.slow  # builds and times real train steps
def test_bench_train_step_times_each_variant_like_the_loop(tmp_path):
  from experiments.benchmarks import timer, train_step
  from experiments.configs import get_config
  from tests import experiment_fixtures as fx
  config = get_config("shakespeare").replace(
      data_dir=fx.build_shakespeare(str(tmp_path)), vocab_size=300, seq_len=16, num_layers=1,
      hidden_size=32, num_heads=2, batch_size=4)
  rows = train_step.run(config, ["fp32", "int4", "mlp-float", "int4-packed"], repeats=2)
  assert [r["variant"] for r in rows] == ["fp32", "int4", "mlp-float", "int4-packed"]
  assert rows[0]["ratio_vs_fp32"] == 1.0 and all(r["median_ms"] > 0 for r in rows)
  assert all(r["compile_s"] > 0 and r["argument_mib"] > 0 and r["temp_mib"] > 0 for r in rows)
  by = {r["variant"]: r for r in rows}
  assert by["int4-packed"]["argument_mib"] == by["int4"]["argument_mib"]  # the same state
  timer.write_results(rows, "ts", str(tmp_path), {"task": config.task, "batch_size": 4,
                                                  "repeats": 2}, train_step.markdown)
  assert (tmp_path / "ts.md").read_text().count("\n| ") == len(rows) + 1


def test_collective_bytes_reads_sync_async_and_tuple_results():
  from experiments.benchmarks import mesh_scaling
  hlo = "\n".join([
      "  %ag = u8[64,32]{1,0} all-gather(%p), channel_id=1, dimensions={0}",
      "  %ar = (f32[16]{0}, s32[4,4]{1,0}) all-reduce(%a, %b), channel_id=2",
      "  %ags = (bf16[8,4]{1,0}, bf16[64,4]{1,0}) all-gather-start(%q), dimensions={0}",
      "  %agd = bf16[64,4]{1,0} all-gather-done(%ags)",
      "  %x = f32[64,32]{1,0} add(%y, %z)"])
  moved = mesh_scaling.collective_bytes(hlo)
  assert moved["all-gather"] == 64 * 32 + 2 * 64 * 4  # the start's result, not its operand
  assert moved["all-reduce"] == 4 * 16 + 4 * 16
  assert moved["reduce-scatter"] == 0
  # a (K=96, N=32, Kp=96) kernel: the u8 gather counts, an activation of as many elements not
  assert mesh_scaling.weight_gather_bytes(hlo, [(96, 32, 96)]) == 64 * 32
  weight = hlo + "\n  %w = f32[32,96]{1,0} all-gather(%k), dimensions={0}"
  assert mesh_scaling.weight_gather_bytes(weight, [(96, 32, 96)]) == 64 * 32 + 4 * 32 * 96
  assert mesh_scaling.weight_gather_bytes(hlo, [(64, 32, 64)]) == 64 * 32  # u8 only


@pytest.mark.slow  # compiles seven 8-device train steps
@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (XLA_FLAGS)")
def test_mesh_scaling_counts_each_parallelism_and_fsdp_gathers_int4(tmp_path):
  from experiments.benchmarks import mesh_scaling
  from experiments.configs import get_config
  from tests import experiment_fixtures as fx
  config = get_config("shakespeare").replace(
      data_dir=fx.build_shakespeare(str(tmp_path)), vocab_size=300, **mesh_scaling.TINY)
  rows = {(r["parallelism"], r["model"]): r for r in mesh_scaling.run(config, repeats=0)}
  assert set(rows) == {(p, m) for p, _, _, models in mesh_scaling.ROWS for m in models}
  assert rows["dp", "fp32"]["all_gather_bytes"] == 0 and rows["dp", "fp32"]["all_reduce_bytes"]
  # FSDP: the float model gathers block kernels in f32 (up to 2x bf16: GSPMD may gather the
  # activations for some layers instead); the INT4 wire gathers fewer bytes than GSPMD left to
  # itself. (At this toy width GSPMD also gathers some int8 operands, so the 1/3 bound is
  # checked on one layer in tests/test_fsdp_int4_wire.py, and the table's width meets it.)
  assert 1 <= rows["fsdp", "fp32"]["block_weight_gather_vs_bf16"] <= 2.0
  assert (rows["fsdp", "int4"]["block_weight_gather_bytes"]
          < rows["fsdp", "int4-float"]["block_weight_gather_bytes"]
          < rows["fsdp", "fp32"]["block_weight_gather_bytes"])


def test_the_profile_sums_device_kernels_by_name_and_category():
  """A trace with a GPU: its kernels are summed by name (the host's spans ignored) and
  categorized by the element types in cuBLAS/CUTLASS names; without one, the host's XLA ops are
  used, not the runtime spans that enclose them."""
  from experiments.benchmarks import profile_step
  meta = lambda kind, pid, name, tid=0: {"ph": "M", "name": kind, "pid": pid, "tid": tid,
                                         "args": {"name": name}}
  span = lambda pid, name, dur, tid=0: {"ph": "X", "pid": pid, "tid": tid, "name": name,
                                        "dur": dur}
  gemm_s8 = "sm90_xmma_gemm_s8s8_s32f32_tn_n_tilesize128x128x128"
  gemm_bf16 = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"
  events = [meta("process_name", 1, "/host:CPU"), meta("process_name", 2, "/device:GPU:0"),
            span(1, "PjitFunction(step)", 500.0), span(2, gemm_s8, 30.0),
            span(2, gemm_s8, 10.0), span(2, gemm_bf16, 20.0), span(2, "loop_multiply_fusion", 40.0)]
  events[3]["args"] = {"hlo_op": "custom-call.3"}
  times, source, ops = profile_step.kernel_times(events)
  assert source == "device" and ops == {gemm_s8: "custom-call.3"}
  assert times == {gemm_s8: 40.0, gemm_bf16: 20.0, "loop_multiply_fusion": 40.0}
  rows, summary = profile_step.rows_from(times, steps=2, top=2)
  assert [r["kernel"] for r in rows] == [gemm_s8, "loop_multiply_fusion"]
  assert summary["int GEMM"] == {"ms_per_step": 0.02, "share": 0.4}
  assert summary["float GEMM"]["share"] == 0.2 and summary["other"]["share"] == 0.4
  host = [meta("process_name", 1, "/host:CPU"), meta("thread_name", 1, "tf_XLAEigen/1", tid=7),
          span(1, "ThunkExecutor::Execute", 90.0, tid=7), span(1, "dot.3", 30.0, tid=7),
          span(1, "fusion.1", 10.0, tid=7), span(1, "python_frame", 99.0, tid=8)]
  times, source, _ = profile_step.kernel_times(host)
  assert source == "host" and times == {"dot.3": 30.0, "fusion.1": 10.0}
  assert profile_step.category("dot.3").startswith("GEMM (XLA:CPU dot")


def test_the_profile_reads_gemm_types_from_the_hlo():
  """Kernel names need not carry types (cuBLAS's nvjet_*, XLA's gemm_fusion_dot): the HLO
  instruction an event ran, looked up with its operands' types (printed beside them, or, as
  XLA:CPU prints, only at their definitions), decides int or float GEMM; a fusion is a GEMM when
  the computation it calls holds one."""
  from experiments.benchmarks import profile_step
  hlo = """HloModule m
%fused_dot (p0: s8[4,8], p1: s8[8,2]) -> s32[4,2] {
  %p0 = s8[4,8]{1,0} parameter(0)
  %p1 = s8[8,2]{1,0} parameter(1)
  ROOT %dot.1 = s32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}
}
ENTRY %main (a: f32[4,8]) -> f32[4,2] {
  %custom-call.3 = (bf16[4,2]{1,0}, s8[0]{0}) custom-call(bf16[4,8]{1,0} %x, bf16[8,2]{1,0} %y), custom_call_target="__cublas$gemm"
  %gemm_fusion_dot.2 = s32[4,2]{1,0} fusion(s8[4,8]{1,0} %c, s8[8,2]{1,0} %d), kind=kCustom, calls=%fused_dot
  %loop_fusion = f32[4,2]{1,0} fusion(f32[4,2]{1,0} %q), kind=kLoop, calls=%other
}
"""
  kinds = profile_step.gemm_kinds(hlo)
  assert kinds == {"dot.1": "int GEMM", "custom-call.3": "float GEMM",
                   "gemm_fusion_dot.2": "int GEMM"}
  times = {"nvjet_tst_128x256": 30.0, "loop_fusion": 10.0}
  _, summary = profile_step.rows_from(times, 1, 5, {"nvjet_tst_128x256": kinds["gemm_fusion_dot.2"]})
  assert set(summary) == {"int GEMM", "other"}
