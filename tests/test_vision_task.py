"""The ViT task on data the tests make: the Debian package read without installing it, IDX
parsing, augmentation that only shifts and mirrors, patches in row-major order, seeded random-
access batches, and an evaluation that covers the test split once."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tasks, train
from experiments.configs import get_config
from experiments.data import images
from experiments.models import vit
from experiments.tasks import vision
from tests import experiment_fixtures as fx

TINY = dict(patch_size=7, num_layers=1, hidden_size=32, num_heads=2, batch_size=8,
            eval_batch_size=6, warmup_steps=1)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
  data_dir = fx.build_fashion_mnist(str(tmp_path_factory.mktemp("vision")))
  config = get_config("fashion_mnist").replace(data_dir=data_dir, **TINY)
  task = tasks.task_for(config)
  return config, task, task.load(config)


def test_idx_files_parse_and_bad_ones_are_refused():
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  np.testing.assert_array_equal(images.parse_idx(fx.idx_bytes(array)), array)
  with pytest.raises(ValueError, match="magic"):
    images.parse_idx(b"\x00\x00\x0d\x01" + fx.idx_bytes(array)[4:])
  with pytest.raises(ValueError, match="header says"):
    images.parse_idx(fx.idx_bytes(array)[:-1])


def test_the_deb_is_read_without_installing_and_then_cached(fashion, monkeypatch):
  config, _, data = fashion
  x, y = fx.tiny_images(40, 0)
  np.testing.assert_array_equal(data["train"]["images"][..., 0], x)
  np.testing.assert_array_equal(data["train"]["labels"], y)
  assert data["train"]["images"].shape == (40, 28, 28, 1) and len(data["eval"]["labels"]) == 20
  # the second load reads the cache: no .deb, no apt-get
  monkeypatch.setattr(images, "fetch_deb", lambda *a: pytest.fail("fetched again"))
  again = images.load(config.dataset, config.data_dir)
  np.testing.assert_array_equal(again["eval"]["images"], data["eval"]["images"])
  with pytest.raises(ValueError, match="ar archive"):
    list(images.ar_members(b"PK\x03\x04 not a deb"))


def test_augmentation_only_shifts_and_mirrors():
  rng = np.random.default_rng(0)
  x = rng.integers(1, 255, size=(16, 9, 9, 1)).astype(np.uint8)
  np.testing.assert_array_equal(vision.augment(x, 0, False, rng), x)
  out = vision.augment(x, 2, True, np.random.default_rng(1))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  shifted = 0
  for i in range(len(x)):
    windows = [padded[i, dy:dy + 9, dx:dx + 9] for dy in range(5) for dx in range(5)]
    match = [w for w in windows if np.array_equal(out[i], w) or np.array_equal(out[i], w[:, ::-1])]
    assert match, f"image {i} is not a shifted (and maybe mirrored) crop"
    shifted += not np.array_equal(out[i], x[i])
  assert shifted > len(x) // 2  # most images moved
  flips = vision.augment(x, 0, True, np.random.default_rng(2))
  mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flips, x)]
  assert 0 < sum(mirrored) < len(x)


def test_patches_are_row_major_and_flattened_row_column_channel():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  p = np.asarray(vit.patchify(jnp.asarray(x), 2))
  assert p.shape == (2, 6, 12)
  for b in range(2):
    for r in range(2):
      for c in range(3):
        np.testing.assert_array_equal(p[b, 3 * r + c], x[b, 2 * r:2 * r + 2, 2 * c:2 * c + 2].ravel())


def test_the_vit_refuses_images_of_another_shape():
  model = vit.ViT(vit.ViTConfig(image_size=28, channels=1, patch_size=7, num_classes=10,
                                num_layers=1, hidden_size=32, num_heads=2))
  with pytest.raises(ValueError, match=r"expected images \(B, 28, 28, 1\)"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="multiple of patch_size"):
    vit.ViTConfig(image_size=28, channels=1, patch_size=5, num_classes=10, num_layers=1,
                  hidden_size=32, num_heads=2)


def test_training_batches_are_seeded_random_access_and_normalized(fashion):
  config, task, data = fashion
  first = task.train_batch(config, data, 0, 3)
  task.train_batch(config, data, 1, 0)  # another seed in between
  np.testing.assert_array_equal(task.train_batch(config, data, 0, 3)["images"], first["images"])
  assert not np.array_equal(task.train_batch(config, data, 1, 3)["images"], first["images"])
  per_epoch = task.steps_per_epoch(config, data)
  epoch = np.concatenate([task.train_batch(config, data, 0, s)["labels"]
                          for s in range(per_epoch)])
  assert len(epoch) == per_epoch * config.batch_size  # each image at most once per epoch
  np.testing.assert_allclose(data["mean"], (data["train"]["images"] / 255.0).mean(), rtol=1e-5)
  assert first["images"].dtype == np.float32 and first["images"].shape == (8, 28, 28, 1)


@pytest.mark.slow  # over 15 s on 2 busy cores: the slow run (.ci/run)
def test_evaluation_covers_the_test_split_once(fashion):
  config, task, data = fashion
  batches = list(task.eval_batches(config, data))
  assert [len(b["labels"]) for b in batches] == [6] * 4  # 20 images, the last batch padded
  assert sum(b["valid"].sum() for b in batches) == 20
  model = train.build_model(task, config, data, "int4")
  params = task.init_params(config, task.model(config, data), data, 0)
  metrics = train.make_evaluate(task, model)({"params": params}, config, data)
  assert 0.0 <= metrics["accuracy"] <= 1.0
  plan = model.plan(batches[0]["images"])
  assert plan["patch_embed"] is None and plan["head"] is None
  assert sorted(p for p, c in plan.items() if c is not None) == sorted(
      f"block_0/{p}" for p in ("attn/query", "attn/key", "attn/value", "attn/output", "mlp/fc",
                               "mlp/proj"))


@pytest.mark.slow  # over 15 s on 2 busy cores: the slow run (.ci/run)
def test_a_tfds_image_dataset_goes_through_the_same_path(tmp_path):
  """Users with internet name a tfds image dataset (e.g. "cifar10"); a builder made here (nothing
  downloads) goes through the same loading, normalization and model as the Debian package."""
  import tensorflow_datasets as tfds

  class Int4jaxTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(28, 28, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 16), "test": self._generate_examples(1, 6)}

    def _generate_examples(self, seed, n):
      x, y = fx.tiny_images(n, seed)
      for i in range(n):
        yield i, {"image": np.repeat(x[i][..., None], 3, axis=-1), "label": int(y[i])}

  config = get_config("fashion_mnist").replace(dataset="int4jax_tiny_images",
                                               data_dir=str(tmp_path), **TINY)
  task = tasks.task_for(config)
  data = task.load(config)
  assert data["train"]["images"].shape == (16, 28, 28, 3) and data["mean"].shape == (3,)
  batch = task.train_batch(config, data, 0, 0)
  params = task.init_params(config, task.model(config, data), data, 0)
  logits = task.model(config, data).apply({"params": params}, batch["images"])
  assert logits.shape == (8, 10)
