"""INT4 fine-tuning of MiniLM-L6 (pretrained BERT) on sentence polarity (Pang & Lee, 4,000).

  python -m experiments.main --task polarity --size cpu     # every variant x 3 seeds, on CPU
  python -m experiments.main --task polarity --size gpu

Goal: int4 within 1.0 accuracy point of fp32; int4-no-hadamard visibly worse.
Results: experiments/results/bert_polarity.{json,md,png}.
"""

from experiments.tasks.classification import ClassificationConfig

SIZES = ("cpu", "gpu")


def get_config(size: str = "cpu") -> ClassificationConfig:
  return ClassificationConfig(task="bert_polarity", title="MiniLM-L6 fine-tuned on sentence "
                              "polarity", dataset="polarity",
                              max_len={"cpu": 64, "gpu": 128}[size])
