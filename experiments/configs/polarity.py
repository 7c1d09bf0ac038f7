"""INT4 fine-tuning of MiniLM-L6 (pretrained BERT) on sentence polarity (Pang & Lee, 4,000).

  python -m experiments.main --task polarity --size cpu     # every variant x 3 seeds, on CPU
  python -m experiments.main --task polarity --size gpu

Goal (issue 5): int4 within 1.0 accuracy point of fp32; int4-no-hadamard visibly worse.
Results: experiments/results/bert_polarity.{json,md,png}.
"""

from experiments.configs.base import ExperimentConfig


def get_config(size: str = "cpu") -> ExperimentConfig:
  return ExperimentConfig(task="bert_polarity", dataset="polarity").sized(size)
