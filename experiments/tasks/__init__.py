"""Tasks the one training loop runs, by a config's `kind` (experiments.tasks.base.Task)."""

from experiments.tasks.base import Task
from experiments.tasks.classification import Classification, ClassificationConfig
from experiments.tasks.lm import LanguageModelling, LMConfig
from experiments.tasks.translation import Translation, TranslationConfig
from experiments.tasks.vision import ImageClassification, VisionConfig

KINDS = {"classification": Classification, "lm": LanguageModelling,
         "translation": Translation, "vision": ImageClassification}


def task_for(config) -> Task:
  """The Task that runs `config`."""
  if config.kind not in KINDS:
    raise ValueError(f"unknown task kind {config.kind!r}; choose from {sorted(KINDS)}")
  return KINDS[config.kind]()
