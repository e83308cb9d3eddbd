"""Events read off training curves: when a metric first crosses a threshold, and grokking delays.

Transitions are always detected from the logged curves, never hard-coded, so a rerun with other parameters
reports its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .outcomes import outcome

__all__ = ["first_crossing", "grokking_delay", "groks", "transition_window", "transition_checkpoints",
           "phase_statistics", "stack_logs", "seed_spread", "value_at_step"]


def first_crossing(steps: Sequence[int], values: Sequence[float], threshold: float, *,
                   stay: bool = False) -> int | None:
    """The first logged step at which ``values >= threshold``, or ``None`` if it never happens.

    Args:
        steps: ``[T]`` logged steps, ascending.
        values: ``[T]`` the metric at those steps (e.g. test accuracy in [0, 1]).
        threshold: the level to reach.
        stay: if True, the first step from which the metric stays ``>= threshold`` until the end of the log
            (ignores brief excursions above the threshold).
    """
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps {steps.shape} and values {values.shape} must be 1-D of the same length")
    if len(steps) > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    above = values >= threshold
    if stay:
        # above from index i to the end <=> the reversed cumulative AND is true at i
        above = np.logical_and.accumulate(above[::-1])[::-1]
    hits = np.flatnonzero(above)
    return int(steps[hits[0]]) if len(hits) else None


def grokking_delay(steps: Sequence[int], train_acc: Sequence[float], test_acc: Sequence[float]) -> dict:
    """Memorisation and generalisation steps and their ratio, by the book's one definition
    (:func:`hessian_book.outcomes.outcome`): ``{"memorised", "generalised", "ratio"}``, each ``None`` when not
    reached. ``generalised`` is the first logged step from which test accuracy *holds* >= 95 % for the stop
    rule's margin (or to the end of the log), not a transient crossing."""
    return outcome(steps, train_acc, test_acc).delay()


def groks(steps: Sequence[int], train_acc: Sequence[float], test_acc: Sequence[float]) -> bool:
    """The book's definition of grokking (:func:`hessian_book.outcomes.outcome`): generalised within the logged
    run with a delay ratio >= 5."""
    return outcome(steps, train_acc, test_acc).groks


def transition_window(steps: Sequence[int], test_acc: Sequence[float], *, low: float = 0.5,
                      high: float = 0.95) -> dict:
    """Where test accuracy climbs: the first logged steps with ``test_acc >= low`` and ``>= high``.

    Args:
        steps: ``[T]`` logged steps, ascending.
        test_acc: ``[T]`` test accuracy in [0, 1].
        low, high: the levels bounding the climb, ``0 <= low < high <= 1``.
    Returns:
        ``{"start", "end"}``: the two crossing steps (each ``None`` if never reached).
    """
    if not 0 <= low < high <= 1:
        raise ValueError(f"low={low!r} and high={high!r} must satisfy 0 <= low < high <= 1")
    return {"start": first_crossing(steps, test_acc, low), "end": first_crossing(steps, test_acc, high)}


def transition_checkpoints(checkpoint_steps: Sequence[int], window: dict) -> dict[str, int]:
    """Three checkpoints that bracket a transition: the last before it, one inside it, the first after it.

    Args:
        checkpoint_steps: saved steps, ascending.
        window: ``{"start", "end"}`` from :func:`transition_window`.
    Returns:
        ``{"before", "during", "after"}``: ``before`` is the last checkpoint ``< start`` (the first checkpoint if
        none), ``after`` the first ``>= end`` (the last if none), ``during`` the checkpoint strictly between them
        closest to the window's middle on a log step axis (``sqrt(start * end)``; ``before`` or ``after`` itself
        if no checkpoint lies between them). If the window is open (an end is ``None``: no transition), the
        first, middle and last checkpoints are returned under the same keys.
    """
    steps = np.asarray(sorted(int(s) for s in checkpoint_steps))
    if steps.size == 0:
        raise ValueError("checkpoint_steps is empty")
    start, end = window.get("start"), window.get("end")
    if start is None or end is None:
        return {"before": int(steps[0]), "during": int(steps[len(steps) // 2]), "after": int(steps[-1])}
    earlier, later = steps[steps < start], steps[steps >= end]
    before = int(earlier[-1]) if earlier.size else int(steps[0])
    after = int(later[0]) if later.size else int(steps[-1])
    inside = steps[(steps > before) & (steps < after)]
    middle = np.sqrt(max(start, 1) * max(end, 1))
    if inside.size:
        during = int(inside[np.argmin(np.abs(np.log(np.maximum(inside, 1)) - np.log(middle)))])
    else:
        during = before if abs(np.log(max(before, 1) / middle)) < abs(np.log(after / middle)) else after
    return {"before": before, "during": during, "after": after}


def phase_statistics(steps: Sequence[int], values: Sequence[float],
                     phases: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """Median, range and count of a per-checkpoint quantity within each phase of training.

    Args:
        steps: ``[T]`` checkpoint steps.
        values: ``[T]`` the quantity at those steps.
        phases: label -> ``(first, last)`` steps, both included (e.g. the memorisation plateau, the transition).
    Returns:
        label -> ``{"median", "min", "max", "n"}`` over the checkpoints in the phase (NaNs and ``n = 0`` if none).
    """
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps {steps.shape} and values {values.shape} must be 1-D of the same length")
    out = {}
    for label, (first, last) in phases.items():
        inside = values[(steps >= first) & (steps <= last)]
        if inside.size:
            out[label] = {"median": float(np.median(inside)), "min": float(inside.min()),
                          "max": float(inside.max()), "n": int(inside.size)}
        else:
            out[label] = {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return out


def stack_logs(logs: Sequence[Sequence[Mapping]], key: str, *, union: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-run logs (lists of records with ``"step"``) → ``(steps: ndarray[T], values: ndarray[R, T])``.

    Only steps logged by every run are kept (runs of one configuration share their log steps), or with
    ``union=True`` every step logged by any run (runs that ended earlier, e.g. by a stop rule, get NaN after their
    end); a missing ``key`` or ``None`` becomes NaN.
    """
    if not logs:
        raise ValueError("logs must hold at least one run")
    sets = [{int(r["step"]) for r in log} for log in logs]
    common = sorted(set.union(*sets) if union else set.intersection(*sets))
    values = np.full((len(logs), len(common)), np.nan)
    for i, log in enumerate(logs):
        by_step = {int(r["step"]): r.get(key) for r in log}
        values[i] = [np.nan if by_step.get(s) is None else by_step[s] for s in common]
    return np.asarray(common), values


def seed_spread(values: np.ndarray, *, log: bool = False) -> dict[str, np.ndarray]:
    """Centre and spread over runs of ``values: ndarray[R, T]``: ``{"centre", "low", "high"}``, each ``[T]``.

    ``centre`` is the mean (the geometric mean with ``log=True``, for positive quantities on a log axis);
    ``low``/``high`` are the minimum and maximum over runs. NaNs are ignored.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be [runs, steps], got shape {values.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.exp(np.nanmean(np.log(values), axis=0)) if log else np.nanmean(values, axis=0)
    return {"centre": centre, "low": np.nanmin(values, axis=0), "high": np.nanmax(values, axis=0)}


def value_at_step(steps: np.ndarray, values: np.ndarray, at: float, *, log: bool = False) -> float:
    """``values`` (``[T]``, at ascending ``steps``) linearly interpolated at step ``at`` (in log space if ``log``).

    ``at`` outside the logged range gives NaN.
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if not steps[0] <= at <= steps[-1]:
        return float("nan")
    if log:
        return float(np.exp(np.interp(at, steps, np.log(values))))
    return float(np.interp(at, steps, values))
