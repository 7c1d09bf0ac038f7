"""INT4 fine-tuning of MiniLM-L6 on CoNLL-2010 uncertainty detection (3,000 sentences).

  python -m experiments.main --task uncertainty --size cpu
  python -m experiments.main --task uncertainty --size gpu

Goal: int4 within 1.0 accuracy point of fp32; int4-no-hadamard visibly worse.
Results: experiments/results/bert_uncertainty.{json,md,png}.
"""

from experiments.tasks.classification import ClassificationConfig

SIZES = ("cpu", "gpu")


def get_config(size: str = "cpu") -> ClassificationConfig:
  return ClassificationConfig(task="bert_uncertainty", title="MiniLM-L6 fine-tuned on "
                              "uncertainty detection", dataset="uncertainty",
                              max_len={"cpu": 64, "gpu": 128}[size])
