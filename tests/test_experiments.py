"""The experiment framework on tiny data and tiny models the tests make: the BERT port against an
independent numpy forward, the corpora's splits, one real training step of every task config and
variant, exact resume from a checkpoint, NaN abort, evaluation compiled once, and the report
files. The language-modelling task has its own file (test_lm_task.py)."""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import report, tasks, train, variants
from experiments.configs import TASKS, get_config, sizes
from experiments.models import bert
from experiments.data import corpora, pipeline, tfds_corpora
from tests import experiment_fixtures as fx


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp("experiments")
  model_dir = fx.write_model_dir(str(root / "model"))
  data_dir = fx.build_bible(fx.build_fashion_mnist(fx.build_shakespeare(
      fx.build_corpora(str(root / "data")))))
  return {"root": root, "model_dir": model_dir, "data_dir": data_dir}


# ---- the BERT port -------------------------------------------------------------------------

def _np_layer_norm(x, g, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * g + b


def numpy_bert_mean_pooled(w, cfg, ids):
  """BERT from the Hugging Face tensors, written from the architecture, in float64."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  erf = np.vectorize(math.erf)
  lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
  mask = ids != 0
  t = ids.shape[1]
  x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
       + w["embeddings.token_type_embeddings.weight"][0])
  eps = cfg["layer_norm_eps"]
  x = _np_layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
  nh = cfg["num_attention_heads"]
  d = cfg["hidden_size"] // nh
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    split = lambda y: y.reshape(y.shape[0], t, nh, d).transpose(0, 2, 1, 3)
    q, k, v = (split(lin(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    s = np.where(mask[:, None, None, :], s, -1e30)
    s = np.exp(s - s.max(-1, keepdims=True))
    a = s / s.sum(-1, keepdims=True)
    ctx = (a @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    x = _np_layer_norm(x + lin(ctx, p + "attention.output.dense"),
                       w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"], eps)
    hmid = lin(x, p + "intermediate.dense")
    hmid = 0.5 * hmid * (1 + erf(hmid / np.sqrt(2)))
    x = _np_layer_norm(x + lin(hmid, p + "output.dense"), w[p + "output.LayerNorm.weight"],
                       w[p + "output.LayerNorm.bias"], eps)
  m = mask[..., None]
  return (x * m).sum(1) / m.sum(1)


def _flax_pooled(cfg, params, ids):
  ids = jnp.asarray(ids)
  hidden = bert.BertEncoder(cfg).apply({"params": params}, ids, ids != 0)
  return np.asarray(bert.mean_pool(hidden, ids != 0))


def test_bert_port_matches_an_independent_numpy_forward(workspace):
  cfg, params, tok = bert.load_pretrained(workspace["model_dir"])
  arrays = pipeline.tokenize(tok, ["good movie", "maybe the plot was very poor", "a"], 12)
  want = numpy_bert_mean_pooled(fx.hf_weights(), fx.TINY, arrays["input_ids"])
  got = _flax_pooled(cfg, params, arrays["input_ids"])
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_minilm_port_matches_numpy_on_the_real_weights():
  """The real MiniLM-L6 (when prepared) through both forwards."""
  try:
    model_dir = bert.minilm_dir(fetch=False)  # tests never download
  except FileNotFoundError:
    pytest.skip("MiniLM-L6 is not prepared (python -m experiments.data.prepare)")
  from safetensors.numpy import load_file
  cfg, params, tok = bert.load_pretrained(model_dir)
  hf_cfg = json.load(open(os.path.join(model_dir, "config.json")))
  ids = pipeline.tokenize(tok, ["A man is playing a guitar.", "INT4 training works."],
                          16)["input_ids"]
  want = numpy_bert_mean_pooled(load_file(os.path.join(model_dir, "model.safetensors")), hf_cfg,
                                ids)
  np.testing.assert_allclose(_flax_pooled(cfg, params, ids), want, rtol=1e-4, atol=1e-4)


def test_port_refuses_missing_tensors():
  w = fx.hf_weights()
  del w["encoder.layer.1.output.dense.weight"]
  with pytest.raises(KeyError, match="encoder.layer.1.output.dense.weight"):
    bert.encoder_params_from_hf(w, bert.BertConfig(num_layers=2))


# ---- data ------------------------------------------------------------------------------------

def test_stratified_split_is_fixed_balanced_and_disjoint():
  labels = np.array([0] * 100 + [1] * 60)
  a, b = corpora.stratified_split(labels), corpora.stratified_split(labels)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert sum(len(v) for v in a.values()) == 160
  assert len(set(np.concatenate(list(a.values())))) == 160
  assert [int(labels[a["test"]].sum()), len(a["test"])] == [6, 16]
  assert not np.array_equal(corpora.stratified_split(labels, seed=1)["test"], a["test"])


def test_corpus_csv_errors_name_the_line():
  corpus = corpora.CORPORA["polarity"]
  with pytest.raises(ValueError, match="line 2"):
    corpora.parse_csv('"1","ok"\n"2","bad label"\n', corpus)
  with pytest.raises(ValueError, match="empty sentence"):
    corpora.parse_csv('"1","   "\n', corpus)


def test_tfds_build_is_cached_and_readable(workspace):
  b = tfds_corpora.build("uncertainty", workspace["data_dir"])  # prepared: no fetch, no rebuild
  ds = b.as_data_source()
  assert {s: len(ds[s]) for s in ("train", "validation", "test")} == {"train": 32,
                                                                      "validation": 4, "test": 4}
  texts, labels = pipeline.load_split("uncertainty", "test", workspace["data_dir"])
  assert len(texts) == 4 and sorted(labels.tolist()) == [0, 0, 1, 1]


def test_epoch_batches_are_seeded_and_random_access():
  records = pipeline.as_records({"x": np.arange(10), "labels": np.arange(10) % 2})
  e0 = pipeline.epoch_batches(records, 4, seed=0, epoch=0)
  assert len(e0) == 2
  np.testing.assert_array_equal(e0[1]["x"], pipeline.epoch_batches(records, 4, 0, 0)[1]["x"])
  assert not np.array_equal(e0[0]["x"], pipeline.epoch_batches(records, 4, 0, 1)[0]["x"])


# ---- training ------------------------------------------------------------------------------

TINY_LM = dict(vocab_size=300, seq_len=16, num_layers=1, hidden_size=32, num_heads=2,
               eval_windows=3, sample_tokens=4)


TINY_VIT = dict(patch_size=7, num_layers=1, hidden_size=32, num_heads=2, eval_batch_size=8)
TINY_TRANSLATION = dict(vocab_size=300, max_len=24, num_layers=1, hidden_size=32, num_heads=2,
                        decode_batch_size=8, beam_size=2)


def _tiny(config, workspace, **changes):
  """`config` shrunk to the tiny data and model, its other fields (optimizer, schedule) kept."""
  shrink = {"classification": dict(model_dir=workspace["model_dir"], max_len=12),
            "lm": TINY_LM, "vision": TINY_VIT, "translation": TINY_TRANSLATION}[config.kind]
  return config.replace(**{**dict(data_dir=workspace["data_dir"], batch_size=8, log_every=1),
                           **shrink, **changes})


def _data(config):
  return tasks.task_for(config).load(config)


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
@pytest.mark.parametrize("task,size", [(t, s) for t in TASKS for s in sizes(t)])
def test_one_real_training_step_of_every_config(task, size, workspace, tmp_path):
  """Every config, one optimizer step on tiny data (the default int4); every variant on one
  config, and on the LM the variants whose rules depend on the task (layer groups, calibrated
  LSQ scales)."""
  # The variants with their own code path in the framework; the others differ from int4 only in
  # Int4Config (the op's tests cover those), and every variant's plan is checked below.
  chosen = {("polarity", "cpu"): ("fp32", "int4", "int4-paper", "int4-hq-search",
                                  "attn-proj-float", "mlp-float", "int4-qk8"),
            ("shakespeare", "cpu"): ("fp32", "int4", "int4-paper", "attn-proj-float",
                                     "mlp-float", "int4-qk8")}
  config = _tiny(get_config(task, size), workspace, steps=1, seeds=(0,),
                 variants=chosen.get((task, size), ("int4",)))
  results = train.train_and_evaluate(config, str(tmp_path), progress=False)
  metric = tasks.task_for(config).metric
  assert set(results) == set(config.variants)
  for variant, by_seed in results.items():
    s = by_seed[0]
    assert s["steps"] == 1 and math.isfinite(s[metric]), (variant, s)
    lines = [json.loads(x) for x in open(tmp_path / variant / "seed_0" / "metrics.jsonl")]
    assert math.isfinite(lines[0]["loss"]) and f"eval_{metric}" in lines[-1]


def test_variants_quantize_exactly_the_block_linear_layers(workspace):
  config = _tiny(get_config("polarity"), workspace)
  task, data = tasks.task_for(config), _data(config)
  ids = jnp.ones((2, 8), jnp.int32)
  plan = lambda v: train.build_model(task, config, data, v).plan(ids, ids > 0)
  int4 = plan("int4")
  assert int4["classifier"] is None
  layers = data["bert"].num_layers
  assert sum(c is not None for c in int4.values()) == 6 * layers  # q, k, v, out, 2 MLP
  no_attn = [p for p, c in plan("attn-proj-float").items() if c is not None]
  assert sorted(p.split("/")[-1] for p in no_attn) == sorted(["intermediate", "output"] * layers)
  no_mlp = [p for p, c in plan("mlp-float").items() if c is not None]
  assert len(no_mlp) == 4 * layers and all("/attention/" in p for p in no_mlp)
  assert train.build_model(task, config, data, "fp32").__class__ is bert.BertClassifier
  with pytest.raises(ValueError, match="unknown variant"):
    variants.rules_for("int3")
  with pytest.raises(ValueError, match="defines only"):
    variants.rules_for("mlp-float", layer_groups={"attn": ".*"})
  qk8 = plan("int4-qk8")
  eight = [p.split("/")[-1] for p, c in qk8.items() if c is not None and c.forward_bits == 8]
  assert sorted(eight) == sorted(["key", "query"] * layers)
  assert sum(c is not None and c.forward_bits == 4 for c in qk8.values()) == 4 * layers


def test_the_mse_clip_variant_clips_where_gaussian_rows_lose_least():
  """GAUSSIAN_MSE_CLIP is the clip ratio with the least INT4 error on Gaussian rows, through the
  library's own quantizer: below it clipping costs more, above it the coarser step does."""
  from int4jax.quantizers import two_level
  rows = jax.random.normal(jax.random.key(0), (512, 1024))

  def mse(ratio):
    q, s = two_level.quantize_two_level(rows, 1, -7, 7, levels=1, clip_ratio=ratio)
    return float(jnp.mean((two_level.dequantize_two_level(q, s) - rows) ** 2))

  best = variants.GAUSSIAN_MSE_CLIP
  assert mse(best) < min(mse(best - 0.2), mse(best + 0.2)), [mse(best + d) for d in (-.2, 0, .2)]
  assert mse(best) < 0.7 * mse(None)  # abs-max (no clip) is clearly worse at 4 bits
  config = variants.VARIANTS["int4-mse-clip"].config
  assert config.scale_clip == best and config.scale_levels == 1


@pytest.mark.parametrize("task", ["polarity", "shakespeare",
                                  pytest.param("fashion_mnist", marks=pytest.mark.slow),
                                  pytest.param("translation", marks=pytest.mark.slow)])
def test_every_variant_builds_a_plan_with_int4_block_layers(task, workspace):
  config = _tiny(get_config(task), workspace)
  t, data = tasks.task_for(config), _data(config)
  inputs = t.model_inputs(t.train_batch(config, data, 0, 0))
  for name in variants.DEFAULT_VARIANTS:  # the bf16/fp8 baselines: tests/test_baselines.py
    model = train.build_model(t, config, data, name)
    if name == "fp32":
      assert not hasattr(model, "plan")
      continue
    plan = model.plan(*inputs)
    assert any(c is not None for c in plan.values()), name
    head = [p for p in plan if any(re.fullmatch(f, p) for f in t.float_layers)]
    assert head and all(plan[p] is None for p in head), name


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_resume_from_checkpoint_is_bit_identical(workspace, tmp_path):
  config = _tiny(get_config("polarity"), workspace, epochs=1.0, checkpoint_every=2)
  data = _data(config)
  run = lambda wd, **kw: train.train_one(config, str(wd), "int4-paper", 0, data,
                                         progress=False, **kw)
  straight = run(tmp_path / "straight")
  assert straight["steps"] == 4
  assert run(tmp_path / "resumed", stop_after=2)["stopped_at"] == 2
  resumed = run(tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)
  assert straight["accuracy"] == resumed["accuracy"]


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_a_resumed_run_writes_the_logs_of_an_uninterrupted_one(workspace, tmp_path):
  """A checkpoint inside a log window (every 2 steps, logs every 3), stopped after the window's
  record was written: the resumed run drops the records past its checkpoint and logs that
  window again over the same steps, so there is one record per step, as in a straight run."""
  config = _tiny(get_config("polarity"), workspace, epochs=1.0, checkpoint_every=2, log_every=3)
  data = _data(config)
  run = lambda wd, **kw: train.train_one(config, str(wd), "fp32", 0, data, progress=False, **kw)

  def records(wd):
    lines = open(wd / "fp32" / "seed_0" / "metrics.jsonl").read().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "examples_per_s"} for x in lines]

  run(tmp_path / "straight")
  assert run(tmp_path / "resumed", stop_after=3)["stopped_at"] == 3
  assert [r["step"] for r in records(tmp_path / "resumed") if "loss" in r] == [3]
  run(tmp_path / "resumed")
  assert records(tmp_path / "resumed") == records(tmp_path / "straight")


@pytest.mark.slow  # over 20 s: the slow run (.ci/run)
def test_nan_loss_aborts_naming_the_first_bad_step_of_its_window(workspace, tmp_path):
  """Losses are fetched per window of log_every steps; the abort names the first bad step (the
  first loss is computed before any update, so a NaN learning rate shows at step 2)."""
  config = _tiny(get_config("polarity"), workspace, epochs=1.0, log_every=4,
                 learning_rate=float("nan"))
  with pytest.raises(FloatingPointError, match="loss is nan at step 2"):
    train.train_one(config, str(tmp_path), "fp32", 0, _data(config), progress=False)


@pytest.mark.slow  # over 20 s: the slow run (.ci/run), to keep the default run under 10 min
def test_losses_are_logged_per_window(workspace, tmp_path):
  config = _tiny(get_config("polarity"), workspace, epochs=1.0, log_every=2)
  train.train_one(config, str(tmp_path), "fp32", 0, _data(config), progress=False)
  logged = [json.loads(x) for x in open(tmp_path / "fp32" / "seed_0" / "metrics.jsonl")]
  windows = [r for r in logged if "loss" in r]
  assert [r["step"] for r in windows] == [2, 4]
  assert all(math.isfinite(r["loss_mean"]) and r["examples_per_s"] > 0 for r in windows)


@pytest.mark.parametrize("task", ["polarity", "shakespeare"])
def test_evaluation_compiles_once(task, workspace):
  config = _tiny(get_config(task), workspace, batch_size=3)  # several batches, the last padded
  if config.kind == "lm":
    config = config.replace(eval_windows=5)
  t, data = tasks.task_for(config), _data(config)
  model = train.build_model(t, config, data, "int4")
  params = t.init_params(config, t.model(config, data), data, 0)
  evaluate = train.make_evaluate(t, model)
  first = evaluate({"params": params}, config, data)
  assert evaluate({"params": params}, config, data) == first
  assert len(list(t.eval_batches(config, data))) > 1  # more than one batch, one compilation
  assert evaluate.compiled._cache_size() == 1


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_report_files_come_from_the_runs(workspace, tmp_path):
  config = _tiny(get_config("uncertainty"), workspace, epochs=0.5, seeds=(0, 1),
                 variants=("fp32", "int4"))
  train.train_and_evaluate(config, str(tmp_path / "wd"), progress=False)
  result = report.write_report(config, str(tmp_path / "wd"), str(tmp_path / "out"))
  saved = json.load(open(tmp_path / "out" / f"{config.task}.json"))
  assert saved == result
  assert {"task", "title", "metric", "higher_is_better", "device", "jax_version", "date",
          "variants"} <= set(saved)
  for v in ("fp32", "int4"):
    entry = saved["variants"][v]
    assert len(entry["seeds"]) == 2 and {"mean", "std", "f1_mean", "step_time_ms"} <= set(entry)
    assert entry["mean"] == pytest.approx(np.mean(entry["seeds"]), abs=0.01)
  paired = np.mean(np.array(saved["variants"]["int4"]["seeds"])
                   - np.array(saved["variants"]["fp32"]["seeds"]))
  assert saved["variants"]["int4"]["vs_fp32"] == pytest.approx(paired, abs=0.01)
  assert "vs_fp32" not in saved["variants"]["fp32"]
  assert (tmp_path / "out" / f"{config.task}.png").stat().st_size > 1000
  assert (tmp_path / "out" / "logs" / config.task / "int4_seed1.jsonl").exists()
  table = (tmp_path / "out" / f"{config.task}.md").read_text()
  assert f"| int4 | {saved['variants']['int4']['mean']:.2f}" in table
  diffs = (np.array(saved["variants"]["int4"]["seeds"])
           - np.array(saved["variants"]["fp32"]["seeds"]))
  assert saved["variants"]["int4"]["vs_fp32_std"] == pytest.approx(diffs.std(), abs=0.01)


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_lower_is_better_metrics_report_the_relative_gap(workspace, tmp_path):
  config = _tiny(get_config("shakespeare"), workspace, steps=2, variants=("fp32", "int4"),
                 seeds=(0,))
  train.train_and_evaluate(config, str(tmp_path / "wd"), progress=False)
  result = report.write_report(config, str(tmp_path / "wd"), str(tmp_path / "out"))
  assert result["metric"] == "val_loss" and result["higher_is_better"] is False
  fp, q = result["variants"]["fp32"], result["variants"]["int4"]
  assert q["vs_fp32_rel"] == pytest.approx(100 * (q["mean"] - fp["mean"]) / fp["mean"], abs=1e-2)
  assert {"perplexity_mean", "perplexity_std"} <= set(q)
  md = (tmp_path / "out" / f"{config.task}.md").read_text()
  assert f"({q['vs_fp32_rel']:+.2f}%)" in md
  evals = [json.loads(x) for x in open(tmp_path / "wd" / "int4" / "seed_0" / "metrics.jsonl")]
  assert result["curves"]["int4"]["0"] == [[r["step"], round(r["eval_val_loss"], 4)]
                                           for r in evals if "eval_val_loss" in r]
  summary = report.overview([result])
  assert f"| {config.title} (`{config.task}`) | val_loss, lower is better |" in summary


def test_a_loss_is_reported_at_every_evaluation_with_its_ratio_to_fp32_on_shared_seeds():
  """The gap over training, not only at the end: each evaluation's mean over the seeds a variant
  shares with fp32, and its ratio to fp32's mean over those seeds at that step."""
  result = {"metric": "val_loss", "higher_is_better": False, "curves": {
      "fp32": {"0": [[10, 2.0], [20, 1.5]], "1": [[10, 2.2], [20, 1.7]]},
      "int4": {"0": [[10, 2.1], [20, 1.8]], "1": [[10, 2.3], [20, 1.9]]},
      "int4-qk8": {"1": [[10, 2.2], [20, 1.7]], "5": [[10, 9.0], [20, 9.0]]}}}
  table = report.by_step(result)
  assert table["int4"] == {10: pytest.approx((2.2, 2.1)), 20: pytest.approx((1.85, 1.6))}
  assert table["int4-qk8"] == {10: pytest.approx((2.2, 2.2)), 20: pytest.approx((1.7, 1.7))}
  md = report.by_step_markdown(result)
  assert "| variant | 10 | 20 |" in md
  assert "| fp32 | 2.1000 | 1.6000 |" in md
  assert f"| int4 | 2.2000 ({2.2 / 2.1:.3f}) | 1.8500 ({1.85 / 1.6:.3f}) |" in md
  assert "| int4-qk8 | 2.2000 (1.000) | 1.7000 (1.000) |" in md
  one_eval = {"metric": "val_loss", "higher_is_better": False,
              "curves": {"fp32": {"0": [[10, 2.0]]}}}
  assert report.by_step_markdown(one_eval) == ""  # a single evaluation: the main table says it


def test_summary_table_has_one_row_per_variant_and_a_cell_per_task():
  a = {"task": "a", "variants": {"fp32": {"mean": 80.0, "std": 1.0, "seeds": [79.0, 81.0]},
                                 "int4": {"mean": 79.5, "std": 0.5, "seeds": [79.0, 80.0],
                                          "vs_fp32": -0.5, "vs_fp32_std": 0.5}}}
  b = {"task": "b", "variants": {"fp32": {"mean": 70.0, "std": 0.0, "seeds": [70.0]}}}
  table = report.summary_table([a, b])
  assert "| variant | a | b |" in table
  assert "| `fp32` | 80.00 ± 1.00 [2 seeds] | 70.00 ± 0.00 [1 seed] |" in table
  assert "| `int4` | 79.50 ± 0.50 (-0.50 ± 0.50) [2 seeds] | — |" in table


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_a_rerun_reproduces_a_logged_run_exactly(workspace, tmp_path):
  """What experiments.analysis.loop_reproduction checks on the real runs: the same config,
  variant and seed give the same loss at every logged step and the same evaluation."""
  from experiments.analysis import loop_reproduction
  config = _tiny(get_config("polarity"), workspace, epochs=1.0)
  train.train_one(config, str(tmp_path), "int4", 1, _data(config), progress=False)
  rows, same = loop_reproduction.compare(config, "int4", 1,
                                         str(tmp_path / "int4" / "seed_1" / "metrics.jsonl"))
  assert len(same) == 5 and all(same), rows  # 4 losses, 1 evaluation


def test_training_batches_depend_on_seed_and_epoch_only(workspace):
  """Runs share one loaded dataset: batch (seed, step) must not depend on what ran before."""
  config = _tiny(get_config("polarity"), workspace)
  task, data = tasks.task_for(config), _data(config)
  per_epoch = task.steps_per_epoch(config, data)
  ids = lambda seed, step: task.train_batch(config, data, seed, step)["input_ids"].copy()
  first = ids(0, 1)
  assert not np.array_equal(ids(1, 1), first)  # another seed, another order
  assert not np.array_equal(ids(0, per_epoch + 1), first)  # another epoch, another order
  np.testing.assert_array_equal(ids(0, 1), first)


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_main_runs_what_is_missing_then_reports(workspace, tmp_path, capsys):
  from experiments import main
  args = ["--task", "shakespeare", "--variants", "fp32", "int4", "--seeds", "0", "--steps", "2",
          "--data_dir", workspace["data_dir"], "--workdir", str(tmp_path / "wd"),
          "--out", str(tmp_path / "out"), "--checkpoint_every", "1"]
  main.main(args)
  assert "2 runs to do, 0 done" in capsys.readouterr().out
  main.main(args)  # everything finished: nothing reruns
  out = capsys.readouterr().out
  assert "0 runs to do, 2 done" in out and "| int4 |" in out
  saved = json.load(open(tmp_path / "out" / "gpt_shakespeare.json"))
  assert set(saved["variants"]) == {"fp32", "int4"}
  with pytest.raises(SystemExit):
    main.main(["--task", "shakespeare", "--model_dir", "x"])
  assert "BERT tasks" in capsys.readouterr().err
  # --dataset reaches the task's loader (a tfds name; this one does not exist)
  with pytest.raises(Exception, match="int4jax_no_such_dataset"):
    main.main(args[:-2] + ["--dataset", "int4jax_no_such_dataset", "--workdir",
                           str(tmp_path / "wd2")])


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_the_lr_sweep_runs_fp32_at_each_rate_and_picks_the_best_final_loss(workspace, tmp_path):
  from experiments.analysis import lr_sweep
  config = _tiny(get_config("shakespeare", "cpu-char"), workspace, steps=2, eval_every=1)
  result = lr_sweep.sweep(config, [1e-4, 3e-3], str(tmp_path / "wd"))
  assert set(result["runs"]) == {"0.0001", "0.003"}
  finals = {r: v["final"] for r, v in result["runs"].items()}
  assert result["best"] == min(finals, key=finals.get)
  for rate, run in result["runs"].items():
    assert [s for s, _ in run["curve"]] == [1, 2] and run["curve"][-1][1] == run["final"]
    assert os.path.exists(tmp_path / "wd" / f"lr_{rate}" / "fp32" / "seed_0" / "summary.json")
  assert "| 0.0001 | " in lr_sweep.markdown(result)
  assert lr_sweep.sweep(config, [3e-3], str(tmp_path / "wd"))["runs"]["0.003"] == (
      result["runs"]["0.003"])  # a finished rate is read back, not rerun


@pytest.mark.slow  # over 15 s on 2 busy cores: the slow run (.ci/run)
def test_packed_device_data_loads_like_the_cache(workspace, tmp_path):
  """pack_for_device carries the ViT and translation data; the tasks load it from there."""
  from experiments import pack_for_device
  out = tmp_path / "device"
  pack_for_device.main(["--out", str(out), "--data_dir", workspace["data_dir"],
                        "--tasks", "vision", "translation"])
  for task in ("fashion_mnist", "translation"):
    config = _tiny(get_config(task), workspace)
    here, there = _data(config), _data(config.replace(data_dir=str(out / "data")))
    split = "train"
    for key in here[split]:
      if isinstance(here[split][key], np.ndarray):
        np.testing.assert_array_equal(here[split][key], there[split][key])


@pytest.mark.slow  # trains: left out of the default run, run by .ci/run
def test_precision_annealing_switches_to_the_late_variant_for_the_last_steps(workspace, tmp_path):
  """int4-anneal8 trains as int4, then its last steps as int8-fwd on the same state: its losses
  equal int4's up to the switch, then int8-fwd's from int4's state, and differ from int4's."""
  config = _tiny(get_config("shakespeare"), workspace, steps=10, seeds=(0,), eval_every=5)
  data = _data(config)
  runs = {v: train.train_one(config, str(tmp_path), v, 0, data, progress=False)
          for v in ("int4", "int4-anneal8")}
  logs = {v: [json.loads(x) for x in open(tmp_path / v / "seed_0" / "metrics.jsonl")]
          for v in runs}
  loss = lambda v: [r["loss"] for r in logs[v] if "loss" in r]
  assert loss("int4-anneal8")[:9] == loss("int4")[:9]  # steps 1-9 (the switch is at step 9)
  assert loss("int4-anneal8")[9] != loss("int4")[9]
  evals = lambda v: [r["eval_val_loss"] for r in logs[v] if "eval_val_loss" in r]
  assert evals("int4-anneal8")[0] == evals("int4")[0]  # step 5: before the switch
  assert evals("int4-anneal8")[1] != evals("int4")[1]
