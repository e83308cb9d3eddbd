"""Phase comparisons over seeds: a difference between two phases of training with a hierarchical bootstrap interval.

A chapter's verdict ("λ_max rises from the plateau to the transition") is a statement about the *recipe*, not about
one run, so the uncertainty has two sources: which seeds were run, and which checkpoints fell in each phase of each
run. :func:`phase_difference` resamples both (seeds first, then checkpoints within each phase of each drawn seed)
and the direction word of the prose is read off the interval (:meth:`PhaseDifference.direction`), never typed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .glue import direction_word

__all__ = ["PhaseDifference", "phase_difference"]

_STATISTICS = ("median", "mean")


@dataclass(frozen=True)
class PhaseDifference:
    """The change of a per-checkpoint quantity from one phase of training to another, over seeds.

    Attributes:
        estimate: the mean over seeds of ``stat(second) - stat(first)`` (of log10 values when ``log``: then
            ``10 ** estimate`` is the geometric mean over seeds of the ratio ``stat(second) / stat(first)``).
        low, high: the percentile bootstrap interval of ``estimate`` at level ``confidence``; NaN with fewer than
            two seeds (no verdict).
        n_seeds: seeds used (seeds with an empty phase are dropped).
        n_boot: bootstrap replicates.
        statistic: ``"median"`` or ``"mean"`` over a phase's checkpoints.
        confidence: the interval's level.
        log: whether log10 of the values was compared.
    """

    estimate: float
    low: float
    high: float
    n_seeds: int
    n_boot: int
    statistic: str
    confidence: float = 0.95
    log: bool = False

    def direction(self, up: str = "rises", down: str = "falls", flat: str = "shows no clear change") -> str:
        """``up`` when the interval lies above zero, ``down`` when below, ``flat`` when it contains zero or is
        undefined (:func:`hessian_book.glue.direction_word`)."""
        return direction_word(float(self.low), float(self.high), up=up, down=down, flat=flat)


def _phase_array(run: int, phase: str, values: Sequence[float], log: bool) -> np.ndarray:
    """One phase of one run as a 1-D float array: NaNs dropped, infinities (and non-positive values with
    ``log``) refused with the run and phase named."""
    x = np.asarray(values, dtype=float).reshape(-1)
    x = x[~np.isnan(x)]
    if np.isinf(x).any():
        raise ValueError(f"run {run}, phase {phase!r}: infinite values")
    if log:
        if (x <= 0).any():
            raise ValueError(f"run {run}, phase {phase!r}: log=True needs positive values, got min {x.min():.3g}")
        x = np.log10(x)
    return x


def _padded(phases: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows as ``(values[S, M], counts[S])``, padded with NaN."""
    counts = np.array([len(x) for x in phases])
    out = np.full((len(phases), counts.max()), np.nan)
    for i, x in enumerate(phases):
        out[i, : len(x)] = x
    return out, counts


def _stat_rows(x: np.ndarray, counts: np.ndarray, statistic: str) -> np.ndarray:
    """The median or mean over the last axis of ``x`` (``[..., M]``), using the first ``counts[...]`` entries of
    each row (the rest may hold anything)."""
    inside = np.arange(x.shape[-1]) < counts[..., None]
    if statistic == "mean":
        return np.where(inside, x, 0.0).sum(axis=-1) / counts
    x = np.sort(np.where(inside, x, np.inf), axis=-1)  # padding sorts last
    lo = np.take_along_axis(x, ((counts - 1) // 2)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(x, (counts // 2)[..., None], axis=-1)[..., 0]
    return (lo + hi) / 2


def _resample_within(rng: np.random.Generator, x: np.ndarray, counts: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """For each drawn seed ``seeds[b, j]``, its phase's checkpoints resampled with replacement: ``[B, S, M]``
    (only the first ``counts[seeds[b, j]]`` entries of each row are meaningful)."""
    n = counts[seeds]  # [B, S]
    draw = np.floor(rng.random(seeds.shape + (x.shape[1],)) * n[..., None]).astype(np.int64)
    return x[seeds[..., None], draw]


def phase_difference(values: Sequence[Mapping[str, Sequence[float]]], first: str, second: str, *,
                     statistic: str = "median", n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                     log: bool = False) -> PhaseDifference:
    """The change of a quantity from phase ``first`` to phase ``second``, over seeds, with a bootstrap interval.

    Estimate: for each seed, ``stat(second) - stat(first)`` with ``stat`` the median (or mean) over the phase's
    checkpoints; the estimate is the mean of these over seeds.

    Interval: a two-level (hierarchical) percentile bootstrap. Each replicate draws the seeds with replacement
    (as many as there are), then, for each drawn seed, draws the checkpoints of each of the two phases with
    replacement (as many as that phase has, independently for the two phases) and recomputes the estimate. The
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the replicates. Resampling
    seeds captures run-to-run variation; resampling checkpoints captures where the checkpoints of a phase fell.
    The two phases of a drawn seed stay paired, so what a seed shares across phases cancels in its difference.

    Args:
        values: one mapping per run (seed): phase name -> that run's checkpoint values in the phase. NaNs are
            ignored (a missing measurement); a run whose ``first`` or ``second`` phase is then empty is dropped.
        first, second: the phases compared (``second`` minus ``first``).
        statistic: ``"median"`` or ``"mean"`` over a phase's checkpoints.
        n_boot: bootstrap replicates.
        confidence: the interval's level, in (0, 1).
        seed: the bootstrap's random seed (the result is deterministic given it).
        log: compare ``log10`` of the values (positive quantities; a ratio: ``estimate > 0`` means ``second`` is
            larger).
    Returns:
        A :class:`PhaseDifference`; with no usable seed every number is NaN, with one seed the interval is NaN.
    Raises:
        ValueError: unknown statistic, bad ``n_boot``/``confidence``, a run without one of the phases (naming the
            runs and the missing phases), infinite values, or non-positive values with ``log``.
    """
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic={statistic!r} must be one of {_STATISTICS}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} must be a positive integer")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    if first == second:
        raise ValueError(f"first and second are the same phase {first!r}")
    missing = {i: [ph for ph in (first, second) if ph not in run] for i, run in enumerate(values)}
    missing = {i: m for i, m in missing.items() if m}
    if missing:
        detail = "; ".join(f"run {i} lacks {', '.join(map(repr, m))}" for i, m in missing.items())
        raise ValueError(f"phases missing: {detail}")

    firsts, seconds = [], []
    for i, run in enumerate(values):
        a, b = _phase_array(i, first, run[first], log), _phase_array(i, second, run[second], log)
        if len(a) and len(b):
            firsts.append(a)
            seconds.append(b)
    n_seeds = len(firsts)
    nan = float("nan")
    result = dict(n_seeds=n_seeds, n_boot=int(n_boot), statistic=statistic, confidence=confidence, log=log)
    if n_seeds == 0:
        return PhaseDifference(estimate=nan, low=nan, high=nan, **result)

    xa, na = _padded(firsts)
    xb, nb = _padded(seconds)
    estimate = float(np.mean(_stat_rows(xb, nb, statistic) - _stat_rows(xa, na, statistic)))
    if n_seeds < 2:
        return PhaseDifference(estimate=estimate, low=nan, high=nan, **result)

    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # [B, S]: seeds with replacement
    boot_a = _stat_rows(_resample_within(rng, xa, na, drawn), na[drawn], statistic)
    boot_b = _stat_rows(_resample_within(rng, xb, nb, drawn), nb[drawn], statistic)
    replicates = (boot_b - boot_a).mean(axis=1)
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PhaseDifference(estimate=estimate, low=float(low), high=float(high), **result)
