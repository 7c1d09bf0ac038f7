"""Experiment configs: one module per task, each with `get_config(size)` for size "cpu" or "gpu"."""

import importlib

TASKS = ("polarity", "uncertainty")


def get_config(task: str, size: str = "cpu"):
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
  return importlib.import_module(f"experiments.configs.{task}").get_config(size)
