"""INT4 fine-tuning of MiniLM-L6 on CoNLL-2010 uncertainty detection (3,000 sentences).

  python -m experiments.main --task uncertainty --size cpu
  python -m experiments.main --task uncertainty --size gpu

Goal (issue 5): int4 within 1.0 accuracy point of fp32; int4-no-hadamard visibly worse.
Measured on CPU (3 seeds, test accuracy): fp32 76.2; int4 -1.56 (goal missed); int4-group +0.44,
int4-hq-search -0.56 and int4-no-lss -0.89 (goal met); int4-no-hadamard -8.8.
Results: experiments/results/bert_uncertainty.{json,md,png}.
"""

from experiments.configs.base import ExperimentConfig


def get_config(size: str = "cpu") -> ExperimentConfig:
  return ExperimentConfig(task="bert_uncertainty", dataset="uncertainty").sized(size)
