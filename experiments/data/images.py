"""Image classification data: Fashion-MNIST from Debian's archive, or any tfds image dataset.

Fashion-MNIST (Zalando, MIT licence) comes from the Debian package `dataset-fashion-mnist`:
installed (`apt-get install dataset-fashion-mnist`, read from INSTALLED_DIR), or fetched once with
`apt-get download` into the cache and read from the .deb (an ar archive holding data.tar.xz) in
Python; nothing is installed. Its official split: 60,000 train / 10,000 test images, 28x28 grey.
Images are cached as a compressed uint8 .npz, (N, H, W, C), with int32 labels.
"""

import glob
import gzip
import io
import os
import subprocess
import tarfile
from typing import Dict, Iterator, Tuple

import numpy as np

DEB_PACKAGE = "dataset-fashion-mnist"
INSTALLED_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def parse_idx(data: bytes) -> np.ndarray:
  """An IDX array (the MNIST format): magic 0 0 <dtype 0x08 = uint8> <ndim>, big-endian int32
  dims, then the values."""
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
    raise ValueError("not an unsigned-byte IDX file (expected magic 00 00 08 <ndim>)")
  ndim = data[3]
  dims = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, offset=4))
  values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if values.size != int(np.prod(dims)):
    raise ValueError(f"IDX file holds {values.size} values, its header says {dims}")
  return values.reshape(dims)


def ar_members(data: bytes) -> Iterator[Tuple[str, bytes]]:
  """(name, contents) of each member of an ar archive (a .deb is one)."""
  if data[:8] != b"!<arch>\n":
    raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
  pos = 8
  while pos + 60 <= len(data):
    header = data[pos:pos + 60]
    name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
    yield name, data[pos + 60:pos + 60 + size]
    pos += 60 + size + (size % 2)


def idx_files_from_deb(deb_path: str) -> Dict[str, bytes]:
  """{file name: gzipped IDX bytes} of the dataset files inside the .deb."""
  with open(deb_path, "rb") as f:
    members = dict(ar_members(f.read()))
  data_tar = next((v for k, v in members.items() if k.startswith("data.tar")), None)
  if data_tar is None:
    raise ValueError(f"{deb_path} has no data.tar member")
  wanted = {name for pair in IDX_FILES.values() for name in pair}
  out = {}
  try:
    tar = tarfile.open(fileobj=io.BytesIO(data_tar))
  except tarfile.ReadError:  # a compression tarfile lacks (zstd): let dpkg-deb unpack it
    tar = tarfile.open(fileobj=io.BytesIO(subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", deb_path], check=True, capture_output=True).stdout))
  with tar:
    for member in tar.getmembers():
      if os.path.basename(member.name) in wanted:
        out[os.path.basename(member.name)] = tar.extractfile(member).read()
  missing = wanted - set(out)
  if missing:
    raise ValueError(f"{deb_path} lacks {sorted(missing)}")
  return out


def fetch_deb(package: str, cache_dir: str) -> str:
  """The path of `package`'s .deb, fetched with `apt-get download` the first time."""
  downloads = os.path.join(cache_dir, "downloads")
  found = sorted(glob.glob(os.path.join(downloads, f"{package}_*.deb")))
  if not found:
    os.makedirs(downloads, exist_ok=True)
    download = lambda: subprocess.run(["apt-get", "download", "-q", package], cwd=downloads,
                                      check=True)
    try:
      try:
        download()
      except subprocess.CalledProcessError:  # stale or missing package lists: refresh, retry
        subprocess.run(["apt-get", "update", "-q"], check=True)
        download()
    except (OSError, subprocess.CalledProcessError) as e:
      raise RuntimeError(f"could not fetch the Debian package {package} ({e}); install it "
                         f"(apt-get install {package}) or put its .deb in {downloads}") from e
    found = sorted(glob.glob(os.path.join(downloads, f"{package}_*.deb")))
  if not found:
    raise FileNotFoundError(f"apt-get download {package} left no .deb in {downloads}")
  return found[-1]


def fashion_mnist_arrays(idx_gz: Dict[str, bytes]) -> Dict[str, Dict[str, np.ndarray]]:
  out = {}
  for split, (images, labels) in IDX_FILES.items():
    x = parse_idx(gzip.decompress(idx_gz[images]))
    y = parse_idx(gzip.decompress(idx_gz[labels]))
    if x.ndim != 3 or y.shape != x.shape[:1]:
      raise ValueError(f"{split}: images {x.shape} and labels {y.shape} do not pair up")
    out[split] = {"images": x[..., None], "labels": y.astype(np.int32)}
  return out


def load_fashion_mnist(cache_dir: str) -> Dict[str, Dict[str, np.ndarray]]:
  path = os.path.join(cache_dir, "vision", "fashion_mnist.npz")
  if not os.path.exists(path):
    if all(os.path.exists(os.path.join(INSTALLED_DIR, f)) for p in IDX_FILES.values() for f in p):
      idx = {}
      for f in (f for pair in IDX_FILES.values() for f in pair):
        with open(os.path.join(INSTALLED_DIR, f), "rb") as fh:
          idx[f] = fh.read()
    else:
      idx = idx_files_from_deb(fetch_deb(DEB_PACKAGE, cache_dir))
    arrays = fashion_mnist_arrays(idx)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path + ".part.npz",
                        **{f"{s}_{k}": v for s, d in arrays.items() for k, v in d.items()})
    os.replace(path + ".part.npz", path)
  with np.load(path) as z:
    return {s: {"images": z[f"{s}_images"], "labels": z[f"{s}_labels"]} for s in IDX_FILES}


def load_tfds(dataset: str, data_dir: str, splits, image_key: str = "image",
              label_key: str = "label") -> Dict[str, Dict[str, np.ndarray]]:
  """{split: {images, labels}} of a tfds image dataset (e.g. "cifar10"; fetched by tfds)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  sources = builder.as_data_source()
  out = {}
  for split in splits:
    if split not in sources:
      raise ValueError(f"{dataset} has no split {split!r}; it has {sorted(sources)}")
    source = sources[split]
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r[image_key], np.uint8) for r in records])
    out[split] = {"images": images if images.ndim == 4 else images[..., None],
                  "labels": np.asarray([r[label_key] for r in records], np.int32)}
  return out


def load(dataset: str, data_dir: str, train_split: str = "train", eval_split: str = "test"):
  """{'train': ..., 'eval': ...} with uint8 images (N, H, W, C) and int32 labels."""
  if dataset == "fashion_mnist_deb":
    arrays = load_fashion_mnist(data_dir)
  else:
    arrays = load_tfds(dataset, data_dir, (train_split, eval_split))
  return {"train": arrays[train_split], "eval": arrays[eval_split]}
