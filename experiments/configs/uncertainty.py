"""INT4 fine-tuning of MiniLM-L6 on CoNLL-2010 uncertainty detection (3,000 sentences).

  python -m experiments.main --task uncertainty --size cpu
  python -m experiments.main --task uncertainty --size gpu

Goal (issue 5): int4 within 1.0 accuracy point of fp32; int4-no-hadamard visibly worse.
Results: experiments/results/bert_uncertainty.{json,md,png}.
"""

from experiments.configs.base import ExperimentConfig


def get_config(size: str = "cpu") -> ExperimentConfig:
  return ExperimentConfig(task="bert_uncertainty", dataset="uncertainty").sized(size)
