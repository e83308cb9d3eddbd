"""An interactive checkpoint explorer for the static book: scrub through training with a slider.

At the chosen checkpoint the explorer shows (a) the eigenvalue spectrum by rank on a signed-log axis, (b) the
cluster counts n(ε) of the ε-dendrogram with its largest gaps marked, and (c) the training curves with a line at
the checkpoint's step. For several runs (e.g. grokking's replicates) a dropdown selects the run, and the slider then
moves through that run's checkpoints.

Built with plotly: the slider is plotly *frames* (one per run and checkpoint) and a layout ``sliders`` entry whose
steps call plotly.js's ``animate``; the run selector is an ``updatemenus`` dropdown whose buttons ``update`` the
traces and swap in that run's slider. The page needs no hand-written JavaScript and no server: the figure (a plain
plotly figure dict, built without plotly's slow per-frame validation) travels inside the page with its arrays as
base64 typed arrays, and plotly.js (``plotly.min.js``, shipped with the plotly wheel) is loaded from a *relative*
path. The book ships that file once, as ``_static/plotly.min.js``
(``book/sphinx_assets.py`` copies it when a page references it); no CDN is used and nothing is inlined twice.

Data are kept small: each checkpoint's spectrum is decimated (:func:`decimate_spectrum`) to at most ``max_points``
values that keep both extremes and the endpoints of the largest gaps exactly, filled with quantiles; n(ε) and the
gaps are computed from the *full* spectrum (decimating removes points and so creates gaps that the spectrum does
not have), with ``hessian_core``'s :func:`~hessian_core.cluster_counts` and :func:`~hessian_core.spectral_gaps`.

Use from a notebook (the static PNG stays beside it for print and for readers without JavaScript)::

    from hessian_book.explorer import ExplorerRun, explorer_figure, display_explorer
    run = ExplorerRun(name="seed 0", steps=steps, spectra=spectra,
                      curves={"train loss": (curve_steps, train_loss), "test loss": (curve_steps, test_loss)})
    display_explorer(explorer_figure([run], curves_log_y=True))   # a text/html output; myst-nb renders it as is

(Not ``fig.show()``: under papermill plotly's default renderer emits only ``application/vnd.plotly.v1+json``,
which myst-nb does not render, and the book silences its unknown-mime-type warning; plotly's ``notebook``
renderer would inline the 4.8 MB plotly.js into the notebook, ``notebook_connected`` loads it from a CDN.)

The default script path, :data:`BOOK_PLOTLY_JS`, is right for a chapter page built from
``notebooks/_executed/<chapter>.ipynb``; in Jupyter itself (no ``_static``) the output stays empty.
:func:`write_explorer_page` writes a standalone page with ``plotly.min.js`` beside it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import numbers
import shutil
from html import escape as html_escape
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from hessian_core import cluster_counts, spectral_gaps

__all__ = [
    "BOOK_PLOTLY_JS",
    "PLOTLY_JS_NAME",
    "ExplorerRun",
    "decimation_ranks",
    "decimate_spectrum",
    "signed_log",
    "typed_array",
    "explorer_figure",
    "explorer_html",
    "display_explorer",
    "FIRST_AND_LAST",
    "explorer_glue",
    "write_explorer_page",
    "plotly_bundle_path",
]

PLOTLY_JS_NAME = "plotly.min.js"
#: ``plotly.min.js`` as seen from a chapter page (``_build/html/notebooks/_executed/<chapter>.html``).
BOOK_PLOTLY_JS = f"../../_static/{PLOTLY_JS_NAME}"
#: CSS class of the element that wraps every explorer (what ``book/sphinx_assets.py`` and page checks look for).
EXPLORER_CLASS = "hb-explorer"

# Trace order of every explorer figure; frames update the per-checkpoint ones (curves are per run).
_SPECTRUM, _SPECTRUM_GAPS, _COUNTS, _COUNT_GAPS = 0, 1, 2, 3
_N_FIXED = 4  # then one trace per curve, then the step marker
# plotly.js typed-array dtypes (little-endian)
_TYPED = {"i1": "<i1", "u1": "<u1", "i2": "<i2", "u2": "<u2", "i4": "<i4", "u4": "<u4", "f4": "<f4", "f8": "<f8"}


def _check_int(value: Any, *, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return int(value)


def _check_spectrum(values: Any, *, name: str) -> NDArray[np.float64]:
    """A 1-D, non-empty, finite real array as float64 (any order)."""
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, found {int(np.count_nonzero(~np.isfinite(array)))} NaN/inf value(s)")
    return array


def _check_budget(max_points: Any, n_gaps: Any) -> tuple[int, int]:
    n_gaps = _check_int(n_gaps, name="n_gaps", minimum=0)
    max_points = _check_int(max_points, name="max_points", minimum=2)
    if max_points < 2 * n_gaps + 2:
        raise ValueError(f"max_points={max_points} must be >= 2 * n_gaps + 2 = {2 * n_gaps + 2} to keep both extremes "
                         f"and both endpoints of the n_gaps={n_gaps} largest gaps")
    return max_points, n_gaps


def _ranks(sorted_spectrum: NDArray[np.float64], max_points: int, n_gaps: int) -> NDArray[np.intp]:
    n = sorted_spectrum.size
    if n <= max_points:
        return np.arange(n)
    keep = {0, n - 1}
    if n_gaps and sorted_spectrum[-1] > sorted_spectrum[0]:
        # rows (gap, lower, upper) between consecutive *distinct* values, largest first (ties: lower value first)
        for _, lower, upper in spectral_gaps(sorted_spectrum, top=n_gaps):
            keep.add(int(np.searchsorted(sorted_spectrum, lower, side="right")) - 1)  # last copy of the lower value
            keep.add(int(np.searchsorted(sorted_spectrum, upper, side="left")))  # first copy of the upper value
    # Quantiles: evenly spaced ranks (order statistics), including ranks 0 and n-1, which are already kept, so at
    # most max_points - len(keep) new ones.
    fill = np.round(np.linspace(0, n - 1, max_points - len(keep) + 2)).astype(np.intp)
    return np.union1d(np.fromiter(keep, dtype=np.intp), fill)


def decimation_ranks(eigenvalues: ArrayLike, *, max_points: int, n_gaps: int = 10) -> NDArray[np.intp]:
    """Ranks (positions in the ascending spectrum) that :func:`decimate_spectrum` keeps.

    Args:
        eigenvalues: ``ndarray[n]``, real and finite, any order.
        max_points: largest number of ranks returned, ``>= 2 * n_gaps + 2``.
        n_gaps: how many of the largest gaps keep both endpoints.

    Returns:
        ``ndarray[k]`` of ascending, distinct ranks in ``0 .. n-1``, ``k <= max_points`` (``k = n`` when
        ``n <= max_points``: nothing is dropped). Always holds ``0`` and ``n - 1``, and for each of the
        ``n_gaps`` largest gaps between consecutive distinct eigenvalues (:func:`hessian_core.spectral_gaps`) the
        last rank of its lower value and the first rank of its upper value; the rest are evenly spaced ranks
        (empirical quantiles).
    """
    max_points, n_gaps = _check_budget(max_points, n_gaps)
    spectrum = _check_spectrum(eigenvalues, name="eigenvalues")
    return _ranks(np.sort(spectrum), max_points, n_gaps)


def decimate_spectrum(eigenvalues: ArrayLike, *, max_points: int, n_gaps: int = 10) -> NDArray[np.float64]:
    """A sorted subset of at most ``max_points`` eigenvalues that keeps the dendrogram's top branch points exactly.

    Keeps both extremes, both endpoints of each of the ``n_gaps`` largest gaps between consecutive distinct
    eigenvalues (the top branch points of the ε-dendrogram), and fills the rest of the budget with quantiles
    (order statistics at evenly spaced ranks). Every returned value is one of the input values.

    Args:
        eigenvalues: ``ndarray[n]``, real and finite, any order.
        max_points: largest number of values returned, an integer ``>= 2 * n_gaps + 2``.
        n_gaps: how many of the largest gaps keep both endpoints, an integer ``>= 0``.

    Returns:
        ``ndarray[k]``, ascending, ``k <= max_points``; the whole sorted spectrum when ``n <= max_points``.

    Raises:
        ValueError / TypeError: naming the parameter, for a bad ``max_points`` or ``n_gaps`` (checked first) or
        ``eigenvalues`` that are not a 1-D, non-empty, finite real array.
    """
    max_points, n_gaps = _check_budget(max_points, n_gaps)
    spectrum = np.sort(_check_spectrum(eigenvalues, name="eigenvalues"))
    return spectrum[_ranks(spectrum, max_points, n_gaps)]


def signed_log(values: ArrayLike, *, scale: float) -> NDArray[np.float64]:
    """``asinh(values / scale)``: linear within ``scale`` of zero, logarithmic beyond, sign kept.

    The signed-log eigenvalue axis of :func:`hessian_book.plots.plot_density_evolution` (plotly has no symlog
    axis, so the explorer plots transformed values and labels the ticks in λ).
    """
    if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale={scale!r} must be a finite number > 0")
    return np.arcsinh(np.asarray(values, dtype=np.float64) / scale)


def _signed_log_ticks(lo: float, hi: float, scale: float) -> tuple[list[float], list[str]]:
    """Tick positions (on the signed-log axis) and labels (in λ): 0 and ± powers of ten above ``scale`` within
    [lo, hi]."""
    top = max(abs(lo), abs(hi), scale)
    # from the first decade above scale: ±scale itself sits too close to 0 on this axis (asinh(1) = 0.88)
    exponents = list(range(math.floor(math.log10(scale)) + 1, math.ceil(math.log10(top)) + 1))
    stride = max(1, math.ceil(len(exponents) / 6))  # at most ~6 decades labelled per sign
    exponents = exponents[::-1][::stride][::-1]
    ticks = [-(10.0 ** e) for e in exponents[::-1]] + [0.0] + [10.0 ** e for e in exponents]
    ticks = [t for t in ticks if lo <= t <= hi] or [0.0]
    return [float(signed_log(t, scale=scale)) for t in ticks], [f"{t:g}" for t in ticks]


@dataclass(frozen=True)
class ExplorerRun:
    """One training run's checkpoints, as :func:`explorer_figure` takes them.

    Attributes:
        name: the run's label (in the run selector and the slider).
        steps: ``ndarray[T]`` training step of each checkpoint, strictly increasing, ``T >= 1``.
        spectra: ``T`` eigenvalue arrays ``ndarray[n_t]`` (any order; ``n_t`` may differ between checkpoints).
        curves: ``{curve name: (steps ndarray[m], values ndarray[m])}``: training curves (losses, accuracies,
            progress measures), drawn whole; NaN values are left out of the line.
    """

    name: str
    steps: NDArray[np.float64]
    spectra: tuple[NDArray[np.float64], ...]
    curves: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]]

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        steps = _check_spectrum(self.steps, name="steps")
        if np.any(np.diff(steps) <= 0):
            raise ValueError("steps must be strictly increasing")
        if isinstance(self.spectra, np.ndarray) and self.spectra.ndim == 1:
            raise ValueError("spectra must be a sequence of T eigenvalue arrays (one per step), got one 1-D array")
        spectra = tuple(_check_spectrum(s, name=f"spectra[{i}]") for i, s in enumerate(self.spectra))
        if len(spectra) != steps.size:
            raise ValueError(f"spectra holds {len(spectra)} arrays but steps holds {steps.size} checkpoints")
        if not isinstance(self.curves, Mapping):
            raise TypeError(f"curves must be a mapping name -> (steps, values), got {type(self.curves).__name__}")
        curves = {}
        for key, pair in self.curves.items():
            if len(pair) != 2:
                raise ValueError(f"curves[{key!r}] must be a pair (steps, values)")
            x = _check_spectrum(pair[0], name=f"curves[{key!r}] steps")
            y = np.asarray(pair[1], dtype=np.float64)
            if y.shape != x.shape:
                raise ValueError(f"curves[{key!r}]: values have shape {y.shape}, steps {x.shape}")
            curves[str(key)] = (x, y)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "spectra", spectra)
        object.__setattr__(self, "curves", curves)


def _frame_name(run: int, checkpoint: int) -> str:
    return f"run{run}-ckpt{checkpoint}"


def _step_label(step: float) -> str:
    return str(int(step)) if float(step).is_integer() else f"{step:g}"


def typed_array(values: ArrayLike, dtype: str = "f8") -> dict:
    """``values`` as plotly.js's base64 typed-array spec ``{"dtype", "bdata"}`` (little-endian, exact in ``f8``).

    plotly.js decodes these in data, frames and ``update`` arguments; the JSON stays ~11 characters per float64
    instead of ~20 for a decimal repr. ``dtype`` is one of plotly's ``i1 u1 i2 u2 i4 u4 f4 f8``.
    """
    if dtype not in _TYPED:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(_TYPED)}")
    array = np.ascontiguousarray(np.asarray(values).reshape(-1), dtype=_TYPED[dtype])
    return {"dtype": dtype, "bdata": base64.b64encode(array.tobytes()).decode("ascii")}


def _rank_array(ranks: NDArray[np.intp]) -> dict:
    return typed_array(ranks, "u2" if ranks.size == 0 or ranks.max() < 2**16 else "u4")


def _step_array(steps: NDArray[np.float64]) -> dict:
    integral = np.all(steps == np.round(steps)) and steps.min() >= 0 and steps.max() < 2**32
    return typed_array(steps, "u4" if integral else "f8")


def explorer_figure(runs: ExplorerRun | Sequence[ExplorerRun], *, max_points: int = 300, n_gaps: int = 10,
                    eps: ArrayLike | None = None, n_eps: int = 64, scale: float = 1e-3, curves_log_x: bool = False,
                    curves_log_y: bool = False, title: str | None = None, height: int = 760,
                    spectrum_title: str = "spectrum (signed log), largest gaps' ends in red",
                    counts_title: str = "clusters n(ε), largest gaps dotted") -> dict:
    """The checkpoint explorer: a plotly figure with a slider over checkpoints and, for several runs, a run selector.

    Panels at the chosen checkpoint: the decimated spectrum by rank on the signed-log axis ``asinh(λ / scale)``
    (ticks labelled in λ; hover shows λ) with the endpoints of the ``n_gaps`` largest gaps marked; the cluster
    counts n(ε) of the full spectrum on the ``eps`` grid (log–log) with a dotted vertical line at each of those gaps'
    widths (n(ε) drops by one there); and the run's training curves with a vertical line at the checkpoint's step.
    Axis ranges are fixed over all runs and checkpoints, so what moves is the data.

    Args:
        runs: one :class:`ExplorerRun` or several (several: a dropdown selects the run; every run must have the same
            curve names, in the same order).
        max_points: spectrum values kept per checkpoint (:func:`decimate_spectrum`).
        n_gaps: largest gaps kept exactly and marked.
        eps: ``ndarray[m]`` resolutions for n(ε), positive and strictly increasing; default ``n_eps`` log-spaced
            values from half the smallest to twice the largest positive gap of all spectra.
        n_eps: size of the default ``eps`` grid, ``>= 2``.
        scale: eigenvalue magnitude where the spectrum axis turns from linear to logarithmic, ``> 0``.
        curves_log_x, curves_log_y: draw the curves on a log step / value axis (plotly then leaves non-positive
            steps / values out).
        title: figure title.
        height: figure height in pixels.
        spectrum_title, counts_title: the two top panels' titles (say what the spectrum is when it is not the
            whole spectrum, e.g. the extremes Lanczos found).

    Returns:
        The figure as a plain plotly figure dict (``data``, ``layout``, ``frames``), unvalidated because plotly's
        validation of a few hundred frames takes far longer than building them (``plotly.graph_objects.Figure``
        accepts it; the tests validate it). Arrays are :func:`typed_array` specs (curves' values in ``f4``, their
        integer steps in ``u4``). Traces: 0 spectrum (``x`` ranks,
        ``y = asinh(customdata / scale)`` in ``f4``, ``customdata`` the decimated eigenvalues in ``f8``), 1 the
        gap endpoints (same fields), 2 n(ε) (``x`` = ``eps``, ``y`` counts), 3 the gap lines (``x``), then one trace
        per curve, then the step marker (``x`` = ``[step, step]``). Frame ``run{r}-ckpt{i}`` holds run ``r``'s
        checkpoint ``i`` for traces 0-3 and the marker.
    """
    max_points, n_gaps = _check_budget(max_points, n_gaps)
    runs = [runs] if isinstance(runs, ExplorerRun) else list(runs)
    if not runs:
        raise ValueError("runs must hold at least one ExplorerRun")
    for i, run in enumerate(runs):
        if not isinstance(run, ExplorerRun):
            raise TypeError(f"runs[{i}] must be an ExplorerRun, got {type(run).__name__}")
    if len({run.name for run in runs}) != len(runs):
        raise ValueError(f"runs must have distinct names, got {[run.name for run in runs]}")
    curve_names = list(runs[0].curves)
    for run in runs[1:]:
        if list(run.curves) != curve_names:
            raise ValueError(f"every run must have the same curves: {runs[0].name!r} has {curve_names}, "
                             f"{run.name!r} has {list(run.curves)}")
    signed_log(0.0, scale=scale)  # validates scale
    height = _check_int(height, name="height", minimum=200)
    sorted_spectra = [[np.sort(s) for s in run.spectra] for run in runs]
    if eps is None:
        n_eps = _check_int(n_eps, name="n_eps", minimum=2)
        gaps = np.concatenate([np.diff(s) for spectra in sorted_spectra for s in spectra])
        gaps = gaps[gaps > 0]
        lo, hi = (gaps.min() / 2, gaps.max() * 2) if gaps.size else (0.5, 2.0)
        eps = np.geomspace(lo, hi, n_eps)
    else:
        eps = _check_spectrum(eps, name="eps")
        if np.any(eps <= 0) or np.any(np.diff(eps) <= 0):
            raise ValueError("eps must be positive and strictly increasing")

    # Per run and checkpoint, what its frame shows.
    checkpoints = []  # [run][checkpoint] -> dict
    for run, spectra in zip(runs, sorted_spectra):
        per_run = []
        for step, spectrum in zip(run.steps, spectra):
            ranks = _ranks(spectrum, max_points, n_gaps)
            top = spectral_gaps(spectrum, top=n_gaps) if n_gaps and spectrum[-1] > spectrum[0] else np.empty((0, 3))
            gap_ranks = np.array([[np.searchsorted(spectrum, lower, side="right") - 1,
                                   np.searchsorted(spectrum, upper, side="left")] for _, lower, upper in top],
                                 dtype=np.intp).reshape(-1)
            per_run.append(dict(step=float(step), ranks=ranks, values=spectrum[ranks], gap_widths=top[:, 0],
                                gap_ranks=gap_ranks, gap_values=spectrum[gap_ranks],
                                counts=cluster_counts(spectrum, eps)))
        checkpoints.append(per_run)

    everything = [d for per_run in checkpoints for d in per_run]
    lam_lo = min(float(d["values"][0]) for d in everything)
    lam_hi = max(float(d["values"][-1]) for d in everything)
    y_lo, y_hi = float(signed_log(lam_lo, scale=scale)), float(signed_log(lam_hi, scale=scale))
    pad = 0.04 * max(y_hi - y_lo, 1.0)
    max_rank = max(int(d["ranks"][-1]) for d in everything)
    count_max = max(int(d["counts"].max()) for d in everything)
    curve_values = np.concatenate([y for run in runs for _, y in run.curves.values()] + [np.empty(0)])
    curve_values = curve_values[np.isfinite(curve_values) & ((curve_values > 0) if curves_log_y else True)]
    curve_lo, curve_hi = (float(curve_values.min()), float(curve_values.max())) if curve_values.size else (0.0, 1.0)

    def checkpoint_traces(d: dict) -> list[dict]:
        """Traces 0-3 and the step marker at one checkpoint (what a frame replaces)."""
        return [
            dict(x=_rank_array(d["ranks"]), y=typed_array(signed_log(d["values"], scale=scale), "f4"),
                 customdata=typed_array(d["values"])),
            dict(x=_rank_array(d["gap_ranks"]), y=typed_array(signed_log(d["gap_values"], scale=scale), "f4"),
                 customdata=typed_array(d["gap_values"])),
            dict(y=typed_array(d["counts"], "u4" if count_max >= 2**16 else "u2")),
            # a vertical segment per gap: (w, 1), (w, count_max), break; y is fixed (trace 3 of the base figure)
            dict(x=typed_array(np.repeat(d["gap_widths"], 3) * np.tile([1.0, 1.0, np.nan], len(d["gap_widths"])))),
            dict(x=typed_array([d["step"], d["step"]])),
        ]

    def curve_traces(run: ExplorerRun) -> list[dict]:
        # drawn only, never read back as numbers: float32 values, integer steps as u4 (the run selector carries
        # every run's curves, so they are most of a many-run page)
        return [dict(x=_step_array(x), y=typed_array(y, "f4")) for x, y in run.curves.values()]

    spectrum, spectrum_gaps, counts, count_gaps, marker = checkpoint_traces(checkpoints[0][0])
    axes1, axes2, axes3 = dict(xaxis="x", yaxis="y"), dict(xaxis="x2", yaxis="y2"), dict(xaxis="x3", yaxis="y3")
    data = [
        dict(type="scatter", **axes1, **spectrum, mode="lines+markers", marker=dict(size=3), line=dict(width=1.2),
             name="spectrum", showlegend=False, hovertemplate="rank %{x}<br>λ = %{customdata:.6g}<extra></extra>"),
        dict(type="scatter", **axes1, **spectrum_gaps, mode="markers", name="largest gaps' endpoints",
             marker=dict(size=9, color="crimson", symbol="line-ew-open", line=dict(width=2)), showlegend=False,
             hovertemplate="endpoint of a largest gap<br>rank %{x}<br>λ = %{customdata:.6g}<extra></extra>"),
        dict(type="scatter", **axes2, x=typed_array(eps), **counts, mode="lines", line=dict(shape="hv", width=1.4),
             name="n(ε)", showlegend=False, hovertemplate="ε = %{x:.4g}<br>n(ε) = %{y}<extra></extra>"),
        dict(type="scatter", **axes2, **count_gaps, y=typed_array(np.tile([1.0, float(count_max), np.nan], n_gaps)),
             mode="lines", line=dict(color="crimson", width=1, dash="dot"), name="largest gaps", showlegend=False,
             hovertemplate="gap width ε = %{x:.4g}<extra></extra>"),
    ]
    data += [dict(type="scatter", **axes3, **xy, mode="lines", name=name, legendgroup="curves")
             for name, xy in zip(curve_names, curve_traces(runs[0]))]
    data.append(dict(type="scatter", **axes3, **marker, y=typed_array([curve_lo, curve_hi]), mode="lines",
                     line=dict(color="black", width=1, dash="dash"), name="checkpoint", showlegend=False,
                     hovertemplate="step %{x}<extra></extra>"))
    frame_traces = [_SPECTRUM, _SPECTRUM_GAPS, _COUNTS, _COUNT_GAPS, _N_FIXED + len(curve_names)]
    frames = [dict(name=_frame_name(r, i), data=checkpoint_traces(d), traces=frame_traces)
              for r, per_run in enumerate(checkpoints) for i, d in enumerate(per_run)]

    def slider(r: int) -> dict:
        return dict(active=0, x=0.0, len=1.0, y=0.0, yanchor="top", pad=dict(t=50, b=0),
                    currentvalue=dict(prefix=f"{runs[r].name}: step ", font=dict(size=13)),
                    steps=[dict(method="animate", label=_step_label(d["step"]),
                                args=[[_frame_name(r, i)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                                 transition=dict(duration=0))])
                           for i, d in enumerate(checkpoints[r])])

    tickvals, ticktext = _signed_log_ticks(lam_lo, lam_hi, scale)

    def panel_title(text: str, x: float, y: float) -> dict:
        return dict(text=text, x=x, y=y, xref="paper", yref="paper", xanchor="center", yanchor="bottom",
                    showarrow=False, font=dict(size=13))

    top_row, bottom_row = [0.6, 1.0], [0.0, 0.4]
    layout = dict(
        template="simple_white", height=height, margin=dict(t=100 if len(runs) > 1 else 50, b=130, l=70, r=20),
        sliders=[slider(0)], legend=dict(orientation="h", x=0.0, y=bottom_row[1] + 0.02, yanchor="bottom",
                                                 # one row: grouped traces would stack vertically over the top panels
                                                 traceorder="normal"),
        xaxis=dict(domain=[0.0, 0.42], anchor="y", title=dict(text="rank (ascending)"),
                   range=[-0.01 * max_rank - 0.5, 1.01 * max_rank + 0.5]),
        yaxis=dict(domain=top_row, anchor="x", title=dict(text="eigenvalue λ"), range=[y_lo - pad, y_hi + pad],
                   tickmode="array", tickvals=tickvals, ticktext=ticktext),
        xaxis2=dict(domain=[0.6, 1.0], anchor="y2", type="log", title=dict(text="resolution ε"),
                    range=[math.log10(eps[0]), math.log10(eps[-1])]),
        yaxis2=dict(domain=top_row, anchor="x2", type="log", title=dict(text="clusters n(ε)"),
                    range=[-0.05, math.log10(max(count_max, 2)) + 0.1]),
        xaxis3=dict(domain=[0.0, 1.0], anchor="y3", title=dict(text="training step"),
                    type="log" if curves_log_x else "linear"),
        yaxis3=dict(domain=bottom_row, anchor="x3", type="log" if curves_log_y else "linear"),
        annotations=[panel_title(str(spectrum_title), 0.21, 1.0), panel_title(str(counts_title), 0.8, 1.0)],
    )
    if title:
        layout["title"] = dict(text=title, x=0.5, xanchor="center")
    if len(runs) > 1:
        buttons = []
        for r, run in enumerate(runs):
            traces = checkpoint_traces(checkpoints[r][0])
            marker = traces.pop()
            traces += curve_traces(run) + [marker]
            # plotly.js "update": one value per trace, in trace order (None leaves the attribute unset)
            restyle = {key: [t.get(key) for t in traces] for key in ("x", "y", "customdata")}
            restyle["x"][_COUNTS] = typed_array(eps)
            restyle["y"][_COUNT_GAPS] = data[_COUNT_GAPS]["y"]
            restyle["y"][-1] = data[-1]["y"]
            buttons.append(dict(label=run.name, method="update", args=[restyle, {"sliders": [slider(r)]}]))
        layout["updatemenus"] = [dict(type="dropdown", buttons=buttons, active=0, x=0.0, xanchor="left", y=1.0,
                                      yanchor="bottom", pad=dict(b=30), showactive=True)]
        layout["annotations"].append(dict(text="run", x=0.0, y=1.0, xref="paper", yref="paper", xanchor="right",
                                          yanchor="bottom", xshift=-8, yshift=36, showarrow=False))
    return dict(data=data, layout=layout, frames=frames)


#: The browser checks of a chapter page's explorer (``book/check_pages.py``): the slider at the first run's first
#: and last checkpoints must draw the step and the largest eigenvalue that the page glues under these names
#: (:func:`explorer_glue` computes them from the run given to the explorer).
FIRST_AND_LAST: tuple[dict, ...] = (
    dict(run=0, checkpoint=0, step="explorer_step_first", lambda_max="explorer_lmax_first"),
    dict(run=0, checkpoint=-1, step="explorer_step_last", lambda_max="explorer_lmax_last"),
)


def explorer_glue(run: ExplorerRun) -> dict[str, float]:
    """The values :data:`FIRST_AND_LAST` names, from ``run`` (the explorer's first run): the step and the largest
    eigenvalue at its first and last checkpoints (the decimation keeps the largest exactly)."""
    if not isinstance(run, ExplorerRun):
        raise TypeError(f"run must be an ExplorerRun, got {type(run).__name__}")

    def step(value: float) -> float | int:
        return int(value) if float(value).is_integer() else float(value)

    return dict(explorer_step_first=step(run.steps[0]), explorer_lmax_first=float(np.max(run.spectra[0])),
                explorer_step_last=step(run.steps[-1]), explorer_lmax_last=float(np.max(run.spectra[-1])))


def _check_checks(checks: Any) -> list[dict]:
    out = []
    for i, check in enumerate(checks):
        if not isinstance(check, Mapping) or set(check) != {"run", "checkpoint", "step", "lambda_max"}:
            raise ValueError(f"checks[{i}] must be a mapping with exactly the keys run, checkpoint, step, lambda_max; "
                             f"got {check!r}")
        if not all(isinstance(check[k], int) and not isinstance(check[k], bool) for k in ("run", "checkpoint")) \
                or check["run"] < 0:
            raise ValueError(f"checks[{i}]: run must be an int >= 0 and checkpoint an int, got {check!r}")
        if not all(isinstance(check[k], str) and check[k] for k in ("step", "lambda_max")):
            raise ValueError(f"checks[{i}]: step and lambda_max must be glue names, got {check!r}")
        out.append(dict(check))
    return out


def _check_script_path(plotly_js: Any) -> str:
    if not isinstance(plotly_js, str) or not plotly_js.endswith(".js"):
        raise ValueError(f"plotly_js must be a path ending in .js, got {plotly_js!r}")
    if "://" in plotly_js or plotly_js.startswith("//"):
        raise ValueError(f"plotly_js must be a local relative path (the book works offline), got {plotly_js!r}")
    return plotly_js


def explorer_html(figure, *, plotly_js: str = BOOK_PLOTLY_JS, div_id: str | None = None,
                  checks: Sequence[Mapping] = ()) -> str:
    """The figure as an HTML fragment that loads plotly.js from ``plotly_js`` (a relative path; no CDN, not inlined).

    Args:
        figure: a plotly figure dict (:func:`explorer_figure`) or a ``plotly.graph_objects.Figure``.
        plotly_js: where the page finds ``plotly.min.js``, relative to the page (default: a chapter page's
            ``../../_static/plotly.min.js``).
        div_id: the graph's element id; default a hash of the figure, so the same figure gives the same bytes (a
            recorded notebook does not change on re-execution, unlike plotly's random default id).
        checks: what ``book/check_pages.py`` verifies in a browser, each ``{"run": r, "checkpoint": i, "step":
            glue name, "lambda_max": glue name}`` (e.g. :data:`FIRST_AND_LAST`): with run ``r`` selected and the
            slider moved to checkpoint ``i`` (negative: from the end), the drawn step marker and the largest drawn
            eigenvalue must equal the values the page's notebook glues under those names. Stored as the wrapper's
            ``data-checks`` attribute (JSON).

    Returns:
        ``<div class="hb-explorer">`` holding plotly's ``<script src=plotly_js>``, the graph ``<div>`` and the
        inline script that draws it (``Plotly.newPlot`` and ``Plotly.addFrames``; no animation starts by itself).
    """
    import plotly.io as pio

    plotly_js = _check_script_path(plotly_js)
    checks = _check_checks(checks)
    if not isinstance(figure, dict):
        figure = figure.to_dict()
    template = (figure.get("layout") or {}).get("template")
    if isinstance(template, str):  # unvalidated output needs the template itself, not its name
        figure = dict(figure, layout=dict(figure["layout"], template=pio.templates[template].to_plotly_json()))
    if div_id is None:
        digest = hashlib.sha256(json.dumps(figure, sort_keys=True, default=str).encode()).hexdigest()
        div_id = "hb-explorer-" + digest[:16]
    height = (figure.get("layout") or {}).get("height") or 600
    html = pio.to_html(figure, full_html=False, include_plotlyjs=plotly_js, auto_play=False, div_id=div_id,
                       default_height=f"{height}px", validate=False, config=dict(displaylogo=False, responsive=True))
    data = f" data-checks='{html_escape(json.dumps(checks, separators=(',', ':')))}'" if checks else ""
    return f'<div class="{EXPLORER_CLASS}"{data}>\n{html}\n</div>'


def display_explorer(figure, *, plotly_js: str = BOOK_PLOTLY_JS, checks: Sequence[Mapping] = ()):
    """An ``IPython.display.HTML`` of :func:`explorer_html`: the last expression of a notebook cell, rendered by
    myst-nb as the page's raw HTML (mime type ``text/html``; no require.js, no widget state)."""
    from IPython.display import HTML

    return HTML(explorer_html(figure, plotly_js=plotly_js, checks=checks))


def plotly_bundle_path() -> Path:
    """Path of the ``plotly.min.js`` that the installed plotly wheel carries (the file the book ships once)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"plotly's bundled {PLOTLY_JS_NAME} is missing: {path}")
    return path


def write_explorer_page(figure, directory: str | Path, *, name: str = "explorer.html", title: str = "explorer") -> Path:
    """A standalone page ``directory/name`` with ``plotly.min.js`` copied beside it; returns the page's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plotly_bundle_path(), directory / PLOTLY_JS_NAME)
    page = directory / name
    page.write_text(f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n<body>\n'
                    f'{explorer_html(figure, plotly_js=PLOTLY_JS_NAME)}\n</body></html>\n', encoding="utf-8")
    return page
