"""LeNet-tiny on MNIST: the seed repository's experiment, its spectra over training, and what its subsample leaves out.

``Config`` holds the chapter's parameters; :func:`training_run` opens (and, when asked, trains) the SGD run that
the MNIST and Fiedler chapters share, keyed by its training parameters only; :func:`hessian_batch` is the Hessian
subsample. ``run(config)`` computes the chapter: the exact Hessian spectrum at every checkpoint (in a child store
keyed by the run and the Hessian settings, :func:`spectra_store`) and on a larger subsample at a few checkpoints
(:func:`compare_store`), returned as a :class:`Result`; the ``plot_*`` functions draw its figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler
from torch import Tensor

from hessian_core import eigen_linkage, spectral_gaps, spectrum_stats

from .. import config as checks
from .. import plots
from ..config import ChapterConfig
from ..measure import HessianSpectrum, dense_spectrum
from ..progress import show_progress
from ..runs import MnistLenetRun, hessian_subsample, mnist_lenet_run
from ..store import ResultStore

__all__ = ["Config", "training_run", "hessian_batch", "spectra_store", "compare_store", "SEED_REPORTED",
           "spread_indices", "n_above_largest_gap", "Plateau", "widest_plateau", "Result", "run",
           "subsample_table", "plot_summary", "plot_spectrum_evolution", "plot_dendrograms", "dendrogram_gif",
           "plot_cluster_counts", "plot_gap_barcode", "plot_conv_filters"]

# The seed repository's reported result (its README), quoted for comparison; everything else here is computed.
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
        if self.n_train > _MNIST_TRAIN:
            raise checks.ConfigError(f"n_train={self.n_train} exceeds the {_MNIST_TRAIN} MNIST training images")
        if self.n_test > _MNIST_TEST:
            raise checks.ConfigError(f"n_test={self.n_test} exceeds the {_MNIST_TEST} MNIST test images")
        n_images = self.n_train or _MNIST_TRAIN
        for name in ("hessian_samples", "compare_samples"):
            if getattr(self, name) > n_images:
                raise checks.ConfigError(f"{name}={getattr(self, name)} exceeds the {n_images} training images used "
                                         "(n_train)")


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


# ----------------------------------------------------------------------------------------------------------------
# Small pieces of analysis (tested in tests/book/test_chapter_mnist_lenet.py)


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
        timings: wall seconds of ``train`` (optimiser steps), ``hessians``, ``eigendecompositions`` and
            ``larger_subsample`` (Hessians and eigendecompositions on ``compare_samples`` images), as measured
            when each was computed (read back from the store on a rerun).
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
            minutes_total=sum(t.values()) / 60,
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
        )


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Train (or read) the run, then the exact Hessian spectrum at every checkpoint and on the larger subsample at
    ``n_compare_checkpoints`` of them; everything is stored as it completes, so a rerun resumes or only reads.

    ``progress``: progress bars (default: on in a terminal, off inside papermill).
    """
    from tqdm.std import tqdm

    show = show_progress(progress)
    train = training_run(config)
    records = train.train_or_resume(progress=progress)
    checkpoints = train.checkpoints
    spectra, larger = spectra_store(config, train), compare_store(config, train)
    batch = hessian_batch(config, run=train)
    compare_batch = hessian_batch(config, config.compare_samples, run=train)

    def spectrum(step: int, batch: tuple[Tensor, Tensor], n_vectors: int) -> HessianSpectrum:
        return dense_spectrum(train.model_at(step), batch, n_vectors=n_vectors)

    dense = {step: spectra.cached(f"spectrum_{step:07d}", lambda: spectrum(step, batch, config.n_vectors))
             for step in tqdm(checkpoints, desc="Hessian spectra", disable=not show)}
    compare_steps = [checkpoints[i] for i in spread_indices(len(checkpoints), config.n_compare_checkpoints)]
    compare = {step: larger.cached(f"spectrum_{step:07d}", lambda: spectrum(step, compare_batch, _COMPARE_VECTORS))
               for step in tqdm(compare_steps, desc=f"Hessians on {config.compare_samples} images",
                                disable=not show)}

    eigenvalues = [dense[s].eigenvalues for s in checkpoints]
    curves = pd.DataFrame([{k: r[k] for k in ("step", "train_loss", "train_acc", "test_loss", "test_acc")}
                           for r in records])
    stats = pd.DataFrame([spectrum_stats(lam) for lam in eigenvalues], index=pd.Index(checkpoints, name="step"))
    timings = dict(
        train=float(records[-1]["train_seconds"]),
        hessians=float(sum(dense[s].seconds_hessian for s in checkpoints)),
        eigendecompositions=float(sum(dense[s].seconds_eig for s in checkpoints)),
        larger_subsample=float(sum(compare[s].seconds_hessian + compare[s].seconds_eig for s in compare_steps)),
    )
    return Result(
        config=config, curves=curves, eigenvalues=eigenvalues, stats=stats, compare_steps=compare_steps,
        compare_eigenvalues={s: compare[s].eigenvalues for s in compare_steps},
        seed_comparison=_seed_comparison(int(checkpoints[-1]), float(curves["test_acc"].iloc[-1]), eigenvalues[-1]),
        subsample_comparison=_subsample_comparison(config, compare_steps, dense, compare),
        conv1_filters=train.model_at(checkpoints[-1])[0].weight.detach().numpy(),
        spectra_dir=spectra.directory, timings=timings)


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


def plot_gap_barcode(result: Result, *, top: int = 10) -> Figure:
    """The ``top`` spectral gaps at each checkpoint."""
    fig, ax = plt.subplots(figsize=(10, 4))
    plots.plot_gap_barcode(result.steps, [spectral_gaps(lam, top=top) for lam in result.eigenvalues], ax=ax)
    ax.set_title(f"top-{top} spectral gaps at each checkpoint")
    return fig


def plot_conv_filters(result: Result) -> Figure:
    """The trained conv1 filters."""
    return plots.plot_conv_filters(result.conv1_filters)
