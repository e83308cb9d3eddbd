"""The numerical core, checked: the decisive checks of ``hessian_core`` repeated at full size, on LeNet-tiny trained
briefly on real MNIST.

Each check sets a routine of the core against an independent reference:

* ``full_hessian`` (Gauss-Newton decomposition plus exact rows) against rows recomputed by plain double backward
  (:func:`row_error`);
* ``eigendecomposition`` against ``numpy.linalg.eigvalsh``, and ``lanczos`` (both ends) against the same dense
  eigenvalues (:func:`relative_error`);
* ``eigen_linkage`` and ``cluster_counts`` against scipy's single linkage and ``fcluster``
  (:func:`dendrogram_matches_scipy`).

Nothing is cached: a check that read its answer from a store would check nothing. ``results_dir`` is unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.cluster import hierarchy
from torch import Tensor, nn

from hessian_core import (cluster_counts, eigen_linkage, eigendecomposition, full_hessian, hessian_operator,
                          lanczos, spectral_gaps, spectrum_stats)

from .. import config as checks
from ..config import ChapterConfig
from ..data import load_mnist
from ..measure import timed
from ..models import lenet_tiny, n_parameters
from ..progress import show_progress
from ..runs import hessian_subsample

__all__ = ["Config", "Result", "run", "batch_indices", "train_briefly", "row_error", "relative_error",
           "dendrogram_matches_scipy", "plot_spectrum", "plot_dendrogram", "LR", "MOMENTUM", "BATCH_SIZE",
           "EPS"]

# The MNIST chapter's SGD recipe (its Config defaults; a test keeps them equal).
LR, MOMENTUM, BATCH_SIZE = 0.01, 0.9, 128
# Resolutions of the n(eps) figure; every sixth is compared with scipy's fcluster.
EPS = np.logspace(-8, 2, 60)
_LENET_PARAMETERS = 5994
_MNIST_TRAIN_IMAGES = 60000


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The core-checks page's parameters.

    Attributes:
        n_images: images in the Hessian's batch (the MNIST chapter's default subsample), a seeded subsample of the
            training set (seed ``seed + 1``).
        train_steps: SGD steps (the MNIST chapter's recipe) before the checks.
        lanczos_k: eigenvalues per spectrum end for the Lanczos check.
        n_check_rows: Hessian rows recomputed by plain double backward (seed ``seed + 2``).
        data_dir: MNIST root holding ``MNIST/raw/*.gz``; empty means ``$MNIST_DATA_DIR``, else ``data/mnist``.
        seed: initialisation, data order and Lanczos start.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        "smoke": dict(n_images=10, train_steps=20, lanczos_k=5, n_check_rows=16),
    }

    n_images: int = 50
    train_steps: int = 300
    lanczos_k: int = 20
    n_check_rows: int = 64
    data_dir: str = ""
    seed: int = 0

    def validate(self) -> None:
        for name in ("n_images", "train_steps", "lanczos_k", "n_check_rows"):
            checks.positive_int(name, getattr(self, name))
        checks.non_negative_int("seed", self.seed)
        if self.n_images > _MNIST_TRAIN_IMAGES:
            raise checks.ConfigError(f"n_images={self.n_images} exceeds the {_MNIST_TRAIN_IMAGES} training images")
        if 2 * self.lanczos_k > _LENET_PARAMETERS:
            raise checks.ConfigError(f"lanczos_k={self.lanczos_k} must be <= {_LENET_PARAMETERS // 2} (half of "
                                     "LeNet-tiny's parameters)")
        if self.n_check_rows > _LENET_PARAMETERS:
            raise checks.ConfigError(f"n_check_rows={self.n_check_rows} must be <= {_LENET_PARAMETERS} "
                                     "(LeNet-tiny's parameters)")
        if not isinstance(self.data_dir, str):
            raise checks.ConfigError(f"data_dir={self.data_dir!r} must be a path (str)")


def batch_indices(order: Tensor, step: int, batch_size: int) -> Tensor:
    """The indices of SGD step ``step``: ``batch_size`` consecutive entries of ``order`` from
    ``(step * batch_size) mod len(order)``, cut short at the end of ``order`` (no wrap-around)."""
    return order[(step * batch_size) % len(order):][:batch_size]


def train_briefly(model: nn.Module, images: Tensor, labels: Tensor, *, steps: int, seed: int,
                  progress: bool | None = None) -> nn.Module:
    """``steps`` SGD steps (:data:`LR`, :data:`MOMENTUM`, :data:`BATCH_SIZE`) on the cross-entropy, in place.

    The data order is one permutation seeded by ``seed``, walked through by :func:`batch_indices`.
    """
    from tqdm.std import tqdm

    optimiser = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    for step in tqdm(range(steps), desc="training", disable=not show_progress(progress), leave=False):
        idx = batch_indices(order, step, BATCH_SIZE)
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
        optimiser.step()
    return model


def row_error(H: np.ndarray, operator: Any, rows: np.ndarray) -> float:
    """``max |H[rows] - exact rows| / max |exact rows|``, the exact rows being ``operator`` applied to the unit
    vectors of ``rows`` (for a Hessian operator: plain double backward through the loss).

    Args:
        H: ``ndarray[P, P]``.
        operator: has ``matmat(X: ndarray[P, m]) -> ndarray[P, m]`` (symmetric: columns are rows).
        rows: ``ndarray[m]`` distinct row indices.
    """
    H, rows = np.asarray(H), np.asarray(rows)
    unit = np.zeros((H.shape[0], len(rows)))
    unit[rows, np.arange(len(rows))] = 1
    exact = np.asarray(operator.matmat(unit)).T
    return float(np.abs(H[rows] - exact).max() / np.abs(exact).max())


def relative_error(values: np.ndarray, reference: np.ndarray, scale: np.ndarray) -> float:
    """``max |values - reference| / max |scale|``."""
    return float(np.abs(np.asarray(values) - np.asarray(reference)).max() / np.abs(np.asarray(scale)).max())


def dendrogram_matches_scipy(eigenvalues: np.ndarray, eps: np.ndarray) -> tuple[bool, bool]:
    """Whether :func:`hessian_core.eigen_linkage` has the merge heights of scipy's single linkage of the
    eigenvalues, and whether :func:`hessian_core.cluster_counts` equals the number of scipy ``fcluster``
    (``"distance"`` criterion) clusters at every ``eps``."""
    lam = np.asarray(eigenvalues, dtype=float)
    reference = hierarchy.linkage(lam[:, None], method="single")
    heights_equal = bool(np.array_equal(np.sort(eigen_linkage(lam)[:, 2]), np.sort(reference[:, 2])))
    counts_equal = all(
        cluster_counts(lam, np.array([e]))[0] == len(np.unique(hierarchy.fcluster(reference, e, "distance")))
        for e in np.asarray(eps, dtype=float))
    return heights_equal, bool(counts_equal)


@dataclass(frozen=True)
class Result:
    """The checks' outcome.

    Attributes:
        config: the configuration that produced it.
        n_parameters: ``P``.
        row_error: structured Hessian rows against double backward, relative to the largest exact entry.
        dense_error: ``eigendecomposition`` against ``numpy.linalg.eigvalsh``, relative to the largest ``|λ|``.
        lanczos_error: ``lanczos`` (``lanczos_k`` at each end) against the dense eigenvalues, same scale.
        eigenvalues: ``ndarray[P]`` ascending, from ``eigendecomposition``.
        stats: :func:`hessian_core.spectrum_stats` of ``eigenvalues``.
        linkage: :func:`hessian_core.eigen_linkage` of ``eigenvalues``.
        heights_equal, counts_equal: the dendrogram agrees with scipy (:func:`dendrogram_matches_scipy`).
        gaps: ``ndarray[k, 3]`` the largest spectral gaps ``(gap, lower, upper)``.
        timings: wall seconds of ``train``, ``hessian`` (forming it), ``eig`` (``eigendecomposition``),
            ``reference`` (``eigvalsh``), ``rows``, ``lanczos``, ``dendrogram``.
    """

    config: Config
    n_parameters: int
    row_error: float
    dense_error: float
    lanczos_error: float
    eigenvalues: np.ndarray
    stats: dict[str, float]
    linkage: np.ndarray
    heights_equal: bool
    counts_equal: bool
    gaps: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def glued(self) -> dict[str, Any]:
        """Every number the page's prose glues, by glue name."""
        c = self.config
        return dict(P=self.n_parameters, n_images=c.n_images, seconds_hessian=self.timings["hessian"],
                    row_error=self.row_error, n_check_rows=c.n_check_rows, seconds_eig=self.timings["eig"],
                    dense_error=self.dense_error, lanczos_error=self.lanczos_error, lanczos_k=c.lanczos_k,
                    lambda_max=self.stats["lambda_max"], lambda_min=self.stats["lambda_min"],
                    n_negative=self.stats["n_negative"], n_negative_tol=self.stats["n_negative_tol"],
                    n_near_zero=self.stats["n_near_zero"], zero_tol=self.stats["zero_tol"],
                    largest_gap=self.gaps[0, 0],
                    largest_gap_upper=self.gaps[0, 2])


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Train LeNet-tiny briefly, form its exact Hessian on ``n_images`` images and run every check."""
    show = show_progress(progress)
    images, labels = load_mnist("train", config.data_dir or None, download=True)  # downloads only what is missing
    timings: dict[str, float] = {}
    with timed() as t:
        model = train_briefly(lenet_tiny(seed=config.seed), images, labels, steps=config.train_steps,
                              seed=config.seed, progress=show)
    timings["train"] = t.seconds
    batch = hessian_subsample(images, labels, config.n_images, config.seed + 1)
    loss_fn = nn.CrossEntropyLoss()
    P = n_parameters(model)

    with timed() as t:
        H = full_hessian(model, loss_fn, batch, progress=show)
    timings["hessian"] = t.seconds
    op = hessian_operator(model, loss_fn, batch)
    with timed() as t:
        rows = torch.randperm(P, generator=torch.Generator().manual_seed(config.seed + 2))[:config.n_check_rows]
        rows_error = row_error(H.numpy(), op, rows.numpy())
    timings["rows"] = t.seconds

    k = config.lanczos_k
    with timed() as t:
        spectrum = eigendecomposition(H, n_top=k, n_bottom=k, progress=show)
    timings["eig"] = t.seconds
    lam = spectrum.eigenvalues
    with timed() as t:
        reference = np.linalg.eigvalsh(H.numpy())  # the independent reference, on purpose
    timings["reference"] = t.seconds
    del H
    with timed() as t:
        ends = lanczos(op, k, which="both", tol=1e-10, seed=config.seed, progress=show)
    timings["lanczos"] = t.seconds
    wanted = np.concatenate([reference[:k], reference[-k:]])

    with timed() as t:
        linkage = eigen_linkage(lam)
        heights_equal, counts_equal = dendrogram_matches_scipy(lam, EPS[::6])
        gaps = spectral_gaps(lam, top=5)
    timings["dendrogram"] = t.seconds
    return Result(config=config, n_parameters=P, row_error=rows_error,
                  dense_error=relative_error(lam, reference, reference),
                  lanczos_error=relative_error(ends, wanted, reference), eigenvalues=np.asarray(lam),
                  stats=spectrum_stats(lam), linkage=linkage, heights_equal=heights_equal,
                  counts_equal=counts_equal, gaps=gaps, timings=timings)


def plot_spectrum(result: Result) -> Figure:
    """The signed spectrum by rank (symlog)."""
    import matplotlib.pyplot as plt

    from ..plots import plot_signed_spectrum

    fig, ax = plt.subplots(figsize=(6, 3.5))
    plot_signed_spectrum(result.eigenvalues, ax=ax)
    c = result.config
    ax.set_title(f"LeNet-tiny Hessian spectrum ({c.n_images} images, {c.train_steps} SGD steps)")
    return fig


def plot_dendrogram(result: Result) -> Figure:
    """n(ε) over :data:`EPS` and the spectral dendrogram's last 30 merges."""
    import matplotlib.pyplot as plt

    from ..plots import plot_cluster_counts, plot_truncated_dendrogram

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    plot_cluster_counts([result.eigenvalues], EPS, ax=axes[0])
    axes[0].set_title("clusters n(ε)")
    plot_truncated_dendrogram(result.linkage, top=30, ax=axes[1])
    axes[1].set_title("spectral dendrogram, last 30 merges")
    return fig


# The class of every glued value, for ``book/build.py --verify`` (book/verify.py): the checks' errors are the
# page's conclusions (each at rounding level); the spectrum of the briefly trained network is computed, with no
# spread measured for it (bitwise on the record's numerical path, shown but not judged on another).
def _glue_classes() -> dict[str, Any]:
    from ..glue import conclusion, exact, numerical

    return {
        **{name: exact() for name in ("P", "n_images", "n_check_rows", "lanczos_k")},
        "*_error": conclusion(atol=1e-9, why="a check's error at rounding level"),
        "*": numerical(rtol=1e-6),
    }


GLUE_CLASSES = _glue_classes()
