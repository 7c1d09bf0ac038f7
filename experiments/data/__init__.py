"""Datasets for the experiments: offline corpora from registry packages, built as tfds datasets."""
