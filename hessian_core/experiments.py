"""Set-ups shared by several chapters: the MNIST LeNet-tiny run (its data, checkpoints and parameter-keyed store).

The MNIST chapter trains the run and computes its spectra; the Fiedler chapter reads the same checkpoints. Both
build the run here, so the same parameters always name the same results directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .data import load_mnist
from .models import lenet_tiny
from .results import ResultStore
from .training import accuracy, mnist_checkpoint_steps, train_sgd_with_checkpoints

__all__ = ["MnistLenetRun", "mnist_lenet_run", "hessian_subsample"]


@dataclass
class MnistLenetRun:
    """One SGD run of LeNet-tiny on MNIST.

    Attributes:
        store: the run's parameter-keyed results (checkpoints ``checkpoint_{step:07d}``, and whatever chapters add).
        train, test: ``(images Tensor[N, 1, 28, 28], labels LongTensor[N])``.
        checkpoints: the seed's checkpoint steps for this run.
        params: the hyper-parameters (``seed, epochs, batch_size, lr, momentum``).
    """

    store: ResultStore
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    checkpoints: list[int]
    params: dict

    def train_or_resume(self, *, progress: bool = True) -> list[dict]:
        """Train (or resume, or just read) the run; returns the per-checkpoint records with train/test loss and
        accuracy (see :func:`hessian_core.train_sgd_with_checkpoints`)."""
        train_x, train_y = self.train
        test_x, test_y = self.test

        def evaluate(step: int, model: torch.nn.Module) -> dict:
            train_loss, train_acc = accuracy(model, train_x, train_y)
            test_loss, test_acc = accuracy(model, test_x, test_y)
            return dict(train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc)

        p = self.params
        return train_sgd_with_checkpoints(
            lenet_tiny(seed=p["seed"]), train_x, train_y, store=self.store, checkpoint_steps=self.checkpoints,
            lr=p["lr"], momentum=p["momentum"], batch_size=p["batch_size"], epochs=p["epochs"], seed=p["seed"],
            on_checkpoint=evaluate, progress=progress)

    def model_at(self, step: int) -> torch.nn.Module:
        """LeNet-tiny with the parameters saved at checkpoint ``step`` (raises if it was never saved)."""
        model = lenet_tiny()
        model.load_state_dict(self.store.load(f"checkpoint_{step:07d}")["model"])
        return model


def mnist_lenet_run(results_dir: str, data_dir: str | None, *, seed: int, epochs: int, batch_size: int, lr: float,
                    momentum: float, n_train: int, n_test: int, hessian_samples: int, n_vectors: int,
                    download: bool = True) -> MnistLenetRun:
    """Load the data and open the results store of an MNIST LeNet-tiny run.

    Args:
        results_dir: results root; the run lives in ``<results_dir>/mnist_lenet/<key of the parameters>``.
        data_dir: MNIST root (see :func:`hessian_core.resolve_mnist_dir`).
        seed, epochs, batch_size, lr, momentum: SGD run.
        n_train: training images used (a seeded subset), 0 for all 60,000.
        n_test: test images used (the first ``n_test``), 0 for all 10,000.
        hessian_samples, n_vectors: the MNIST chapter's spectrum settings (part of the key: the chapter stores
            spectra beside the checkpoints).
        download: fetch MNIST if absent (with checksum checks).
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be 0 (all) or a positive integer")
    train_x, train_y = load_mnist("train", data_dir, download=download)
    test_x, test_y = load_mnist("test", data_dir)
    if n_train:
        if n_train > len(train_x):
            raise ValueError(f"n_train={n_train} exceeds the {len(train_x)} training images")
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:n_train]
        train_x, train_y = train_x[keep], train_y[keep]
    if n_test:
        test_x, test_y = test_x[:n_test], test_y[:n_test]
    steps_per_epoch = -(-len(train_x) // batch_size)
    params = dict(seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum)
    # The key's fields and values are those the MNIST chapter has always used (n_test as a count).
    key = dict(**params, n_train=n_train, n_test=len(test_x), hessian_samples=hessian_samples, n_vectors=n_vectors,
               model="lenet_tiny")
    return MnistLenetRun(store=ResultStore(results_dir, "mnist_lenet", key), train=(train_x, train_y),
                         test=(test_x, test_y), checkpoints=mnist_checkpoint_steps(steps_per_epoch, epochs),
                         params=params)


def hessian_subsample(inputs: Tensor, labels: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples of a seeded permutation (so the subsample for ``n`` contains that for ``m < n``).

    The MNIST chapters use ``seed + 1`` of the run's seed.
    """
    if not isinstance(n, int) or not 1 <= n <= len(inputs):
        raise ValueError(f"n={n!r} must be an integer in [1, {len(inputs)}]")
    idx = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))[:n]
    return inputs[idx], labels[idx]
