"""Experiment configs: one module per experiment, each with `get_config(size)`; SIZES lists the
sizes it has ("cpu" runs on 2 cores, "gpu" on one GPU)."""

import importlib

TASKS = ("polarity", "uncertainty", "shakespeare", "fashion_mnist", "translation")


def _module(task: str):
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
  return importlib.import_module(f"experiments.configs.{task}")


def sizes(task: str):
  return _module(task).SIZES


def get_config(task: str, size: str = "cpu"):
  module = _module(task)
  if size not in module.SIZES:
    raise ValueError(f"{task} has sizes {module.SIZES}, not {size!r}")
  return module.get_config(size)
