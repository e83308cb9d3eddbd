"""Data sets of the book: MNIST (read from checksummed idx files) and modular addition.

MNIST is read with a few lines of numpy from torchvision's layout, ``<data_dir>/MNIST/raw/*-ubyte.gz``, so
torchvision is not needed. Missing files are downloaded (with checksum verification) only when asked to.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_STD",
    "resolve_mnist_dir",
    "download_mnist",
    "load_mnist",
    "modular_addition_split",
]

# md5 of the four original gzipped idx files (the same checksums torchvision verifies).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def resolve_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The MNIST root: ``data_dir`` if given, else ``$MNIST_DATA_DIR``, else ``data/mnist`` (relative to the cwd)."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("MNIST_DATA_DIR") or "data/mnist"
    return Path(data_dir).expanduser()


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_files(raw: Path) -> list[str]:
    """Problems with the files in ``raw`` (empty when all four are present with the right checksums)."""
    problems = []
    for name, md5 in MNIST_FILES.items():
        path = raw / name
        if not path.is_file():
            problems.append(f"missing {path}")
        elif (found := _md5(path)) != md5:
            problems.append(f"corrupt {path}: md5 {found}, expected {md5}")
    return problems


def download_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Download the missing MNIST files into ``<data_dir>/MNIST/raw`` and verify their md5 checksums.

    Each file is written to a temporary name and moved into place only after its checksum matches, so an
    interrupted download never leaves a file that looks complete. Returns the ``raw`` directory.
    """
    raw = resolve_mnist_dir(data_dir) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        target = raw / name
        if target.is_file() and _md5(target) == md5:
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=60) as response:
                    shutil.copyfileobj(response, out)
                if (found := _md5(Path(tmp))) != md5:
                    raise OSError(f"md5 {found}, expected {md5}")
                os.replace(tmp, target)
                break
            except OSError as err:  # URLError is an OSError
                errors.append(f"{mirror}{name}: {err}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise RuntimeError("could not download MNIST:\n  " + "\n  ".join(errors))
    return raw


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file (big-endian header: magic, dims) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return array.reshape(shape)


def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load MNIST as tensors.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: root holding ``MNIST/raw/*-ubyte.gz`` (see :func:`resolve_mnist_dir` for the default).
        download: fetch missing files first (with checksum verification).
        normalize: scale to [0, 1] then standardise with mean 0.1307, std 0.3081.
    Returns:
        ``images: Tensor[N, 1, 28, 28]`` float32 and ``labels: LongTensor[N]``.
    Raises:
        FileNotFoundError: files missing or with wrong checksums; the message says where it looked and the
            expected md5 sums.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    root = resolve_mnist_dir(data_dir)
    raw = root / "MNIST" / "raw"
    if download:
        download_mnist(root)
    if problems := _check_files(raw):
        expected = "\n  ".join(f"{name}  md5 {md5}" for name, md5 in MNIST_FILES.items())
        raise FileNotFoundError(
            f"MNIST not usable in {raw.resolve()} (from data_dir={data_dir!r}, else $MNIST_DATA_DIR, else "
            f"data/mnist):\n  " + "\n  ".join(problems) + f"\nExpected files:\n  {expected}\n"
            "Pass download=True to fetch them, or point data_dir / MNIST_DATA_DIR at a copy."
        )
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    if normalize:
        x = (x - MNIST_MEAN) / MNIST_STD
    return x, torch.from_numpy(labels.astype(np.int64))


def modular_addition_split(
    p: int, train_fraction: float, seed: int = 0, *, with_equals: bool = True
) -> dict[str, tuple[Tensor, Tensor]]:
    """All ``p²`` pairs ``(a, b)`` labelled ``(a + b) mod p``, split into train and test by a seeded permutation.

    Args:
        p: modulus.
        train_fraction: fraction of the ``p²`` pairs used for training, in (0, 1).
        seed: permutation seed (a private ``torch.Generator``).
        with_equals: inputs are ``[a, b, p]`` token triples (for the transformer; ``p`` is the ``=`` token) when
            True, ``[a, b]`` pairs (for the MLP) when False.
    Returns:
        ``{"train": (inputs, labels), "test": (inputs, labels)}``, inputs ``LongTensor[N, 3]`` (or ``[N, 2]``),
        labels ``LongTensor[N]``. The train part has ``round(train_fraction * p²)`` pairs.
    """
    if not isinstance(p, int) or p < 2:
        raise ValueError(f"p={p!r} must be an integer >= 2")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction={train_fraction!r} must be in (0, 1)")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    columns = [a, b, torch.full_like(a, p)] if with_equals else [a, b]
    inputs, labels = torch.stack(columns, dim=1), (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = round(train_fraction * p * p)
    train, test = order[:n_train], order[n_train:]
    return {"train": (inputs[train], labels[train]), "test": (inputs[test], labels[test])}
