"""Figures shared by the book's chapters (matplotlib; seaborn styling where it helps)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from scipy.cluster import hierarchy

from hessian_core import cluster_counts, eigen_linkage

from .curves import seed_spread

__all__ = [
    "plot_signed_spectrum",
    "plot_cluster_counts",
    "plot_truncated_dendrogram",
    "plot_spectrum_evolution",
    "plot_cluster_heatmap",
    "plot_gap_barcode",
    "plot_summary",
    "save_dendrogram_gif",
    "plot_conv_filters",
    "plot_grokking_curves",
    "plot_density_evolution",
    "plot_seed_spread",
    "plot_fiedler_dendrogram",
]


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6, 3.5)) -> Axes:
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def plot_signed_spectrum(eigenvalues: np.ndarray, *, ax: Axes | None = None, floor: float = 1e-10,
                         label: str | None = None) -> Axes:
    """Sorted eigenvalues on a symmetric log scale (positive up, negative down), by rank.

    Args:
        eigenvalues: ``ndarray[n]``.
        floor: linear range of the symlog axis, below which values are drawn linearly.
    """
    ax = _axes(ax)
    lam = np.sort(np.asarray(eigenvalues, dtype=float))
    ax.plot(np.arange(len(lam)), lam, lw=1.2, label=label)
    ax.set_yscale("symlog", linthresh=floor)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("rank (ascending)")
    ax.set_ylabel("eigenvalue λ (symlog)")
    return ax


def plot_cluster_counts(spectra: Sequence[np.ndarray], eps: np.ndarray, *, labels: Sequence[str] | None = None,
                        ax: Axes | None = None) -> Axes:
    """n(ε) curves, one per spectrum, on log–log axes.

    Args:
        spectra: eigenvalue arrays.
        eps: ``ndarray[m]`` resolutions (positive).
        labels: legend entry per spectrum.
    """
    ax = _axes(ax)
    for i, lam in enumerate(spectra):
        ax.plot(eps, cluster_counts(lam, eps), lw=1.4, label=None if labels is None else labels[i])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("resolution ε")
    ax.set_ylabel("clusters n(ε)")
    if labels is not None:
        ax.legend(frameon=False)
    return ax


def plot_truncated_dendrogram(linkage: np.ndarray, *, top: int = 30, ax: Axes | None = None,
                              log_height: bool = True) -> Axes:
    """A dendrogram truncated to its last ``top`` merges (``scipy`` ``truncate_mode="lastp"``).

    Leaves show the number of eigenvalues (or parameters) they hold, in parentheses.
    """
    ax = _axes(ax, (7, 3.5))
    Z = np.array(linkage, dtype=float, copy=True)
    if log_height:
        # Heights span many decades; plot log10(1 + h/h_min) so the small merges stay visible.
        positive = Z[:, 2][Z[:, 2] > 0]
        h0 = positive.min() if positive.size else 1.0
        Z[:, 2] = np.log10(1 + Z[:, 2] / h0)
    hierarchy.dendrogram(Z, truncate_mode="lastp", p=top, ax=ax, color_threshold=0, above_threshold_color="k",
                         leaf_rotation=90, leaf_font_size=7)
    ax.set_ylabel("log10(1 + height / min height)" if log_height else "merge height")
    return ax


def plot_spectrum_evolution(steps: Sequence[int], spectra: Sequence[np.ndarray], *, n_lines: int = 20,
                            ax: Axes | None = None, floor: float = 1e-6) -> Axes:
    """Eigenvalue trajectories over training: the ``n_lines`` largest positive eigenvalues and the ``n_lines``
    largest-magnitude negative ones (as ``|λ|``, dashed), on a log axis, against the training step.

    Args:
        steps: training step of each spectrum (``0`` is drawn at ``1`` on the log step axis).
        spectra: ascending eigenvalue arrays, one per step.
    """
    ax = _axes(ax, (7, 4))
    x = np.maximum(np.asarray(steps, dtype=float), 1)
    top = np.array([np.sort(s)[::-1][:n_lines] for s in spectra])  # [T, n_lines], largest first
    bottom = np.array([np.sort(s)[:n_lines] for s in spectra])  # most negative first
    palette = plt.cm.viridis(np.linspace(0, 0.9, n_lines))
    for i in range(n_lines):
        ax.plot(x, np.where(top[:, i] > floor, top[:, i], np.nan), color=palette[i], lw=1)
        ax.plot(x, np.where(-bottom[:, i] > floor, -bottom[:, i], np.nan), color=palette[i], lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("eigenvalue (solid λ > 0, dashed |λ| for λ < 0)")
    return ax


def plot_cluster_heatmap(steps: Sequence[int], spectra: Sequence[np.ndarray], eps: np.ndarray, *,
                         ax: Axes | None = None) -> Axes:
    """n(ε) over training as a heatmap: rows log ε, columns checkpoints, log colour scale."""
    import matplotlib.colors as mcolors

    ax = _axes(ax, (8, 4))
    counts = np.array([cluster_counts(s, eps) for s in spectra]).T  # [len(eps), T]
    mesh = ax.pcolormesh(np.arange(len(steps) + 1), _edges(np.log10(eps)), counts,
                         norm=mcolors.LogNorm(vmin=1, vmax=max(2, counts.max())), cmap="magma", shading="flat")
    plt.colorbar(mesh, ax=ax, label="clusters n(ε)")
    ax.set_xticks(np.arange(len(steps)) + 0.5)
    ax.set_xticklabels([str(s) for s in steps], rotation=90, fontsize=7)
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel("log10 ε")
    return ax


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (for pcolormesh)."""
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def plot_gap_barcode(steps: Sequence[int], gaps: Sequence[np.ndarray], *, ax: Axes | None = None) -> Axes:
    """The top spectral gaps at each checkpoint: a vertical bar from the lower to the upper eigenvalue of each gap
    (symlog axis), the widest gap darkest.

    Args:
        gaps: per checkpoint, ``ndarray[top, 3]`` of ``(gap, lower, upper)`` from
            :func:`hessian_core.spectral_gaps` (largest first).
    """
    ax = _axes(ax, (8, 4))
    for t, g in enumerate(gaps):
        for rank, (_, lo, hi) in enumerate(g):
            ax.plot([t, t], [lo, hi], lw=6, solid_capstyle="butt",
                    color=plt.cm.Blues(1 - 0.7 * rank / max(1, len(g) - 1)), alpha=0.9)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xticks(np.arange(len(steps)))
    ax.set_xticklabels([str(s) for s in steps], rotation=90, fontsize=7)
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel("gap span [lower λ, upper λ] (symlog)")
    return ax


def plot_summary(steps: Sequence[int], series: dict[str, Sequence[float]], *, log: Sequence[str] = (),
                 ncols: int = 3, mark_step: float | None = None) -> plt.Figure:
    """Small multiples of named quantities over training (log step axis; ``log`` names get a log y axis).

    ``mark_step`` draws a vertical line (e.g. a transition) in every panel.
    """
    names = list(series)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.8 * nrows), squeeze=False)
    x = np.maximum(np.asarray(steps, dtype=float), 1)
    for ax, name in zip(axes.flat, names):
        ax.plot(x, series[name], marker="o", ms=3, lw=1.2)
        ax.set_xscale("log")
        if name in log:
            ax.set_yscale("log")
        if mark_step is not None:
            ax.axvline(max(mark_step, 1), color="C3", lw=1, ls=":")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def save_dendrogram_gif(path: str, steps: Sequence[int], spectra: Sequence[np.ndarray], *, top: int = 30,
                        fps: float = 2.0) -> str:
    """An animated GIF of the truncated spectral dendrogram over checkpoints (matplotlib's Pillow writer).

    The height axis is fixed across frames (log10 of merge height), so frames are comparable.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    linkages = [eigen_linkage(s) for s in spectra]
    heights = np.concatenate([Z[-top:, 2] for Z in linkages])
    lo = np.log10(max(heights[heights > 0].min(), 1e-12)) if (heights > 0).any() else -12
    hi = np.log10(max(heights.max(), 1e-12)) + 0.2
    fig, ax = plt.subplots(figsize=(7, 3.5))

    def draw(i: int) -> None:
        ax.clear()
        Z = linkages[i].copy()
        Z[:, 2] = np.log10(np.maximum(Z[:, 2], 10**lo)) - lo
        hierarchy.dendrogram(Z, truncate_mode="lastp", p=top, ax=ax, color_threshold=0,
                             above_threshold_color="k", no_labels=True)
        ax.set_ylim(0, hi - lo)
        ax.set_ylabel(f"log10 height + {-lo:.0f}")
        ax.set_title(f"step {steps[i]}: last {top} merges")

    animation = FuncAnimation(fig, draw, frames=len(linkages))
    animation.save(path, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return path


def plot_conv_filters(weight: np.ndarray, *, ncols: int = 8) -> plt.Figure:
    """First-layer convolution filters ``weight: [out, 1, k, k]`` as images (diverging colours, shared scale)."""
    w = np.asarray(weight)[:, 0]
    nrows = -(-len(w) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.2 * nrows), squeeze=False)
    bound = np.abs(w).max()
    for ax in axes.flat:
        ax.axis("off")
    for ax, filt in zip(axes.flat, w):
        ax.imshow(filt, cmap="RdBu_r", vmin=-bound, vmax=bound)
    return fig


def _shade_window(ax: Axes, window: tuple[float | None, float | None] | None) -> None:
    """Shade ``[start, end]`` on a log step axis (steps ``<= 0`` drawn at 1); nothing if either end is None."""
    if window is not None and None not in window:
        ax.axvspan(max(window[0], 1), max(window[1], 1), color="C3", alpha=0.12, lw=0, label="transition")


def plot_grokking_curves(steps: Sequence[int], train_acc: Sequence[float], test_acc: Sequence[float], *,
                         train_loss: Sequence[float] | None = None, test_loss: Sequence[float] | None = None,
                         window: tuple[float | None, float | None] | None = None,
                         marks: dict[str, float | None] | None = None,
                         axes: Sequence[Axes] | None = None) -> list[Axes]:
    """Train/test accuracy (and loss, if given) against the training step on a log axis, the transition shaded.

    Args:
        steps: ``[T]`` logged steps (``0`` is drawn at ``1``).
        train_acc, test_acc: ``[T]`` accuracies in [0, 1], drawn in percent.
        train_loss, test_loss: ``[T]`` losses; when both are given a second panel shows them on a log axis.
        window: ``(start, end)`` steps of the transition to shade (e.g. from
            :func:`hessian_book.curves.transition_window`); skipped if None or an end is None.
        marks: label -> step of dotted vertical lines (e.g. the memorisation step); None steps are skipped.
        axes: where to draw (one axis, or two with losses); new ones if None.
    Returns:
        the axes drawn on: ``[accuracy]`` or ``[accuracy, loss]``.
    """
    with_loss = train_loss is not None and test_loss is not None
    n_panels = 2 if with_loss else 1
    if axes is None:
        axes = list(plt.subplots(1, n_panels, figsize=(6 * n_panels, 3.6), squeeze=False)[1][0])
    if len(axes) < n_panels:
        raise ValueError(f"need {n_panels} axes, got {len(axes)}")
    x = np.maximum(np.asarray(steps, dtype=float), 1)
    panels = [(axes[0], 100 * np.asarray(train_acc), 100 * np.asarray(test_acc), "accuracy (%)", False)]
    if with_loss:
        panels.append((axes[1], np.asarray(train_loss), np.asarray(test_loss), "cross-entropy", True))
    for ax, train, test, ylabel, log_y in panels:
        ax.plot(x, train, lw=1.4, label="train")
        ax.plot(x, test, lw=1.4, label="test")
        _shade_window(ax, window)
        for i, (label, step) in enumerate((marks or {}).items()):
            if step is not None:
                ax.axvline(max(step, 1), color=f"C{4 + i}", ls=":", lw=1.2, label=label)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
    axes[0].legend(frameon=False, fontsize=8)
    return list(axes[:n_panels])


def plot_density_evolution(steps: Sequence[int], densities: Sequence, *, scale: float = 1e-3, n_grid: int = 400,
                           bandwidth: float = 0.15, ax: Axes | None = None) -> Axes:
    """SLQ spectral densities over training as a heatmap on a signed-log eigenvalue axis.

    Each checkpoint's quadrature nodes ``theta`` are mapped to ``u = asinh(theta / scale)`` (linear within
    ``scale`` of zero, logarithmic beyond, sign kept) and smoothed there with a Gaussian of width ``bandwidth``,
    so the near-zero bulk and the outliers decades away are both visible. Colour is ``log10`` of the density per
    unit ``u`` (the fraction of eigenvalues per unit of the transformed axis).

    Args:
        steps: ``[T]`` checkpoint steps (column labels).
        densities: ``T`` objects with ``nodes`` and ``weights`` ``ndarray[n_probes, m]``, such as
            :class:`hessian_core.SpectralDensity`.
        scale: eigenvalue magnitude where the axis turns from linear to logarithmic.
        n_grid: grid points on the ``u`` axis.
        bandwidth: Gaussian width in ``u``.
    """
    if not (scale > 0 and bandwidth > 0):
        raise ValueError(f"scale={scale!r} and bandwidth={bandwidth!r} must be > 0")
    ax = _axes(ax, (8, 4))
    mapped = [np.arcsinh(np.asarray(d.nodes, dtype=float) / scale) for d in densities]
    lo = min(u.min() for u in mapped) - 3 * bandwidth
    hi = max(u.max() for u in mapped) + 3 * bandwidth
    grid = np.linspace(lo, hi, n_grid)
    columns = []
    for u, d in zip(mapped, densities):
        w = np.asarray(d.weights, dtype=float).reshape(-1) / u.shape[0]  # mean over probes
        kernel = np.exp(-0.5 * ((grid[:, None] - u.reshape(-1)[None, :]) / bandwidth) ** 2)
        columns.append(kernel @ w / (bandwidth * np.sqrt(2 * np.pi)))
    rho = np.log10(np.maximum(np.array(columns).T, 1e-8))  # [n_grid, T]
    mesh = ax.pcolormesh(np.arange(len(steps) + 1), _edges(grid), rho, cmap="viridis", shading="flat",
                         vmin=max(rho.min(), rho.max() - 6))
    plt.colorbar(mesh, ax=ax, label="log10 density")
    ticks = np.array([-1e2, -1, -1e-2, 0, 1e-2, 1, 1e2, 1e4])
    ticks = ticks[(np.arcsinh(ticks / scale) >= lo) & (np.arcsinh(ticks / scale) <= hi)]
    ax.set_yticks(np.arcsinh(ticks / scale))
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.set_xticks(np.arange(len(steps)) + 0.5)
    ax.set_xticklabels([str(s) for s in steps], rotation=90, fontsize=7)
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel("eigenvalue λ (asinh scale)")
    return ax


def plot_seed_spread(steps: Sequence[int], values: np.ndarray, *, ax: Axes | None = None, label: str | None = None,
                     color=None, log: bool = False, runs: bool = False) -> Axes:
    """One quantity over training for several runs (seeds): the mean as a line, the min–max range shaded.

    Args:
        steps: ``[T]`` logged steps.
        values: ``ndarray[R, T]``, one row per run (NaN where missing).
        log: log y axis, and the geometric mean as the centre (values must be positive).
        runs: also draw every run as a thin line.
    """
    ax = _axes(ax)
    values = np.asarray(values, dtype=float)
    spread = seed_spread(values, log=log)
    line, = ax.plot(steps, spread["centre"], color=color, lw=1.5, label=label)
    ax.fill_between(steps, spread["low"], spread["high"], color=line.get_color(), alpha=0.2, lw=0)
    if runs:
        for row in values:
            ax.plot(steps, row, color=line.get_color(), lw=0.5, alpha=0.6)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    return ax



def plot_fiedler_dendrogram(linkage: np.ndarray, groups: np.ndarray, group_names: Sequence[str], *,
                            leaves: int = 24, axes: tuple[Axes, Axes] | None = None) -> tuple[Axes, Axes]:
    """A parameter dendrogram truncated to its top ``leaves`` clusters, each leaf coloured by layer composition.

    Top: the truncated tree (merge heights on the y axis). Bottom: under each leaf a stacked bar with the fraction
    of that cluster's parameters from each group (layer), so a leaf's colour says which layers it holds.

    Args:
        linkage: ``[P-1, 4]`` scipy linkage over parameters (e.g. :func:`hessian_core.fiedler_linkage`).
        groups: ``int[P]`` group (layer) of each parameter, in ``[0, len(group_names))``.
        group_names: legend labels.
        leaves: how many clusters to show.
        axes: (tree axes, bar axes); a new figure if ``None``.
    """
    import seaborn as sns

    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    tree_ax, bar_ax = axes
    n = len(groups)
    info = hierarchy.dendrogram(linkage, truncate_mode="lastp", p=leaves, ax=tree_ax, no_labels=True,
                                color_threshold=0, above_threshold_color="0.3", show_leaf_counts=False)
    _, nodes = hierarchy.to_tree(linkage, rd=True)
    colours = sns.color_palette("colorblind", len(group_names))
    # scipy places leaf i at x = 10 i + 5.
    for i, leaf in enumerate(info["leaves"]):
        members = np.asarray(nodes[leaf].pre_order()) if leaf >= n else np.array([leaf])
        fractions = np.bincount(groups[members], minlength=len(group_names)) / len(members)
        bottom = 0.0
        for g, f in enumerate(fractions):
            bar_ax.bar(10 * i + 5, f, width=9, bottom=bottom, color=colours[g],
                       label=group_names[g] if i == 0 else None)
            bottom += f
        bar_ax.text(10 * i + 5, 1.02, str(len(members)), ha="center", va="bottom", fontsize=7, rotation=90)
    tree_ax.set_ylabel("merge height")
    bar_ax.set_ylim(0, 1.35)
    bar_ax.set_ylabel("layer share")
    bar_ax.set_yticks([0, 0.5, 1])
    bar_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return tree_ax, bar_ax
