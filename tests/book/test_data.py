"""MNIST reading (real, checksummed files from MNIST_DATA_DIR) and the modular-addition split."""

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hessian_book.data import MNIST_FILES, load_mnist, modular_addition_split, resolve_mnist_dir

needs_mnist = pytest.mark.skipif(not os.environ.get("MNIST_DATA_DIR"), reason="MNIST_DATA_DIR not set")


@needs_mnist
def test_real_mnist_shapes_labels_and_normalisation():
    x, y = load_mnist("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and set(y.tolist()) == set(range(10))
    raw, _ = load_mnist("test", normalize=False)
    assert raw.min() == 0 and raw.max() == 1
    torch.testing.assert_close(x, (raw - 0.1307) / 0.3081)
    # The first test digit of MNIST is a 7 (idx byte order and header parsing are right).
    assert y[0].item() == 7


def test_missing_data_names_the_directory_and_checksums(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist("train", tmp_path)
    message = str(err.value)
    assert str(tmp_path.resolve()) in message
    assert all(md5 in message for md5 in MNIST_FILES.values())


@needs_mnist
def test_corrupt_file_is_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(resolve_mnist_dir() / "MNIST" / "raw", raw)
    target = raw / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(target.read_bytes()))
    data[100] ^= 1  # one flipped label bit
    target.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(FileNotFoundError, match="corrupt"):
        load_mnist("test", tmp_path)


def test_resolve_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path))
    assert resolve_mnist_dir("somewhere") == Path("somewhere")
    assert resolve_mnist_dir(None) == tmp_path
    monkeypatch.delenv("MNIST_DATA_DIR")
    assert resolve_mnist_dir("") == Path("data/mnist")


def test_modular_addition_split_is_a_seeded_partition():
    split = modular_addition_split(23, 0.3, seed=5)
    (xtr, ytr), (xte, yte) = split["train"], split["test"]
    assert len(xtr) == round(0.3 * 23 * 23) and len(xtr) + len(xte) == 23 * 23
    pairs = {tuple(r[:2]) for r in torch.cat([xtr, xte]).tolist()}
    assert len(pairs) == 23 * 23  # every pair once
    assert torch.all(xtr[:, 2] == 23) and torch.equal(ytr, (xtr[:, 0] + xtr[:, 1]) % 23)
    again = modular_addition_split(23, 0.3, seed=5)["train"][0]
    other = modular_addition_split(23, 0.3, seed=6)["train"][0]
    assert torch.equal(again, xtr) and not torch.equal(other, xtr)
    mlp = modular_addition_split(23, 0.3, seed=5, with_equals=False)["train"][0]
    assert torch.equal(mlp, xtr[:, :2])
    with pytest.raises(ValueError, match="train_fraction"):
        modular_addition_split(23, 1.0)
    assert np.isclose(len(modular_addition_split(97, 0.1)["train"][0]), 941)
