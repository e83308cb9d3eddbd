"""LeNet-tiny on MNIST: the seed repository's experiment, its spectra over training, and what its subsample leaves out.

``Config`` holds the chapter's parameters; :func:`training_run` opens (and, when asked, trains) the SGD run that
the MNIST and Fiedler chapters share, keyed by its training parameters only. ``run(config)`` computes the chapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .. import config as checks
from ..config import ChapterConfig
from ..runs import MnistLenetRun, mnist_lenet_run

__all__ = ["Config", "training_run"]

_LENET_PARAMETERS = 5994


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The MNIST chapter's parameters (defaults: the seed repository's).

    Attributes:
        data_dir: MNIST root holding ``MNIST/raw/*.gz``; empty means ``$MNIST_DATA_DIR``, else ``data/mnist``.
        seed: initialisation, data order and training subset; the Hessian subsample uses ``seed + 1``.
        epochs, batch_size, lr, momentum: SGD.
        n_train, n_test: images used (a seeded subset of the training set; the first test images); 0 means all.
        hessian_samples: the seed's Hessian subsample.
        compare_samples: a larger subsample, computed at a few checkpoints for comparison.
        n_compare_checkpoints: how many checkpoints (spread over training) get the larger subsample.
        n_vectors: top and bottom eigenvectors kept per checkpoint.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # seconds of work, written to a fresh temporary directory so that CI always recomputes it
        "smoke": dict(n_train=640, n_test=1000, epochs=2, hessian_samples=10, compare_samples=20,
                      n_compare_checkpoints=2, n_vectors=5, results_dir=""),
    }

    data_dir: str = ""
    seed: int = 42
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    n_train: int = 0
    n_test: int = 0
    hessian_samples: int = 50
    compare_samples: int = 500
    n_compare_checkpoints: int = 3
    n_vectors: int = 50

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "hessian_samples", "compare_samples", "n_compare_checkpoints",
                     "n_vectors"):
            checks.positive_int(name, getattr(self, name))
        for name in ("seed", "n_train", "n_test"):
            checks.non_negative_int(name, getattr(self, name))
        checks.positive_float("lr", self.lr)
        checks.fraction("momentum", self.momentum, closed=True)
        if self.momentum == 1:
            raise checks.ConfigError(f"momentum={self.momentum!r} must be < 1")
        if 2 * self.n_vectors > _LENET_PARAMETERS:
            raise checks.ConfigError(f"n_vectors={self.n_vectors} must be <= {_LENET_PARAMETERS // 2}")
        if not isinstance(self.data_dir, str):
            raise checks.ConfigError(f"data_dir={self.data_dir!r} must be a path (str)")


def training_run(config: Config) -> MnistLenetRun:
    """The SGD run of ``config`` (data loaded, store opened; call ``.train_or_resume()`` to train or read it)."""
    return mnist_lenet_run(config.results_dir, config.data_dir or None, seed=config.seed, epochs=config.epochs,
                           batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                           n_train=config.n_train, n_test=config.n_test)
