"""LeNet-tiny on MNIST: the seed repository's experiment, its spectra over training, and what its subsample leaves out.

``Config`` holds the chapter's parameters; :func:`training_run` opens (and, when asked, trains) the SGD run that
the MNIST and Fiedler chapters share, keyed by its training parameters only; :func:`hessian_batch` is the Hessian
subsample. ``run(config)`` computes the chapter: the exact Hessian spectrum at every checkpoint (in a child store
keyed by the run and the Hessian settings, :func:`spectra_store`) and on a larger subsample at a few checkpoints
(:func:`compare_store`), returned as a :class:`Result`; the ``plot_*`` functions draw its figures.

It also measures how much the seed's 50 images decide: λ_max (Lanczos) over ``n_draws`` independent draws at a few
checkpoints and the full spectrum of ``n_dense_draws`` of them at the last (:func:`draws_store`), judged against the
seed's numbers (:data:`SEED_SOURCE`); the exact Hessian and its Gauss–Newton part on nested subsamples of
``subsample_sizes`` images at the last checkpoint (:func:`sizes_store`), with the rank bound ``N (C − 1)``; the
outliers against Papyan's ``C`` and ``C(C − 1)``; the stored eigenvectors by layer; relative gaps in the bulk.

The Hessian work is a list of independent :func:`tasks` (a checkpoint's spectrum, a group of draws, the nested
sizes, …) run through :func:`hessian_book.fanout.run_tasks` on ``config.scheduler`` (by default one single-threaded
process per core: the Hessians are assembled from many small products, which two processes use better than two
threads of one), then read back from the stores.

Default cost, counted in the chapter's own units (one 50-image Hessian, one dense 5,994-eigenvalue solve), on top of
its 25 Hessians and spectra: 90 Lanczos runs on 50 images (≈ 100 HVPs each, a fraction of a Hessian apiece);
20 more 50-image Hessians with their spectra; one 500-image Hessian and spectrum (the first checkpoint; the last
checkpoint's 500-image spectrum is one of the nested sizes); at the last checkpoint, one 2,000-image Hessian and one
Gauss–Newton part, each summed from eight 250-image chunks, and 10 spectra. The page reports the measured time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler
import torch
from torch import Tensor, nn

from hessian_core import (eigen_linkage, full_hessian, gauss_newton, hessian_operator, parameter_labels,
                          spectral_gaps, spectrum_stats, top_eigenvalue)

from .. import config as checks
from .. import plots
from ..config import ChapterConfig
from ..explorer import FIRST_AND_LAST, ExplorerRun, display_explorer, explorer_figure, explorer_glue
from ..glue import direction_word
from ..measure import HessianSpectrum, dense_spectrum, timed
from ..progress import show_progress
from ..runs import MnistLenetRun, hessian_subsample, mnist_lenet_run
from ..store import ResultStore

__all__ = ["Config", "training_run", "hessian_batch", "spectra_store", "compare_store", "SEED_REPORTED",
           "spread_indices", "n_above_largest_gap", "Plateau", "widest_plateau", "Result", "run",
           "subsample_table", "plot_summary", "plot_spectrum_evolution", "plot_dendrograms", "dendrogram_gif",
           "plot_cluster_counts", "plot_gap_barcode", "plot_conv_filters", "SEED_SOURCE", "NEAR_ZERO",
           "N_CLASSES", "near_zero_share", "central_interval", "spread_verdict", "rank_bound", "relative_gaps",
           "largest_relative_gaps", "n_outliers", "papyan_word", "layer_shares", "chunked_sum", "draws_store",
           "sizes_store", "plot_draws", "plot_sizes", "plot_gauss_newton", "plot_layer_shares", "direction"]

# The seed's reported result, quoted for comparison (everything else here is computed). Source: section 5, "What
# We Actually See", of the seed repository's published page (docs/index.html of the hessian-dendrogram
# repository), kept as text in ../shared/seeds/hessian-dendrograms-blog-page.txt.
SEED_SOURCE = ("section 5 (“What We Actually See”) of the seed repository's published page (docs/index.html of the "
               "hessian-dendrogram repository)")
NEAR_ZERO = 0.01  # the seed's "near zero": |λ| < 0.01
N_CLASSES = 10
SEED_REPORTED = dict(final_step=14070, test_acc=98.6, lambda_min=-0.56, lambda_max=52.1, frac_small=85.0, gap1=39.8,
                     n_above_gap=1, gap2=4.2)

_MNIST_TRAIN, _MNIST_TEST = 60000, 10000
_COMPARE_VECTORS = 1  # the larger subsample is compared by its eigenvalues only
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
        n_draws: independent ``hessian_samples``-image draws whose λ_max (Lanczos) is computed at each draw
            checkpoint.
        n_dense_draws: how many of those draws also get the full dense spectrum (largest gap, near-zero share,
            n(ε)) at the final checkpoint (the seed's numbers are for it); at most ``n_draws``.
        n_draw_checkpoints: checkpoints (spread over training, the last included) that get the draws.
        subsample_sizes: nested subsample sizes whose exact Hessian is computed at the final checkpoint (the
            largest also gets its Gauss–Newton part).
        scheduler: where the Hessians are computed: ``None``/``""`` local processes (one per core), ``"serial"``
            this process, or a Dask scheduler address ``tcp://host:port`` (:mod:`hessian_book.fanout`). The
            numbers do not depend on it.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # seconds of work, written to a fresh temporary directory so that CI always recomputes it
        "smoke": dict(n_train=640, n_test=1000, epochs=2, hessian_samples=10, compare_samples=20,
                      n_compare_checkpoints=2, n_vectors=5, n_draws=4, n_dense_draws=2, n_draw_checkpoints=2,
                      subsample_sizes=[10, 20], results_dir="", scheduler="serial"),
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
    n_compare_checkpoints: int = 2
    n_vectors: int = 50
    n_draws: int = 30
    n_dense_draws: int = 20
    n_draw_checkpoints: int = 3
    subsample_sizes: list = field(default_factory=lambda: [50, 200, 500, 1000, 2000])
    scheduler: str | None = None

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "hessian_samples", "compare_samples", "n_compare_checkpoints",
                     "n_vectors", "n_draws", "n_dense_draws", "n_draw_checkpoints"):
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
        if self.n_train > _MNIST_TRAIN:
            raise checks.ConfigError(f"n_train={self.n_train} exceeds the {_MNIST_TRAIN} MNIST training images")
        if self.n_test > _MNIST_TEST:
            raise checks.ConfigError(f"n_test={self.n_test} exceeds the {_MNIST_TEST} MNIST test images")
        n_images = self.n_train or _MNIST_TRAIN
        for name in ("hessian_samples", "compare_samples"):
            if getattr(self, name) > n_images:
                raise checks.ConfigError(f"{name}={getattr(self, name)} exceeds the {n_images} training images used "
                                         "(n_train)")
        if self.n_draws < 2:
            raise checks.ConfigError(f"n_draws={self.n_draws} must be >= 2 (a spread needs two draws)")
        if self.n_dense_draws > self.n_draws:
            raise checks.ConfigError(f"n_dense_draws={self.n_dense_draws} must be <= n_draws={self.n_draws}")
        checks.scheduler("scheduler", self.scheduler)
        checks.int_list("subsample_sizes", self.subsample_sizes, minimum=2)
        if sorted(set(self.subsample_sizes)) != list(self.subsample_sizes):
            raise checks.ConfigError(f"subsample_sizes={self.subsample_sizes!r} must be strictly increasing")
        if self.subsample_sizes[-1] > n_images:
            raise checks.ConfigError(f"subsample_sizes={self.subsample_sizes!r}: {self.subsample_sizes[-1]} exceeds "
                                     f"the {n_images} training images used (n_train)")


def training_run(config: Config) -> MnistLenetRun:
    """The SGD run of ``config`` (data loaded, store opened; call ``.train_or_resume()`` to train or read it)."""
    return mnist_lenet_run(config.results_dir, config.data_dir or None, seed=config.seed, epochs=config.epochs,
                           batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                           n_train=config.n_train, n_test=config.n_test)


def hessian_batch(config: Config, n: int | None = None, *, run: MnistLenetRun | None = None
                  ) -> tuple[Tensor, Tensor]:
    """The Hessian's fixed subsample: the first ``n`` (default ``config.hessian_samples``) training images of a
    permutation seeded by ``config.seed + 1``, so a larger subsample contains the smaller one.

    Args:
        run: the already opened :func:`training_run` of ``config`` (saves loading MNIST again).
    Returns:
        ``(images Tensor[n, 1, 28, 28], labels LongTensor[n])``.
    """
    n = config.hessian_samples if n is None else n
    run = training_run(config) if run is None else run
    return hessian_subsample(*run.train, n, config.seed + 1)


def spectra_store(config: Config, run: MnistLenetRun) -> ResultStore:
    """Where the chapter's per-checkpoint spectra live (``spectrum_{step:07d}``): a child store of the training
    run, keyed by the run's key and the Hessian settings, so changing ``n_vectors`` never retrains."""
    return ResultStore(config.results_dir, "mnist_lenet_spectra",
                       dict(run=run.store.key, hessian_samples=config.hessian_samples, n_vectors=config.n_vectors))


def compare_store(config: Config, run: MnistLenetRun) -> ResultStore:
    """Where the larger-subsample spectra live (``spectrum_{step:07d}``), keyed by the run and their own settings
    (one eigenvector pair each: only the eigenvalues are compared)."""
    return ResultStore(config.results_dir, "mnist_lenet_compare",
                       dict(run=run.store.key, compare_samples=config.compare_samples, n_vectors=_COMPARE_VECTORS))


_RELATIVE_WINDOW = 10  # neighbouring gaps on each side whose median is the local spacing
_GN_RANK_RTOL = 1e-10  # numerical rank: eigenvalues above this times the largest (float64 rounding ~1e-12 here)
_DRAW_SEED = 10_000  # draw i uses the permutation seeded by config.seed + _DRAW_SEED + i (independent of seed + 1)
_DRAWS_PER_TASK = 4  # dense draws per task (about a minute of work each)
_CHUNK = 250  # images per structured Hessian / Gauss-Newton chunk (bounds the per-sample Jacobian's memory)


def draws_store(config: Config, run: MnistLenetRun) -> ResultStore:
    """Where the independent-draw results live (``top_{step:07d}_{i:03d}``: λ_max by Lanczos of draw ``i``;
    ``dense_{step:07d}_{i:03d}``: its full spectrum), keyed by the run and the draw size only, so more draws or
    checkpoints reuse the ones already computed."""
    return ResultStore(config.results_dir, "mnist_lenet_draws",
                       dict(run=run.store.key, hessian_samples=config.hessian_samples, draw_seed=_DRAW_SEED))


def sizes_store(config: Config, run: MnistLenetRun) -> ResultStore:
    """Where the nested-subsample spectra of the final checkpoint live (``sizes_{step:07d}``), keyed by the run
    and the sizes."""
    return ResultStore(config.results_dir, "mnist_lenet_sizes",
                       dict(run=run.store.key, subsample_sizes=list(config.subsample_sizes), chunk=_CHUNK))


# ----------------------------------------------------------------------------------------------------------------
# Small pieces of analysis (tested in tests/book/test_chapter_mnist_lenet.py)


def near_zero_share(eigenvalues: np.ndarray, tol: float = NEAR_ZERO) -> float:
    """The share (in [0, 1]) of eigenvalues with ``|λ| < tol`` (the seed's near-zero bulk at ``tol = 0.01``)."""
    return float(np.mean(np.abs(np.asarray(eigenvalues)) < tol))


def central_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of ``values`` (the 2.5 and 97.5 % quantiles at 0.95, linear interpolation)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        raise ValueError("a spread needs at least two values")
    q = (1 - level) / 2
    return float(np.quantile(values, q)), float(np.quantile(values, 1 - q))


def spread_verdict(value: float, values: np.ndarray, *, judged: bool = True, level: float = 0.95) -> str:
    """Where ``value`` sits against the central ``level`` range of ``values``: ``"lies inside the range"``,
    ``"lies above the range"`` or ``"lies below the range"``; ``"is not judged (smoke run)"`` when ``judged`` is
    false."""
    if not judged:
        return "is not judged (smoke run)"
    low, high = central_interval(values, level)
    where = "above" if value > high else "below" if value < low else "inside"
    return f"lies {where} the range"


def rank_bound(n_samples: int, n_classes: int = N_CLASSES) -> int:
    """The Gauss–Newton part's rank bound for a softmax cross-entropy: ``N (C − 1)`` (each sample's ``Λ`` block
    ``diag(p) − p pᵀ`` has rank ``C − 1``)."""
    return n_samples * (n_classes - 1)


def relative_gaps(eigenvalues: np.ndarray, *, window: int = 10) -> np.ndarray:
    """Each gap between consecutive sorted eigenvalues divided by the local spacing around it.

    ``g_i = λ_(i+1) − λ_i``; the local spacing is the median of the other gaps ``g_j`` with ``0 < |j − i| <=
    window`` (fewer at the ends). Returns ``ndarray[n − 1]`` aligned with ``g``; ``inf`` where the local spacing is
    0 and the gap is not, ``nan`` where both are 0 (ties inside ties).
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=float))
    if len(lam) < 3 or window < 1:
        raise ValueError(f"need at least 3 eigenvalues and window >= 1 (got {len(lam)}, {window})")
    g = np.diff(lam)
    n = len(g)
    spacing = np.empty(n)
    for i in range(n):
        neighbours = np.concatenate([g[max(0, i - window):i], g[i + 1:i + 1 + window]])
        spacing[i] = np.median(neighbours)
    with np.errstate(divide="ignore", invalid="ignore"):
        return g / spacing


def largest_relative_gaps(eigenvalues: np.ndarray, *, window: int = 10, top: int = 5, tol: float = NEAR_ZERO,
                          floor: float = 0.0) -> pd.DataFrame:
    """The ``top`` largest finite relative gaps (:func:`relative_gaps`) inside the near-zero bulk: both ends with
    ``floor < |λ| < tol`` (``floor``: the rounding level, below which gaps are noise) and on the same side of 0.
    One row each with the relative gap, the gap, where it sits (lower and upper eigenvalue) and how many
    eigenvalues lie above it."""
    lam = np.sort(np.asarray(eigenvalues, dtype=float))
    rel = relative_gaps(lam, window=window)
    lo, hi = lam[:-1], lam[1:]
    inside = ((np.abs(lo) < tol) & (np.abs(hi) < tol) & (np.abs(lo) > floor) & (np.abs(hi) > floor)
              & (np.sign(lo) == np.sign(hi)) & np.isfinite(rel))
    index = np.flatnonzero(inside)
    order = index[np.argsort(-rel[index], kind="stable")][:top]
    return pd.DataFrame(dict(relative_gap=rel[order], gap=lam[order + 1] - lam[order], lower=lam[order],
                             upper=lam[order + 1], n_above=len(lam) - 1 - order))


def n_outliers(eigenvalues: np.ndarray, *, search: int = 180) -> int:
    """Outliers separated from the bulk: the number of eigenvalues above the largest *ratio* gap
    ``λ_(i+1) / λ_i`` among the ``search`` largest positive eigenvalues (default ``2 C (C − 1)``, twice Papyan's
    ``C(C − 1)`` cross-class outliers, so the rule can find either of his counts)."""
    lam = np.sort(np.asarray(eigenvalues, dtype=float))
    top = lam[lam > 0][-search:]
    if len(top) < 2:
        raise ValueError("need at least two positive eigenvalues")
    ratios = top[1:] / top[:-1]
    return int(len(top) - 1 - np.argmax(ratios))


def papyan_word(n: int, n_classes: int = N_CLASSES) -> str:
    """How an outlier count compares with Papyan's ``C`` and ``C(C − 1)``: ``"equals C"``, ``"equals C(C − 1)"``,
    or ``"is closer to C"`` / ``"is closer to C(C − 1)"`` (by ratio, i.e. on a log scale; a tie counts as C)."""
    c, cc = n_classes, n_classes * (n_classes - 1)
    if n == c:
        return "equals C"
    if n == cc:
        return "equals C(C − 1)"
    if n <= 0:
        return "is closer to C"
    return "is closer to C" if abs(np.log(n / c)) <= abs(np.log(n / cc)) else "is closer to C(C − 1)"


def direction(low: float, high: float, *, judged: bool = True, up: str, down: str, flat: str) -> str:
    """:func:`hessian_book.glue.direction_word` of an interval, or ``"is not judged (smoke run)"``."""
    if not judged:
        return "is not judged (smoke run)"
    return direction_word(low, high, up=up, down=down, flat=flat)


def layer_shares(vectors: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """``ndarray[k, n_groups]``: the share of each column's squared norm in each parameter group (rows sum to 1)."""
    V = np.asarray(vectors, dtype=float)
    out = np.zeros((V.shape[1], n_groups))
    for g in range(n_groups):
        out[:, g] = (V[labels == g] ** 2).sum(axis=0)
    return out / out.sum(axis=1, keepdims=True)


def chunked_sum(matrix_of: Any, inputs: Tensor, labels: Tensor, bounds: list[int], chunk: int,
                reduce: Any = None) -> list[Any]:
    """``reduce(M_b)`` for the matrix ``M_b`` of the *mean* loss on each prefix ``[0, b)``, ``b`` in ``bounds``
    (ascending), from one pass over chunks of at most ``chunk`` samples: ``M(prefix) = Σ_k n_k M(chunk_k) / N``
    (exact for a loss that is a mean over independent samples). ``matrix_of((x, y)) -> Tensor[P, P]``;
    ``reduce`` defaults to the numpy matrix."""
    total, done, out = None, 0, []
    for b in bounds:
        for start in range(done, b, chunk):
            stop = min(b, start + chunk)
            part = matrix_of((inputs[start:stop], labels[start:stop])) * (stop - start)
            total = part if total is None else total + part
            del part
        done = b
        mean = total / b
        out.append(mean.numpy() if reduce is None else reduce(mean))
        del mean
    return out


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` from the first to the last (rounded, duplicates dropped)."""
    if n < 1 or k < 1:
        raise ValueError(f"n={n} and k={k} must be positive")
    return [int(i) for i in np.unique(np.linspace(0, n - 1, k).round().astype(int))]


def n_above_largest_gap(eigenvalues: np.ndarray) -> int:
    """How many eigenvalues lie above the largest gap between consecutive distinct eigenvalues."""
    lam = np.asarray(eigenvalues)
    gaps = spectral_gaps(lam, top=1)
    if not len(gaps):
        raise ValueError("a constant spectrum has no gap")
    return int((lam >= gaps[0, 2]).sum())


@dataclass(frozen=True)
class Plateau:
    """The widest plateau of ``n(ε)`` with at least two clusters: ``n_clusters`` for ``ε`` in
    ``[eps_low, eps_high)``, a factor ``eps_high / eps_low`` wide."""

    n_clusters: int
    factor: float
    eps_low: float
    eps_high: float


def widest_plateau(eigenvalues: np.ndarray, *, top: int = 50) -> Plateau:
    """The widest plateau (in log ε) of the cluster count n(ε) with at least two clusters, among the ``top`` gaps.

    With the gaps ``g_1 >= g_2 >= ...`` between consecutive distinct eigenvalues, ``n(ε) = k + 1`` for ``ε`` in
    ``[g_(k+1), g_k)``; so the widest plateau with ``n >= 2`` is at the largest ratio of consecutive sorted gaps.
    """
    g = spectral_gaps(np.asarray(eigenvalues), top=top)[:, 0]
    if len(g) < 2:
        raise ValueError(f"need at least 2 gaps, the spectrum has {len(g)}")
    k = int(np.argmax(g[:-1] / g[1:]))
    return Plateau(n_clusters=k + 2, factor=float(g[k] / g[k + 1]), eps_low=float(g[k + 1]), eps_high=float(g[k]))


# ----------------------------------------------------------------------------------------------------------------
# The chapter's computation


@dataclass(frozen=True)
class Result:
    """Everything the chapter shows.

    Attributes:
        config: the configuration computed.
        curves: one row per checkpoint: ``step, train_loss, train_acc, test_loss, test_acc`` (accuracies in [0, 1]).
        eigenvalues: per checkpoint, all Hessian eigenvalues on ``hessian_samples`` images (``ndarray[P]``,
            ascending).
        stats: one row per checkpoint (index ``step``): :func:`hessian_core.spectrum_stats` of ``eigenvalues``.
        compare_steps: the checkpoints that also get the ``compare_samples``-image Hessian.
        compare_eigenvalues: ``step -> ndarray[P]`` of that Hessian.
        seed_comparison: the final checkpoint against the seed's reported numbers (at the seed's precision).
        subsample_comparison: per compared checkpoint and subsample size, statistics of the spectrum.
        conv1_filters: the trained first-layer filters ``ndarray[out, 1, k, k]``.
        spectra_dir: the directory of the spectra's store (the dendrogram GIF is written there).
        timings: wall seconds of ``train`` (optimiser steps), ``hessians``, ``eigendecompositions``,
            ``larger_subsample`` (Hessians and eigendecompositions on ``compare_samples`` images), ``draws`` (the
            independent draws) and ``sizes`` (the nested subsample sizes with their Gauss–Newton parts), as
            measured when each was computed (read back from the store on a rerun).
        draws: one row per draw checkpoint and draw: ``step, draw, lambda_max`` (Lanczos) and, for the first
            ``n_dense_draws`` draws, ``largest_gap, near_zero`` (share, %) and ``n_above_gap`` from the dense
            spectrum (NaN otherwise).
        draw_eigenvalues: ``step -> ndarray[n_dense_draws, P]`` the draws' dense spectra.
        sizes: one row per subsample size at the final checkpoint: the Hessian's near-zero share, λ_max, largest
            gap, outliers, and its Gauss–Newton part's near-zero share and numerical rank against the bound.
        size_eigenvalues, gn_eigenvalues: ``N -> ndarray[P]`` spectra of the Hessian and of its Gauss–Newton part.
        gn_relative_difference: ``||H − G||_F / ||H||_F`` at the largest size.
        top_vectors, bottom_vectors: the final checkpoint's stored eigenvectors (``ndarray[P, n_vectors]``).
        layer_labels, layer_names: :func:`hessian_core.parameter_labels` of the model (by layer).
        wall: this execution's wall seconds ``until_tasks_done`` (training and every Hessian task) and
            ``this_run`` (all of :func:`run`); small when everything was read back from the stores.
        workers: the processes (``host:pid``) that ran the Hessian tasks.
    """

    config: Config
    curves: pd.DataFrame
    eigenvalues: list[np.ndarray]
    stats: pd.DataFrame
    compare_steps: list[int]
    compare_eigenvalues: dict[int, np.ndarray]
    seed_comparison: pd.DataFrame
    subsample_comparison: pd.DataFrame
    conv1_filters: np.ndarray
    spectra_dir: Path
    timings: dict[str, float]
    draws: pd.DataFrame = field(default_factory=pd.DataFrame)
    draw_eigenvalues: dict = field(default_factory=dict)
    sizes: pd.DataFrame = field(default_factory=pd.DataFrame)
    size_eigenvalues: dict = field(default_factory=dict)
    gn_eigenvalues: dict = field(default_factory=dict)
    gn_relative_difference: float = float("nan")
    top_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    bottom_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    layer_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    layer_names: list = field(default_factory=list)
    wall: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)

    @property
    def judged(self) -> bool:
        """Whether the run renders verdicts (not at the smoke preset)."""
        return self.config.preset != "smoke"

    @property
    def steps(self) -> np.ndarray:
        """``ndarray[T]`` checkpoint steps."""
        return self.curves["step"].to_numpy()

    @property
    def picks(self) -> list[int]:
        """Indices of the three checkpoints whose dendrograms are drawn: first, a third of the way, last."""
        n = len(self.eigenvalues)
        return [0, n // 3, n - 1]

    def check_summary(self) -> str:
        """Three deterministic lines (for nbval): checkpoints, spectrum sizes, ascending and finite."""
        sorted_finite = all(np.all(np.diff(lam) >= 0) and np.isfinite(lam).all() for lam in self.eigenvalues)
        return (f"checkpoints: {len(self.eigenvalues)}, final step: {self.steps[-1]}\n"
                f"eigenvalues per checkpoint: {sorted(set(len(lam) for lam in self.eigenvalues))}\n"
                f"every spectrum ascending and finite: {sorted_finite}")

    def glued(self) -> dict[str, Any]:
        """Every number the chapter's prose glues, by glue name."""
        config, lam = self.config, self.eigenvalues[-1]
        final = spectrum_stats(lam)
        gaps = spectral_gaps(lam, top=10)
        test_acc = 100 * self.curves["test_acc"].to_numpy()[-1]
        frac_small = 100 * np.mean(np.abs(lam) < 0.01)
        plateau = widest_plateau(lam)
        index = {int(s): i for i, s in enumerate(self.steps)}
        big_step = self.compare_steps[-1]
        big = self.compare_eigenvalues[big_step]
        small = self.eigenvalues[index[big_step]]
        big_stats, small_stats = spectrum_stats(big), spectrum_stats(small)
        big_gaps, small_gaps = spectral_gaps(big, top=2), spectral_gaps(small, top=1)
        ratios = [spectrum_stats(self.eigenvalues[index[s]])["lambda_max"]
                  / spectrum_stats(self.compare_eigenvalues[s])["lambda_max"] for s in self.compare_steps]
        t = self.timings
        return dict(
            n_checkpoints=len(self.eigenvalues),
            final_step=int(self.steps[-1]),
            final_test_acc=test_acc,
            final_lambda_max=final["lambda_max"],
            final_lambda_min=final["lambda_min"],
            final_frac_small=frac_small,
            final_gap1=gaps[0, 0],
            final_gap2=gaps[1, 0],
            n_above_gap=n_above_largest_gap(lam),
            final_n_negative=final["n_negative"],
            seconds_train=t["train"],
            seconds_hessians=t["hessians"],
            seconds_eigendecompositions=t["eigendecompositions"],
            seconds_larger_subsample=t["larger_subsample"],
            seconds_total=sum(t.values()),
            seconds_per_hessian=t["hessians"] / len(self.eigenvalues),
            hessian_samples=config.hessian_samples,
            compare_samples=config.compare_samples,
            # against the seed's reported numbers
            final_n_negative_tol=final["n_negative_tol"],
            final_zero_tol=final["zero_tol"],
            final_n_below_001=int((lam < -0.01).sum()),
            final_n_above_001=int((lam > 0.01).sum()),
            final_negative_mass=100 * final["negative_mass_fraction"],
            lambda_max_vs_seed=100 * (final["lambda_max"] / SEED_REPORTED["lambda_max"] - 1),
            acc_vs_seed=test_acc - SEED_REPORTED["test_acc"],
            lambda_min_vs_seed=final["lambda_min"] - SEED_REPORTED["lambda_min"],
            frac_small_vs_seed=frac_small - SEED_REPORTED["frac_small"],
            # cluster counts
            plateau_n=plateau.n_clusters,
            plateau_factor=plateau.factor,
            plateau_lo=plateau.eps_low,
            plateau_hi=plateau.eps_high,
            # the larger subsample
            n_compare=len(self.compare_steps),
            big_lambda_max=big_stats["lambda_max"],
            big_lambda_min=big_stats["lambda_min"],
            big_gap1=big_gaps[0, 0],
            big_n_above_gap=int((big >= big_gaps[0, 2]).sum()),
            big_step=int(big_step),
            small_lambda_max=small_stats["lambda_max"],
            small_lambda_min=small_stats["lambda_min"],
            small_gap1=small_gaps[0, 0],
            big_frac_small=100 * np.mean(np.abs(big) < 0.01),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            negative_word=("are not only rounding noise" if final["n_negative_tol"] > 0
                           else "are all at the level of rounding"),
            **(self._analysis_glued() if len(self.draws) else {}),
            **explorer_glue(self.explorer_run()),
        )

    def explorer_run(self) -> ExplorerRun:
        """The run as the checkpoint explorer takes it: every checkpoint's whole spectrum on ``hessian_samples``
        images, with the train and test loss and the test error (1 − accuracy) per checkpoint."""
        c = self.curves
        steps = c["step"].to_numpy(dtype=float)
        return ExplorerRun(name=f"seed {self.config.seed}", steps=np.asarray(self.steps, dtype=float),
                           spectra=tuple(self.eigenvalues),
                           curves={"train loss": (steps, c["train_loss"].to_numpy(dtype=float)),
                                   "test loss": (steps, c["test_loss"].to_numpy(dtype=float)),
                                   "test error": (steps, 1 - c["test_acc"].to_numpy(dtype=float))})

    def draw_summary(self) -> pd.DataFrame:
        """Per draw checkpoint: the draws' median and central 95 % range of λ_max, largest gap, near-zero share
        (%) and eigenvalues above the largest gap, next to the chapter's own subsample."""
        index = {int(s): i for i, s in enumerate(self.steps)}
        rows = []
        for step, group in self.draws.groupby("step"):
            own = self.eigenvalues[index[int(step)]]
            own_values = dict(lambda_max=float(own[-1]), largest_gap=float(spectral_gaps(own, top=1)[0, 0]),
                              near_zero=100 * near_zero_share(own), n_above_gap=n_above_largest_gap(own))
            for name, values in (("λ_max", group["lambda_max"]), ("largest gap", group["largest_gap"]),
                                 ("near-zero share (%)", group["near_zero"]),
                                 ("eigenvalues above the largest gap", group["n_above_gap"])):
                values = values.dropna().to_numpy(dtype=float)
                key = {"λ_max": "lambda_max", "largest gap": "largest_gap", "near-zero share (%)": "near_zero",
                       "eigenvalues above the largest gap": "n_above_gap"}[name]
                low, high = central_interval(values) if len(values) >= 2 else (float("nan"), float("nan"))
                median = float(np.median(values)) if len(values) else float("nan")  # no dense draws here
                rows.append(dict(step=int(step), quantity=name, draws=len(values), median=median,
                                 low=low, high=high, chapter_subsample=own_values[key]))
        return pd.DataFrame(rows)

    def layer_share_table(self, k: int = 10) -> pd.DataFrame:
        """The share (%) of each of the ``k`` top eigenvectors' squared norm in each layer, and the layers' share
        of the parameters (what a random direction would have)."""
        k = min(k, self.top_vectors.shape[1])
        shares = 100 * layer_shares(self.top_vectors[:, :k], self.layer_labels, len(self.layer_names))
        lam = self.eigenvalues[-1][::-1][:k]
        table = pd.DataFrame(shares, columns=self.layer_names,
                             index=pd.Index([f"{i + 1}: λ = {v:.3g}" for i, v in enumerate(lam)],
                                            name="top eigenvector"))
        table.loc["parameters"] = 100 * np.bincount(self.layer_labels, minlength=len(self.layer_names)) / len(
            self.layer_labels)
        return table

    def relative_gap_table(self) -> pd.DataFrame:
        """The largest relative gaps inside the near-zero bulk (above rounding level) of the final checkpoint's
        Hessian on ``hessian_samples`` images and on the largest subsample size."""
        parts = []
        spectra = [(self.config.hessian_samples, self.eigenvalues[-1])]
        if self.size_eigenvalues:
            n = max(self.size_eigenvalues)
            spectra.append((n, self.size_eigenvalues[n]))
        for n, lam in spectra:
            table = largest_relative_gaps(lam, window=_RELATIVE_WINDOW, floor=spectrum_stats(lam)["zero_tol"])
            parts.append(table.assign(images=n))
        return pd.concat(parts, ignore_index=True)[["images", "relative_gap", "gap", "lower", "upper", "n_above"]]

    def _analysis_glued(self) -> dict[str, Any]:
        """The glued numbers and words of the draws, the subsample sizes and the Gauss–Newton comparison."""
        judged = self.judged
        final = int(self.draws["step"].max())
        at = self.draws[self.draws["step"] == final]
        lmax = at["lambda_max"].to_numpy(dtype=float)
        gaps = at["largest_gap"].dropna().to_numpy(dtype=float)
        zeros = at["near_zero"].dropna().to_numpy(dtype=float)
        lmax_lo, lmax_hi = central_interval(lmax)
        dense_ok = len(gaps) >= 2
        gap_lo, gap_hi = central_interval(gaps) if dense_ok else (float("nan"),) * 2
        zero_lo, zero_hi = central_interval(zeros) if dense_ok else (float("nan"),) * 2
        relative_lmax = (lmax_hi - lmax_lo) / np.median(lmax)
        relative_zero = (zero_hi - zero_lo) / np.median(zeros) if dense_ok else float("nan")
        own = self.eigenvalues[-1]
        sizes = self.sizes
        n_small, n_big = int(sizes["images"].iloc[0]), int(sizes["images"].iloc[-1])
        big = self.size_eigenvalues[n_big]
        outliers = n_outliers(big)
        zero_small, zero_big = float(sizes["near_zero"].iloc[0]), float(sizes["near_zero"].iloc[-1])
        P = len(own)
        rel = self.relative_gap_table()
        rel_small = rel[rel["images"] == self.config.hessian_samples]
        rel_big = rel[rel["images"] == n_big]
        top_share = layer_shares(self.top_vectors[:, :1], self.layer_labels, len(self.layer_names))[0]
        layer_of_top = self.layer_names[int(np.argmax(top_share))]
        param_share = np.bincount(self.layer_labels, minlength=len(self.layer_names)) / len(self.layer_labels)
        seed = SEED_REPORTED
        return dict(
            seed_source=SEED_SOURCE,
            n_draws=self.config.n_draws, n_dense_draws=self.config.n_dense_draws, draw_step=final,
            n_draw_checkpoints=int(self.draws["step"].nunique()),
            draw_lmax_median=float(np.median(lmax)), draw_lmax_lo=lmax_lo, draw_lmax_hi=lmax_hi,
            draw_gap_lo=gap_lo, draw_gap_hi=gap_hi, draw_zero_lo=zero_lo, draw_zero_hi=zero_hi,
            seed_lambda_max=seed["lambda_max"], seed_gap1=seed["gap1"], seed_frac_small=seed["frac_small"],
            seed_lmax_verdict=spread_verdict(seed["lambda_max"], lmax, judged=judged),
            seed_gap_verdict=(spread_verdict(seed["gap1"], gaps, judged=judged) if dense_ok
                              else "is not judged (fewer than two dense draws)"),
            seed_zero_verdict=(spread_verdict(seed["frac_small"], zeros, judged=judged) if dense_ok
                               else "is not judged (fewer than two dense draws)"),
            own_lmax_verdict=spread_verdict(float(own[-1]), lmax, judged=judged),
            relative_spread_lmax=100 * relative_lmax, relative_spread_zero=100 * relative_zero,
            bulk_sentence=("no verdict on which is more sensitive at the smoke preset" if not judged or not dense_ok
                           else "the bulk is less sensitive to the choice of images than the top of the spectrum"
                           if relative_zero < relative_lmax else
                           "the bulk is at least as sensitive to the choice of images as the top of the spectrum"),
            n_vectors_glue=self.config.n_vectors,
            # subsample sizes and the rank bound
            n_classes=N_CLASSES, n_parameters=P, size_small=n_small, size_big=n_big,
            rank_bound_small=rank_bound(n_small), rank_share_small=100 * rank_bound(n_small) / P,
            rank_share_hessian=100 * rank_bound(self.config.hessian_samples) / P,
            rank_bound_hessian=rank_bound(self.config.hessian_samples),
            zero_small=zero_small, zero_big=zero_big,
            zero_vs_n_word=direction(zero_big - zero_small, zero_big - zero_small, judged=judged,
                                     up="rises", down="falls", flat="does not change"),
            lmax_small_size=float(sizes["lambda_max"].iloc[0]), lmax_big_size=float(sizes["lambda_max"].iloc[-1]),
            gn_rank_big=int(sizes["gn_rank"].iloc[-1]), gn_bound_big=int(sizes["gn_rank_bound"].iloc[-1]),
            gn_rank_small=int(sizes["gn_rank"].iloc[0]), gn_bound_small=int(sizes["gn_rank_bound"].iloc[0]),
            gn_rank_word=("equals" if (sizes["gn_rank"] == sizes["gn_rank_bound"]).all() else "does not always equal"),
            gn_rel_diff=100 * self.gn_relative_difference,
            gn_lmax_big=float(self.gn_eigenvalues[n_big][-1]), gn_lmin_big=float(self.gn_eigenvalues[n_big][0]),
            gn_zero_big=100 * near_zero_share(self.gn_eigenvalues[n_big]),
            # outliers
            n_outliers_big=outliers, papyan_c=N_CLASSES, papyan_cc=N_CLASSES * (N_CLASSES - 1),
            papyan_word=papyan_word(outliers) if judged else "is not compared (smoke run)",
            big_n_above_gap_size=n_above_largest_gap(big),
            # eigenvectors by layer
            top_layer=layer_of_top, top_layer_share=100 * float(top_share.max()),
            top_layer_param_share=100 * float(param_share[int(np.argmax(top_share))]),
            # relative gaps in the bulk
            rel_window=_RELATIVE_WINDOW,
            rel_gap_small=float(rel_small["relative_gap"].iloc[0]) if len(rel_small) else float("nan"),
            rel_gap_small_at=float(rel_small["upper"].iloc[0]) if len(rel_small) else float("nan"),
            rel_gap_small_above=int(rel_small["n_above"].iloc[0]) if len(rel_small) else 0,
            rel_gap_big=float(rel_big["relative_gap"].iloc[0]) if len(rel_big) else float("nan"),
            rel_gap_big_at=float(rel_big["upper"].iloc[0]) if len(rel_big) else float("nan"),
            rel_gap_big_above=int(rel_big["n_above"].iloc[0]) if len(rel_big) else 0,
            seconds_draws=self.timings.get("draws", 0.0), seconds_sizes=self.timings.get("sizes", 0.0),
            wall_minutes=self.wall.get("this_run", float("nan")) / 60, n_workers=len(self.workers),
        )


_RUNS: dict[str, MnistLenetRun] = {}  # per process: a worker that runs several tasks loads MNIST once


def _opened(config: Config) -> MnistLenetRun:
    run = training_run(config)
    return _RUNS.setdefault(run.store.key, run)


def _compare_from_sizes(config: Config) -> bool:
    """Whether the final checkpoint's ``compare_samples``-image spectrum is read from the nested sizes (it is one
    of them: the same images, since both are prefixes of the same permutation) instead of being computed again."""
    return config.compare_samples in config.subsample_sizes


def plan(config: Config, checkpoints: list[int]) -> dict[str, list[int]]:
    """Which checkpoints get what: ``{"spectra": every checkpoint, "compare": the larger subsample's checkpoints,
    "draws": the draw checkpoints (the last included)}``."""
    compare = [checkpoints[i] for i in spread_indices(len(checkpoints), config.n_compare_checkpoints)]
    draws = [checkpoints[i] for i in spread_indices(len(checkpoints), config.n_draw_checkpoints)]
    if checkpoints[-1] not in draws:
        draws.append(checkpoints[-1])
    return {"spectra": list(checkpoints), "compare": compare, "draws": draws}


def _spectrum(config: Config, run: MnistLenetRun, step: int) -> HessianSpectrum:
    return spectra_store(config, run).cached(f"spectrum_{step:07d}", lambda: dense_spectrum(
        run.model_at(step), hessian_batch(config, run=run), n_vectors=config.n_vectors))


def _compare(config: Config, run: MnistLenetRun, step: int) -> HessianSpectrum:
    return compare_store(config, run).cached(f"spectrum_{step:07d}", lambda: dense_spectrum(
        run.model_at(step), hessian_batch(config, config.compare_samples, run=run), n_vectors=_COMPARE_VECTORS))


def _draw(config: Config, run: MnistLenetRun, step: int, i: int, *, dense: bool,
          model: nn.Module | None = None) -> tuple[dict, dict | None]:
    """Draw ``i`` at ``step``: its Lanczos λ_max and, with ``dense``, its full spectrum (each stored)."""
    store = draws_store(config, run)
    model = run.model_at(step) if model is None else model
    batch = hessian_subsample(*run.train, config.hessian_samples, config.seed + _DRAW_SEED + i)
    top = store.cached(f"top_{step:07d}_{i:03d}", lambda: _draw_top(model, batch))
    spec = store.cached(f"dense_{step:07d}_{i:03d}", lambda: _draw_dense(model, batch)) if dense else None
    return top, spec


def _sizes(config: Config, run: MnistLenetRun) -> dict[str, Any]:
    step = run.checkpoints[-1]
    return sizes_store(config, run).cached(f"sizes_{step:07d}", lambda: _size_spectra(
        run.model_at(step), hessian_batch(config, config.subsample_sizes[-1], run=run), config.subsample_sizes))


def tasks(config: Config, checkpoints: list[int]) -> list[dict[str, Any]]:
    """The chapter's Hessian work as independent :func:`task` s, the longest first (so that two workers stay busy
    to the end): the nested sizes, the dense draws (in groups of :data:`_DRAWS_PER_TASK`), the larger subsample,
    the checkpoints' spectra, the Lanczos-only draws."""
    where = plan(config, checkpoints)
    final = checkpoints[-1]
    dense = list(range(min(config.n_dense_draws, config.n_draws)))
    out: list[dict[str, Any]] = [dict(kind="sizes")]
    out += [dict(kind="draws", step=final, draws=dense[i:i + _DRAWS_PER_TASK], dense=True)
            for i in range(0, len(dense), _DRAWS_PER_TASK)]
    out += [dict(kind="compare", step=s) for s in where["compare"]
            if not (s == final and _compare_from_sizes(config))]
    out += [dict(kind="spectrum", step=s) for s in checkpoints]
    out += [dict(kind="draws", step=s, draws=[i for i in range(config.n_draws)
                                             if not (s == final and i < len(dense))], dense=False)
            for s in where["draws"]]
    return [dict(t, config=config) for t in out if t.get("draws", True) != []]


def task(config: Config, kind: str, *, threads: int = 1, **arguments: Any) -> dict[str, Any]:
    """One independent piece of :func:`run` (module-level, so worker processes import it), on ``threads`` torch
    and BLAS threads (restored afterwards). ``kind``: ``"spectrum"``/``"compare"`` (``step=``): the checkpoint's
    spectrum on the Hessian subsample / the larger subsample; ``"draws"`` (``step=, draws=[i, …], dense=``):
    independent draws; ``"sizes"``: the nested subsample sizes. Results go to the stores (atomic writes); the
    return value is a small summary. The training run must exist."""
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            run = _opened(config)
            if kind == "spectrum":
                return {"kind": kind, "step": arguments["step"],
                        "n": len(_spectrum(config, run, arguments["step"]).eigenvalues)}
            if kind == "compare":
                return {"kind": kind, "step": arguments["step"],
                        "n": len(_compare(config, run, arguments["step"]).eigenvalues)}
            if kind == "draws":
                model = run.model_at(arguments["step"])
                for i in arguments["draws"]:
                    _draw(config, run, arguments["step"], i, dense=arguments["dense"], model=model)
                return {"kind": kind, "step": arguments["step"], "draws": list(arguments["draws"])}
            if kind == "sizes":
                return {"kind": kind, "sizes": len(_sizes(config, run)["hessian"])}
            raise ValueError(f"kind={kind!r} must be 'spectrum', 'compare', 'draws' or 'sizes'")
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class _FromSizes:
    """The final checkpoint's larger-subsample spectrum read from the nested sizes (no eigenvectors kept; its
    cost is counted with the sizes)."""

    eigenvalues: np.ndarray
    seconds_hessian: float = 0.0
    seconds_eig: float = 0.0


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Train (or read) the run, then every Hessian of the chapter as independent :func:`tasks` on
    ``config.scheduler`` (each stored as it completes, so a rerun resumes or only reads), then read them back.

    ``progress``: progress bars (default: on in a terminal, off inside papermill).
    """
    from ..fanout import run_tasks

    started = time.perf_counter()
    show = show_progress(progress)
    train = _opened(config)
    records = train.train_or_resume(progress=progress)
    checkpoints = train.checkpoints
    where = plan(config, checkpoints)
    workers = [r.worker for r in run_tasks(task, tasks(config, checkpoints), scheduler=config.scheduler,
                                           desc="Hessians", progress=show)]
    tasks_wall = time.perf_counter() - started
    # Everything is stored now: read it back here, on one thread like the tasks (anything recomputed here, e.g.
    # after a store was deleted, is computed the same way).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dense = {step: _spectrum(config, train, step) for step in checkpoints}
        sized = _sizes(config, train)
        compare_steps = where["compare"]
        compare: dict[int, Any] = {}
        for step in compare_steps:
            if step == checkpoints[-1] and _compare_from_sizes(config):
                compare[step] = _FromSizes(sized["hessian"][list(config.subsample_sizes).index(
                    config.compare_samples)])
            else:
                compare[step] = _compare(config, train, step)
        draw_rows, draw_eigenvalues, draw_seconds = [], {}, 0.0
        for step in where["draws"]:
            model = train.model_at(step)
            for i in range(config.n_draws):
                dense_draw = i < config.n_dense_draws and step == checkpoints[-1]
                top, spec = _draw(config, train, step, i, dense=dense_draw, model=model)
                row = dict(step=int(step), draw=i, lambda_max=top["lambda_max"], largest_gap=np.nan,
                           near_zero=np.nan, n_above_gap=np.nan)
                draw_seconds += top["seconds"]
                if spec is not None:
                    lam = spec["eigenvalues"]
                    draw_eigenvalues.setdefault(int(step), []).append(lam)
                    row.update(largest_gap=float(spectral_gaps(lam, top=1)[0, 0]),
                               near_zero=100 * near_zero_share(lam), n_above_gap=n_above_largest_gap(lam))
                    draw_seconds += spec["seconds"]
                draw_rows.append(row)
    finally:
        torch.set_num_threads(previous)
    final_model = train.model_at(checkpoints[-1])

    eigenvalues = [dense[s].eigenvalues for s in checkpoints]
    curves = pd.DataFrame([{k: r[k] for k in ("step", "train_loss", "train_acc", "test_loss", "test_acc")}
                           for r in records])
    stats = pd.DataFrame([spectrum_stats(lam) for lam in eigenvalues], index=pd.Index(checkpoints, name="step"))
    timings = dict(
        train=float(records[-1]["train_seconds"]),
        hessians=float(sum(dense[s].seconds_hessian for s in checkpoints)),
        eigendecompositions=float(sum(dense[s].seconds_eig for s in checkpoints)),
        larger_subsample=float(sum(compare[s].seconds_hessian + compare[s].seconds_eig for s in compare_steps)),
        draws=float(draw_seconds),
        sizes=float(sized["seconds"]),
    )
    labels, names = parameter_labels(final_model, by="layer")
    names = [f"{type(final_model[int(n)]).__name__} {n}" if n.isdigit() else n for n in names]
    P = len(labels)
    size_rows = []
    for n, lam_h, lam_g in zip(config.subsample_sizes, sized["hessian"], sized["gauss_newton"]):
        size_rows.append(dict(
            images=int(n), near_zero=100 * near_zero_share(lam_h), lambda_max=float(lam_h[-1]),
            largest_gap=float(spectral_gaps(lam_h, top=1)[0, 0]), n_above_gap=n_above_largest_gap(lam_h),
            outliers=n_outliers(lam_h), gn_near_zero=100 * near_zero_share(lam_g),
            gn_rank=int((lam_g > _GN_RANK_RTOL * lam_g[-1]).sum()), gn_rank_bound=min(P, rank_bound(int(n))),
            bound_share=100 * min(P, rank_bound(int(n))) / P))
    return Result(
        config=config, curves=curves, eigenvalues=eigenvalues, stats=stats, compare_steps=compare_steps,
        compare_eigenvalues={s: compare[s].eigenvalues for s in compare_steps},
        seed_comparison=_seed_comparison(int(checkpoints[-1]), float(curves["test_acc"].iloc[-1]), eigenvalues[-1]),
        subsample_comparison=_subsample_comparison(config, compare_steps, dense, compare),
        conv1_filters=train.model_at(checkpoints[-1])[0].weight.detach().numpy(),
        spectra_dir=spectra_store(config, train).directory, timings=timings,
        wall=dict(until_tasks_done=tasks_wall, this_run=time.perf_counter() - started),
        workers=sorted(set(workers)),
        draws=pd.DataFrame(draw_rows), draw_eigenvalues={s: np.array(v) for s, v in draw_eigenvalues.items()},
        sizes=pd.DataFrame(size_rows),
        size_eigenvalues=dict(zip(config.subsample_sizes, sized["hessian"])),
        gn_eigenvalues=dict(zip(config.subsample_sizes, sized["gauss_newton"])),
        gn_relative_difference=float(sized["relative_difference"]),
        top_vectors=dense[checkpoints[-1]].top_vectors, bottom_vectors=dense[checkpoints[-1]].bottom_vectors,
        layer_labels=labels, layer_names=names)


def _draw_top(model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, float]:
    """λ_max of the Hessian on ``batch`` by Lanczos (relative residual 1e-6), timed."""
    with timed() as timer:
        value = top_eigenvalue(hessian_operator(model, nn.CrossEntropyLoss(), batch), tol=1e-6, progress=False)
    return dict(lambda_max=float(value), seconds=timer.seconds)


def _draw_dense(model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """All eigenvalues of the exact Hessian on ``batch`` (values only), timed."""
    with timed() as timer:
        H = full_hessian(model, nn.CrossEntropyLoss(), batch, progress=False)
        lam = torch.linalg.eigvalsh(H).numpy()
    return dict(eigenvalues=lam, seconds=timer.seconds)


def _size_spectra(model: nn.Module, batch: tuple[Tensor, Tensor], sizes: list[int]) -> dict[str, Any]:
    """The spectra of the Hessian and of its Gauss–Newton part on each prefix of ``batch`` of the given sizes
    (chunks of ``_CHUNK`` images, :func:`chunked_sum`), and ``||H − G||_F / ||H||_F`` at the largest."""
    loss = nn.CrossEntropyLoss()
    held: dict[str, Tensor] = {}

    def keep_last_h(M: Tensor) -> np.ndarray:
        held["H"] = M.clone()
        return torch.linalg.eigvalsh(M).numpy()

    with timed() as timer:
        h = chunked_sum(lambda b: full_hessian(model, loss, b, progress=False), *batch, list(sizes), _CHUNK,
                        keep_last_h)
        H = held.pop("H")
        g_matrices: list[float] = []

        def eig_g(M: Tensor) -> np.ndarray:
            if len(g_matrices) == len(sizes) - 1:  # the largest size
                g_matrices.append(float(torch.linalg.matrix_norm(H - M) / torch.linalg.matrix_norm(H)))
            else:
                g_matrices.append(float("nan"))
            return torch.linalg.eigvalsh(M).numpy()

        g = chunked_sum(lambda b: gauss_newton(model, loss, b), *batch, list(sizes), _CHUNK, eig_g)
        del H
    return dict(hessian=h, gauss_newton=g, relative_difference=g_matrices[-1], seconds=timer.seconds)


def _seed_comparison(final_step: int, test_acc: float, lam: np.ndarray) -> pd.DataFrame:
    """The final checkpoint against the seed's README, each of our numbers at the seed's precision."""
    final, gaps = spectrum_stats(lam), spectral_gaps(lam, top=10)
    rows = [
        ("final step", SEED_REPORTED["final_step"], final_step),
        ("test accuracy (%)", SEED_REPORTED["test_acc"], round(100 * test_acc, 2)),
        ("λ_min", SEED_REPORTED["lambda_min"], round(final["lambda_min"], 3)),
        ("λ_max", SEED_REPORTED["lambda_max"], round(final["lambda_max"], 1)),
        ("share with |λ| < 0.01 (%)", SEED_REPORTED["frac_small"], round(100 * float(np.mean(np.abs(lam) < 0.01)), 1)),
        ("largest gap", SEED_REPORTED["gap1"], round(float(gaps[0, 0]), 1)),
        ("eigenvalues above it", SEED_REPORTED["n_above_gap"], n_above_largest_gap(lam)),
        ("second-largest gap", SEED_REPORTED["gap2"], round(float(gaps[1, 0]), 2)),
    ]
    return pd.DataFrame([(a, b) for _, a, b in rows], columns=["seed (reported)", "ours"], dtype=object,
                        index=pd.Index([name for name, _, _ in rows], name="final checkpoint"))


_SUBSAMPLE_STATS = ("lambda_max", "lambda_min", "trace", "n_negative_tol", "spectral_entropy")


def _subsample_comparison(config: Config, compare_steps: list[int], dense: dict[int, HessianSpectrum],
                          compare: dict[int, HessianSpectrum]) -> pd.DataFrame:
    rows = []
    for step in compare_steps:
        for n, spec in ((config.hessian_samples, dense[step]), (config.compare_samples, compare[step])):
            s = spectrum_stats(spec.eigenvalues)
            rows.append(dict(step=int(step), images=n, **{k: s[k] for k in _SUBSAMPLE_STATS},
                             **{"largest gap": float(spectral_gaps(spec.eigenvalues, top=1)[0, 0]),
                                "eigenvalues above it": n_above_largest_gap(spec.eigenvalues)}))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Tables and figures


def subsample_table(result: Result) -> Styler:
    """:attr:`Result.subsample_comparison` for display: statistics to 4 significant digits, gaps to 3."""
    table = result.subsample_comparison
    formats = {c: "{:.3g}" if c == "largest gap" else "{:.4g}"
               for c in table.columns if pd.api.types.is_float_dtype(table[c])}
    return table.style.format(formats).hide(axis="index")


def plot_summary(result: Result) -> Figure:
    """Training curves and spectral statistics over training (log step axis)."""
    stats = result.stats
    return plots.plot_summary(
        result.steps,
        {"train loss": result.curves["train_loss"].to_numpy(), "test accuracy": result.curves["test_acc"].to_numpy(),
         "trace": stats["trace"].to_numpy(), "spectral entropy": stats["spectral_entropy"].to_numpy(),
         "λ_max": stats["lambda_max"].to_numpy(), "negative eigenvalues": stats["n_negative"].to_numpy()},
        log=("train loss", "λ_max"))


def plot_spectrum_evolution(result: Result, *, n_lines: int = 20) -> Figure:
    """The ``n_lines`` largest eigenvalues and most negative ones (as ``|λ|``) over training."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plots.plot_spectrum_evolution(result.steps, result.eigenvalues, n_lines=n_lines, ax=ax)
    ax.set_title(f"the {n_lines} largest eigenvalues (solid) and {n_lines} most negative (dashed, |λ|)")
    return fig


def plot_dendrograms(result: Result, *, top: int = 30) -> Figure:
    """The spectral dendrograms (last ``top`` merges) of the three :attr:`Result.picks` checkpoints."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, i in zip(axes, result.picks):
        plots.plot_truncated_dendrogram(eigen_linkage(result.eigenvalues[i]), top=top, ax=ax)
        ax.set_title(f"step {result.steps[i]}")
    return fig


def dendrogram_gif(result: Result, *, top: int = 30) -> str:
    """Write the animated dendrogram over all checkpoints to ``<spectra_dir>/dendrogram.gif``; returns its path."""
    return plots.save_dendrogram_gif(str(result.spectra_dir / "dendrogram.gif"), list(result.steps),
                                     result.eigenvalues, top=top)


def plot_cluster_counts(result: Result, *, eps: np.ndarray | None = None) -> Figure:
    """n(ε) over training as a heatmap, and n(ε) curves of the three :attr:`Result.picks` checkpoints."""
    eps = np.logspace(-6, 2, 81) if eps is None else eps
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.2), gridspec_kw=dict(width_ratios=[3, 2]))
    plots.plot_cluster_heatmap(result.steps, result.eigenvalues, eps, ax=axes[0])
    plots.plot_cluster_counts([result.eigenvalues[i] for i in result.picks], eps,
                              labels=[f"step {result.steps[i]}" for i in result.picks], ax=axes[1])
    return fig


def explorer(result: Result, *, max_points: int = 400, eps: np.ndarray | None = None):
    """The checkpoint explorer of the page (``IPython.display.HTML``): a slider over the checkpoints redraws the
    whole spectrum (decimated to ``max_points`` values keeping its extremes and largest gaps), n(ε) on ``eps``
    (default: the grid of :func:`plot_cluster_counts`) and the curves with a line at the step; the page check moves
    the slider to the first and last checkpoints (:data:`hessian_book.explorer.FIRST_AND_LAST`)."""
    eps = np.logspace(-6, 2, 81) if eps is None else eps
    figure = explorer_figure(result.explorer_run(), max_points=max_points, eps=eps, curves_log_y=True,
                             title=f"LeNet-tiny on MNIST: the Hessian on {result.config.hessian_samples} images "
                                   "at each checkpoint")
    return display_explorer(figure, checks=FIRST_AND_LAST)


def plot_gap_barcode(result: Result, *, top: int = 10) -> Figure:
    """The ``top`` spectral gaps at each checkpoint."""
    fig, ax = plt.subplots(figsize=(10, 4))
    plots.plot_gap_barcode(result.steps, [spectral_gaps(lam, top=top) for lam in result.eigenvalues], ax=ax)
    ax.set_title(f"top-{top} spectral gaps at each checkpoint")
    return fig


def plot_conv_filters(result: Result) -> Figure:
    """The trained conv1 filters."""
    return plots.plot_conv_filters(result.conv1_filters)


def plot_draws(result: Result) -> Figure:
    """λ_max of the independent draws at each draw checkpoint (points), their central 95 % range (bar), the
    chapter's own subsample (cross) and the seed's reported value (line); and at the final checkpoint, the
    dense draws' largest gap and near-zero share against the seed's."""
    draws = result.draws
    steps = sorted(draws["step"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    index = {int(s): i for i, s in enumerate(result.steps)}
    for k, step in enumerate(steps):
        values = draws.loc[draws["step"] == step, "lambda_max"].to_numpy()
        axes[0].plot(np.full(len(values), k) + np.linspace(-0.15, 0.15, len(values)), values, ".", color="C0")
        low, high = central_interval(values)
        axes[0].plot([k, k], [low, high], "-", color="C0", lw=6, alpha=0.3)
        axes[0].plot(k, result.eigenvalues[index[int(step)]][-1], "x", color="C1", ms=9)
    axes[0].axhline(SEED_REPORTED["lambda_max"], color="k", ls="--", lw=1, label="seed (final step)")
    axes[0].set_xticks(range(len(steps)), [f"step {s}" for s in steps])
    axes[0].set_ylabel("λ_max")
    axes[0].set_title(f"λ_max over {result.config.n_draws} draws of {result.config.hessian_samples} images")
    axes[0].legend()
    final = draws[draws["step"] == steps[-1]]
    own = result.eigenvalues[-1]
    for ax, column, seed, own_value, label in (
            (axes[1], "largest_gap", SEED_REPORTED["gap1"], spectral_gaps(own, top=1)[0, 0], "largest gap"),
            (axes[2], "near_zero", SEED_REPORTED["frac_small"], 100 * near_zero_share(own), "share |λ| < 0.01 (%)")):
        values = final[column].dropna().to_numpy()
        ax.hist(values, bins=max(3, len(values) // 2), color="C0", alpha=0.6, label="draws")
        ax.axvline(seed, color="k", ls="--", lw=1, label="seed")
        ax.axvline(own_value, color="C1", lw=1.5, label="this chapter's subsample")
        ax.set_xlabel(label)
        ax.set_title(f"final step, {len(values)} dense draws")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sizes(result: Result) -> Figure:
    """Near-zero share of the Hessian and of its Gauss–Newton part against the subsample size, with the share
    the rank bound forces to zero in the Gauss–Newton part; and λ_max and the outlier count against the size."""
    sizes = result.sizes
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    n = sizes["images"].to_numpy()
    axes[0].plot(n, sizes["near_zero"], "o-", label="Hessian, |λ| < 0.01")
    axes[0].plot(n, sizes["gn_near_zero"], "s--", label="Gauss–Newton part, |λ| < 0.01")
    axes[0].plot(n, 100 - sizes["bound_share"], "k:", label="GN zeros forced by rank ≤ N(C − 1)")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("images N")
    axes[0].set_ylabel("% of eigenvalues")
    axes[0].legend(fontsize=8)
    axes[1].plot(n, sizes["lambda_max"], "o-", color="C0", label="λ_max")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("images N")
    axes[1].set_ylabel("λ_max")
    twin = axes[1].twinx()
    twin.plot(n, sizes["outliers"], "s--", color="C3", label="outliers")
    twin.set_ylabel("outliers", color="C3")
    axes[1].set_title("final checkpoint")
    fig.tight_layout()
    return fig


def plot_gauss_newton(result: Result) -> Figure:
    """The sorted spectra of the Hessian and of its Gauss–Newton part at the largest subsample size
    (symmetric log scale)."""
    n = max(result.size_eigenvalues)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for lam, label, style in ((result.size_eigenvalues[n], "Hessian H", "-"),
                              (result.gn_eigenvalues[n], "Gauss–Newton part G", "--")):
        ax.plot(np.arange(len(lam)), lam, style, label=label)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("index (ascending)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"final checkpoint, {n} images")
    ax.legend()
    return fig


def plot_layer_shares(result: Result) -> Figure:
    """Per layer, the share of each stored top and bottom eigenvector's squared norm (final checkpoint)."""
    n_groups = len(result.layer_names)
    fig, axes = plt.subplots(1, 2, figsize=(14, 3.8), sharey=True)
    for ax, vectors, title in ((axes[0], result.top_vectors, "top eigenvectors (1 = λ_max)"),
                               (axes[1], result.bottom_vectors, "bottom eigenvectors (1 = λ_min)")):
        shares = layer_shares(vectors, result.layer_labels, n_groups)
        image = ax.imshow(shares.T, aspect="auto", vmin=0, vmax=1, cmap="viridis",
                          extent=(0.5, shares.shape[0] + 0.5, n_groups - 0.5, -0.5))
        ax.set_yticks(range(n_groups), result.layer_names)
        ax.set_xlabel("eigenvector")
        ax.set_title(title)
    fig.colorbar(image, ax=axes, label="share of squared norm")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# The class of every glued value, for ``book/build.py --verify`` (book/verify.py; first matching pattern wins).
# Statistical values are judged, on another numerical path, against the spread this chapter measures over
# independent draws of ``hessian_samples`` images at the final checkpoint: a rerun whose network differs
# (training is chaotic) should land inside the record's central 95 % range, and the record inside the rerun's.


def _median_halfwidth(glued: dict[str, Any]) -> float:
    """Two standard errors of the difference of two medians over ``n_draws`` draws: the draws' standard deviation
    from their central 95 % range (normal approximation, σ ≈ range / 3.92), the median's standard error
    1.2533 σ / √n, times √2 for a difference of two independent medians."""
    sigma = (glued["draw_lmax_hi"] - glued["draw_lmax_lo"]) / (2 * 1.959964)
    return 2 * np.sqrt(2) * 1.2533 * sigma / np.sqrt(glued["n_draws"])


def _glue_classes() -> dict[str, Any]:
    from ..glue import conclusion, exact, numerical, statistical

    lmax = dict(low="draw_lmax_lo", high="draw_lmax_hi", why="λ_max over the image draws")
    gap = dict(low="draw_gap_lo", high="draw_gap_hi", why="largest gap over the image draws")
    zero = dict(low="draw_zero_lo", high="draw_zero_hi", why="share |λ| < 0.01 over the image draws")
    return {
        # set by the parameters, the architecture or the seed's published numbers
        **{name: exact() for name in (
            "n_checkpoints", "final_step", "hessian_samples", "compare_samples", "n_compare", "big_step",
            "n_draws", "n_dense_draws", "draw_step", "n_draw_checkpoints", "seed_lambda_max", "seed_gap1",
            "seed_frac_small", "seed_source", "n_vectors_glue", "n_classes", "n_parameters", "size_small",
            "size_big", "rank_bound_small", "rank_share_small", "rank_share_hessian", "rank_bound_hessian",
            "gn_bound_big", "gn_bound_small", "papyan_c", "papyan_cc", "rel_window", "top_layer_param_share",
            "explorer_step_first", "explorer_step_last")},
        # the page's verdicts and in-range statements
        **{name: conclusion() for name in (
            "negative_word", "seed_lmax_verdict", "seed_gap_verdict", "seed_zero_verdict", "own_lmax_verdict",
            "bulk_sentence", "zero_vs_n_word", "gn_rank_word", "papyan_word", "top_layer")},
        # measured on the chapter's own 50 images at the final checkpoint: one draw among the draws
        **{name: statistical(**lmax) for name in ("final_lambda_max", "small_lambda_max", "lmax_small_size")},
        **{name: statistical(**gap) for name in ("final_gap1", "small_gap1")},
        **{name: statistical(**zero) for name in ("final_frac_small", "zero_small")},
        "draw_lmax_median": statistical(halfwidth=_median_halfwidth,
                                        why="2 standard errors of a difference of medians over the draws"),
        # everything else is computed, with no spread measured for it: bitwise on the record's path
        "*": numerical(rtol=1e-6),
    }


GLUE_CLASSES = _glue_classes()
