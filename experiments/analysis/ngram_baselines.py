"""How much of the character-level LM's held-out loss byte n-gram statistics already explain: a
unigram, bigram and trigram model of the cpu-char token stream (bytes), counted on the train
split, evaluated on the held-out works in nats per token.

  python -m experiments.analysis.ngram_baselines [--out experiments/results]

Each order interpolates its maximum-likelihood estimate with the lower orders' (Jelinek-Mercer),
down to a uniform distribution over the vocabulary; the interpolation weights are chosen on
the last 10% of the train stream (never on the held-out works). A transformer whose validation
loss sits near the bigram line has learned little beyond bigrams; INT4's gap is measured below
that (experiments/configs/shakespeare.py). Writes shakespeare_char_ngrams.{json,md}.
"""

import argparse
import datetime
import itertools
import json
import os
from typing import Dict, Sequence

import numpy as np

from experiments.configs import get_config
from experiments.data import corpora, shakespeare

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def _codes(stream: np.ndarray, order: int, vocab: int) -> np.ndarray:
  """The code of each `order`-gram (its tokens as base-`vocab` digits), one per position."""
  n = len(stream) - order + 1
  code = np.zeros(n, np.int64)
  for i in range(order):
    code = code * vocab + stream[i:i + n]
  return code


def _probabilities(train: np.ndarray, test: np.ndarray, order: int, vocab: int) -> np.ndarray:
  """Maximum-likelihood P(token | the order - 1 before it) for each test position from index
  order - 1 on (0 where the context was never seen), counted on `train`."""
  def counts(stream, k):
    keys, n = np.unique(_codes(stream, k, vocab), return_counts=True)
    return keys, n

  def lookup(keys, n, query):
    at = np.clip(np.searchsorted(keys, query), 0, len(keys) - 1)
    return np.where(keys[at] == query, n[at], 0)

  grams, n_grams = counts(train, order)
  query = _codes(test, order, vocab)
  if order == 1:
    return lookup(grams, n_grams, query) / len(train)
  contexts, n_contexts = counts(train[:-1], order - 1)
  numer = lookup(grams, n_grams, query)
  denom = lookup(contexts, n_contexts, query // vocab)
  return np.where(denom > 0, numer / np.maximum(denom, 1), 0.0)


def _mixture(ml: Sequence[np.ndarray], weights: Sequence[float], vocab: int) -> np.ndarray:
  """P = w_n ML_n + (1 - w_n)(w_{n-1} ML_{n-1} + ...), uniform at the bottom; the arrays
  are aligned on their last positions."""
  n = len(ml[-1])
  p = np.full(n, 1.0 / vocab)
  for estimate, w in zip(ml, weights):
    p = w * estimate[-n:] + (1 - w) * p
  return p


def nats_per_token(train: np.ndarray, valid: np.ndarray, order: int, vocab: int) -> Dict:
  """{nats, weights}: the held-out loss of the interpolated order-n model, weights chosen on the
  last 10% of train (counted on the first 90%)."""
  cut = int(0.9 * len(train))
  fit, dev = train[:cut], train[cut:]
  dev_ml = [_probabilities(fit, dev, k, vocab) for k in range(1, order + 1)]
  best = min(itertools.product(WEIGHTS, repeat=order),
             key=lambda w: -np.mean(np.log(_mixture(dev_ml, w, vocab))))
  ml = [_probabilities(train, valid, k, vocab) for k in range(1, order + 1)]
  return {"nats": round(float(-np.mean(np.log(_mixture(ml, best, vocab)))), 4),
          "weights": list(best)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  config = get_config("shakespeare", "cpu-char")
  _, ids = shakespeare.prepare(config.dataset, config.vocab_size,
                               args.data_dir or corpora.default_cache_dir())
  train, valid = ids["train"].astype(np.int64), ids["validation"].astype(np.int64)
  names = {1: "unigram", 2: "bigram", 3: "trigram"}
  result = {"task": config.task, "tokens": {"train": len(train), "validation": len(valid)},
            "date": datetime.date.today().isoformat(),
            "models": {names[k]: nats_per_token(train, valid, k, config.vocab_size)
                       for k in names}}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "shakespeare_char_ngrams.json"), "w") as f:
    json.dump(result, f, indent=1)
  lines = ["# Byte n-gram baselines on the cpu-char held-out works", "",
           f"Counted on the train split ({len(train)} tokens), evaluated on the held-out works "
           f"({len(valid)} tokens); `python -m experiments.analysis.ngram_baselines`, "
           f"{result['date']}.", "", "| model | nats/token | interpolation weights |",
           "|---|---:|---|"]
  lines += [f"| {name} | {m['nats']:.4f} | {m['weights']} |" for name, m in
            result["models"].items()]
  with open(os.path.join(args.out, "shakespeare_char_ngrams.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
