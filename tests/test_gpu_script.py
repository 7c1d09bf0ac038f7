"""The one GPU script runs end to end at tiny sizes on CPU (XLA and interpreted Pallas; the GPU
tests skip, the GPU-only rows say why) and writes the documented files."""

import json
import os
import subprocess

import pytest

from tests import experiment_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["env", "tests", "gemm", "linear", "step_gpt2", "step_h4096", "profile", "sass"]


@pytest.mark.slow
def test_gpu_script_runs_every_stage_and_writes_the_raw_json(tmp_path):
  out, data = tmp_path / "out", fx.build_shakespeare(str(tmp_path / "data"))
  env = dict(os.environ, SIZE="tiny", OUT=str(out), DATA_DIR=data)
  run = subprocess.run([os.path.join(ROOT, "experiments/benchmarks/gpu_check.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
  stages = (out / "stages.txt").read_text().splitlines()
  assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
  assert [line.split()[0] for line in stages[:len(STAGES)]] == STAGES
  assert all(" rc=0 " in line for line in stages[:len(STAGES)]), stages
  limits = sum(int(line.rsplit("gpu_limit=", 1)[1]) for line in stages[:len(STAGES)])
  assert limits + 5 * len(STAGES) <= 540  # with kill graces, the script fits a 10-minute call
  for name in ["bench_gemm", "bench_linear", "bench_train_step_gpt2", "bench_train_step_h4096",
               "profile_step_gpt2"]:
    result = json.loads((out / f"{name}.json").read_text())
    assert {"device", "driver", "jax_version", "date", "rows"} <= set(result), name
    assert result["rows"] and (out / f"{name}.md").exists()
  gemm = {r["backend"]: r for r in json.loads((out / "bench_gemm.json").read_text())["rows"]}
  assert gemm["xla-int8"]["median_ms"] > 0 and gemm["pallas"]["median_ms"] > 0
  assert "Hopper" in gemm["mosaic"]["error"]  # a GPU-only row says why, never goes missing
  steps = json.loads((out / "bench_train_step_gpt2.json").read_text())["rows"]
  assert [r["variant"] for r in steps] == ["bf16", "fp8", "int4"]
  assert all(r["ratio_vs_bf16"] > 0 for r in steps)
  assert "skipped" in (out / "tests.txt").read_text()
  profile = json.loads((out / "profile_step_gpt2.json").read_text())
  assert profile["source"] == "host" and sum(c["share"] for c in profile["categories"].values()) > 0.99
