"""The translation task on data the tests make: verse pairs joined from the database, whole
books per split, the joint tokenizer, long pairs out of training, an encoder-decoder that is
causal and blind to source padding, greedy and beam decoding on models whose best answer is
known, and BLEU of the decoded text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tasks, train
from experiments.configs import get_config
from experiments.data import bible
from experiments.models import decoding, seq2seq
from experiments.tasks import translation
from tests import experiment_fixtures as fx

TINY = dict(vocab_size=300, max_len=16, num_layers=1, hidden_size=32, num_heads=2, batch_size=4,
            decode_batch_size=5, beam_size=2, warmup_steps=1, long_pairs="cut")


@pytest.fixture(scope="module")
def de_en(tmp_path_factory):
  data_dir = fx.build_bible(str(tmp_path_factory.mktemp("bible")))
  config = get_config("translation").replace(data_dir=data_dir, **TINY)
  task = tasks.task_for(config)
  return config, task, task.load(config)


def test_pairs_join_on_book_chapter_verse_and_skip_empty_sides(tmp_path):
  rows = [("e", 1, 1, 1, "Im  Anfang"), ("4", 1, 1, 1, "In the\nbeginning"),
          ("e", 1, 1, 2, "nur deutsch"),  # no English: left out
          ("e", 1, 1, 3, "leer"), ("4", 1, 1, 3, "   "),  # empty English: left out
          ("k", 1, 1, 1, "KJV"), ("4", 2, 1, 1, "only English")]
  fx.build_bible(str(tmp_path), rows)
  assert bible.load_pairs(str(tmp_path)) == [(1, 1, 1, "Im Anfang", "In the beginning")]


def test_splits_are_whole_books():
  rows = fx.bible_rows(verses_per_book=2)
  pairs = [(b, c, v, de, en) for (_, b, c, v, en), (_, _, _, _, de) in zip(rows[::2], rows[1::2])]
  split = bible.split_by_book(pairs)
  book_of = {en: b for b, _, _, _, en in pairs}
  books = {s: {book_of[en] for _, en in p} for s, p in split.items()}
  assert books["test"] == set(bible.TEST_BOOKS)
  assert books["validation"] == set(bible.VALIDATION_BOOKS)
  assert not books["train"] & (set(bible.TEST_BOOKS) | set(bible.VALIDATION_BOOKS))
  assert sum(map(len, split.values())) == len(pairs)


def test_encoding_round_trips_and_cuts_at_max_len(de_en):
  _, _, data = de_en
  tok = data["tokenizer"]
  assert [tok.token_to_id(t) for t in (bible.PAD, bible.BOS, bible.EOS)] == [0, 1, 2]
  ids, lengths = bible.encode(tok, ["good movie.", "good movie. " * 20], 16)
  assert ids[0, 0] == 1 and 2 in ids[0] and bible.decode(tok, ids[0]) == "good movie."
  assert lengths[1] > 16 and ids[1, -1] != 0  # cut, no EOS, full length reported


def test_long_pairs_stay_out_of_training_and_evaluation_cuts_or_drops_them(tmp_path):
  rows = fx.bible_rows(verses_per_book=4)
  long_en = " ".join(["good movie"] * 30)
  rows += [("4", 1, 2, 1, long_en), ("e", 1, 2, 1, "gutes"),  # a long train pair
           ("4", bible.TEST_BOOKS[0], 2, 1, long_en), ("e", bible.TEST_BOOKS[0], 2, 1, "gutes")]
  config = get_config("translation").replace(data_dir=fx.build_bible(str(tmp_path), rows),
                                              **{**TINY, "max_len": 32})
  task = tasks.task_for(config)
  cut = task.load(config)
  assert cut["train_left_out"] == 1 and cut["test_left_out"] == 0
  assert long_en in cut["test"]["references"]
  dropped = task.load(config.replace(long_pairs="drop"))
  assert dropped["test_left_out"] == 1 and long_en not in dropped["test"]["references"]
  assert len(dropped["test"]["src"]) == len(cut["test"]["src"]) - 1


def test_training_batches_shift_the_target_by_one(de_en):
  config, task, data = de_en
  batch = task.train_batch(config, data, 0, 1)
  np.testing.assert_array_equal(batch["tgt_in"][:, 1:], batch["tgt_out"][:, :-1])
  assert (batch["tgt_in"][:, 0] == 1).all()  # BOS
  np.testing.assert_array_equal(task.train_batch(config, data, 0, 1)["src"], batch["src"])


def test_smoothed_cross_entropy_is_plain_cross_entropy_at_zero_and_mixes_uniform():
  import optax
  logits = jax.random.normal(jax.random.key(0), (2, 3, 7))
  targets = jnp.array([[1, 2, 3], [4, 5, 6]])
  plain = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(translation.smoothed_cross_entropy(logits, targets, 0.0), plain,
                             rtol=1e-6)
  uniform = -jnp.mean(jax.nn.log_softmax(logits), axis=-1)
  np.testing.assert_allclose(translation.smoothed_cross_entropy(logits, targets, 0.1),
                             0.9 * plain + 0.1 * uniform, rtol=1e-6)


@pytest.mark.slow  # over 15 s on 2 busy cores: the slow run (.ci/run)
def test_the_model_is_causal_and_blind_to_source_padding():
  model = seq2seq.Seq2Seq(seq2seq.Seq2SeqConfig(vocab_size=20, max_len=10, num_layers=1,
                                                hidden_size=16, num_heads=2))
  src = jnp.array([[1, 5, 6, 7, 2, 0, 0, 0]])
  tgt = jnp.array([[1, 8, 9, 10, 11, 2]])
  params = model.init(jax.random.key(0), src, tgt)
  logits = model.apply(params, src, tgt)
  changed = model.apply(params, src, tgt.at[0, 3].set(12))
  np.testing.assert_allclose(changed[0, :3], logits[0, :3], rtol=1e-6)
  assert not np.allclose(changed[0, 3:], logits[0, 3:])
  padded = model.apply(params, jnp.pad(src, ((0, 0), (0, 2))), tgt)
  np.testing.assert_allclose(padded, logits, rtol=2e-5, atol=1e-6)
  memory = model.apply(params, src)
  np.testing.assert_allclose(model.apply(params, src, tgt, memory=memory), logits, rtol=1e-6)
  with pytest.raises(ValueError, match="max_len=10"):
    model.apply(params, jnp.ones((1, 11), jnp.int32))


PAD, BOS, EOS, A, B = range(5)


def table_model(table_VxV):
  """apply() of a model whose next-token log-probs depend on the previous token only."""
  def apply(src, tgt=None, memory=None):
    if tgt is None:
      return jnp.zeros(src.shape + (1,))
    return table_VxV[tgt]
  return apply


def test_greedy_copies_with_a_copy_model():
  src = jnp.array([[BOS, A, B, A, EOS, PAD], [BOS, B, EOS, PAD, PAD, PAD]])

  def copy(src_, tgt=None, memory=None):  # position i predicts source token i + 1
    if tgt is None:
      return jnp.zeros(src_.shape + (1,))
    nxt = jnp.pad(src_[:, 1:], ((0, 0), (0, 1)))[:, :tgt.shape[1]]
    return 10.0 * jax.nn.one_hot(nxt, 5)

  out = decoding.greedy(copy, src, 6, BOS, EOS, PAD)
  np.testing.assert_array_equal(out, [[A, B, A, EOS, PAD], [B, EOS, PAD, PAD, PAD]])


def test_beam_search_finds_the_better_sequence_that_greedy_misses():
  """BOS -> A (0.6) or B (0.4); A -> EOS at most 0.3; B -> EOS 0.95. Greedy takes A then EOS
  (0.18); the best sequence is B EOS (0.38)."""
  probs = np.full((5, 5), 1e-6)
  probs[BOS, [A, B]] = [0.6, 0.4]
  probs[A, [EOS, A, B]] = [0.3, 0.25, 0.25]
  probs[B, [EOS, A]] = [0.95, 0.05]
  probs[[EOS, PAD], PAD] = 1.0
  table = jnp.log(jnp.asarray(probs / probs.sum(1, keepdims=True), jnp.float32))
  src = jnp.zeros((3, 4), jnp.int32)
  greedy = decoding.greedy(table_model(table), src, 6, BOS, EOS, PAD)
  beam = decoding.beam_search(table_model(table), src, 6, BOS, EOS, PAD, beam_size=2, alpha=0.0)
  np.testing.assert_array_equal(greedy, [[A, EOS, PAD, PAD, PAD]] * 3)
  np.testing.assert_array_equal(beam, [[B, EOS, PAD, PAD, PAD]] * 3)


def test_a_beam_of_one_is_greedy():
  table = jax.random.normal(jax.random.key(3), (5, 5)) * 2
  src = jnp.zeros((4, 3), jnp.int32)
  np.testing.assert_array_equal(
      decoding.beam_search(table_model(table), src, 7, BOS, EOS, PAD, beam_size=1),
      decoding.greedy(table_model(table), src, 7, BOS, EOS, PAD))


@pytest.mark.slow  # over 20 s: the slow run (.ci/run)
def test_bleu_of_the_references_is_100_and_evaluation_reports_it(de_en):
  config, task, data = de_en
  refs = data["test"]["references"]
  assert translation.bleu(refs, refs) == pytest.approx(100.0)
  assert translation.bleu(["x"] * len(refs), refs) < 1.0
  model = train.build_model(task, config, data, "int4")
  params = task.init_params(config, task.model(config, data), data, 0)
  metrics = train.make_evaluate(task, model)({"params": params}, config, data)
  assert set(metrics) == {"val_loss", "bleu"} and np.isfinite(metrics["val_loss"])
  plan = model.plan(*task.model_inputs(task.train_batch(config, data, 0, 0)))
  assert plan["lm_head"] is None
  int4 = [p for p, c in plan.items() if c is not None]
  assert len(int4) == 6 + 10 and sum("cross_attn" in p for p in int4) == 4, int4


@pytest.mark.slow  # over 15 s on 2 busy cores: the slow run (.ci/run)
def test_a_tfds_translation_dataset_goes_through_the_same_path(tmp_path):
  """Users with internet name a tfds translation dataset (e.g. "wmt14_translate/de-en"); a
  builder made here (nothing downloads) goes through the same tokenizer, task and decoding."""
  import tensorflow_datasets as tfds

  class Int4jaxTinyDeEn(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"de": tfds.features.Text(), "en": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 24), "validation": self._generate_examples(1, 4),
              "test": self._generate_examples(2, 3)}

    def _generate_examples(self, seed, n):
      rng = np.random.default_rng(seed)
      for i in range(n):
        words = list(rng.choice(fx.WORDS, size=3))
        yield i, {"en": " ".join(words), "de": " ".join(fx.GERMAN[w] for w in words)}

  config = get_config("translation").replace(dataset="int4jax_tiny_de_en",
                                             data_dir=str(tmp_path), **TINY)
  task = tasks.task_for(config)
  data = task.load(config)
  assert len(data["train"]["src"]) + data["train_left_out"] == 24
  assert len(data["test"]["references"]) == 3
  model = task.model(config, data)
  params = task.init_params(config, model, data, 0)
  hyps = translation.translator(config, model, data, beam_size=2)({"params": params})
  assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)


@pytest.mark.slow  # over 10 s: the slow run (.ci/run)
def test_a_sentence_decodes_the_same_alone_and_in_a_batch():
  """Each row of the model depends on its own source only, so beam search must give a sentence
  the same answer whatever shares its batch (a sentence that stops early is frozen)."""
  v = 9

  def apply(src, tgt=None, memory=None):  # next-token log-probs from (source id, previous token)
    table = jax.random.normal(jax.random.key(7), (v, v, v)) * 3
    if tgt is None:
      return src
    return table[src[:, :1], tgt]

  srcs = jnp.arange(3, 9, dtype=jnp.int32)[:, None]  # six different sentences
  beam = jax.jit(lambda s: decoding.beam_search(apply, s, 10, BOS, EOS, PAD, beam_size=3,
                                                alpha=0.6))
  together = beam(srcs)
  for i in range(len(srcs)):
    np.testing.assert_array_equal(beam(srcs[i:i + 1])[0], together[i])
  for out in (together, decoding.greedy(apply, srcs, 10, BOS, EOS, PAD)):
    for row in np.asarray(out):  # no PAD or BOS inside a hypothesis
      text = row[:list(row).index(EOS)] if EOS in row else row
      assert PAD not in text and BOS not in text, row
