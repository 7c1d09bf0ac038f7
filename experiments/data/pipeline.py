"""Examples -> token ids -> batches, the same for every variant of a run.

Text comes through tensorflow-datasets' random-access `as_data_source()` (array_record, no
TensorFlow): the offline corpora from `tfds_corpora`, or any tfds dataset by name. Sentences are
tokenized once (fixed length `max_len`, truncated, padded with 0). grain batches them: each
epoch is a seeded shuffle, and batch i of epoch e is random-access, so a resumed run continues
with exactly the batches it would have seen.
"""

from typing import Dict, List, Tuple

import grain
import numpy as np

from experiments.data import corpora, tfds_corpora


def load_split(dataset: str, split: str, data_dir: str, text_key: str = "sentence",
               label_key: str = "label") -> Tuple[List[str], np.ndarray]:
  """(texts, int labels) of one split."""
  if dataset in corpora.CORPORA:
    source = tfds_corpora.build(dataset, data_dir).as_data_source()[split]
  else:  # a standard tfds name, e.g. "glue/sst2" (prepared as array_record on first use)
    import tensorflow_datasets as tfds
    b = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
    b.download_and_prepare()
    source = b.as_data_source()[split]
  texts, labels = [], []
  for i in range(len(source)):
    record = source[i]
    text = record[text_key]
    texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    labels.append(int(record[label_key]))
  return texts, np.asarray(labels, np.int32)


def tokenize(tokenizer, texts: List[str], max_len: int) -> Dict[str, np.ndarray]:
  """{'input_ids': (N, max_len) int32, 'mask': (N, max_len) bool}; [CLS] ... [SEP], truncated."""
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_len)
  ids = np.zeros((len(texts), max_len), np.int32)
  for i, enc in enumerate(tokenizer.encode_batch(texts)):
    ids[i, :len(enc.ids)] = enc.ids
  return {"input_ids": ids, "mask": ids != 0}


def as_records(arrays: Dict[str, np.ndarray]) -> List[Dict[str, np.ndarray]]:
  n = len(next(iter(arrays.values())))
  return [{k: v[i] for k, v in arrays.items()} for i in range(n)]


def epoch_batches(records, batch_size: int, seed: int, epoch: int) -> grain.MapDataset:
  """The batches of one epoch: a shuffle seeded by (seed, epoch); the last partial batch is
  dropped so every step has the same shape."""
  return (grain.MapDataset.source(records).shuffle(seed=seed * 100_003 + epoch)
          .batch(batch_size, drop_remainder=True))


def eval_batches(arrays: Dict[str, np.ndarray], batch_size: int):
  """In-order batches covering every example once; the last is padded, with 'valid' False on
  the padding."""
  n = len(arrays["labels"])
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    batch = {k: v[start:stop] for k, v in arrays.items()}
    pad = batch_size - (stop - start)
    batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in
             batch.items()}
    batch["valid"] = np.arange(batch_size) < stop - start
    yield batch
