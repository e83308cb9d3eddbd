"""Spikes of the training loss: the slingshot cycle of adaptive optimisers (Thilak et al. 2022).

Late in full-batch Adam training the training loss falls to ~1e-7 and then jumps by orders of magnitude within
one log interval, recovers, and does so again a thousand or so steps later. :func:`loss_spikes` finds these
spikes in a logged loss curve and :func:`spike_statistics` summarises them (count, period, size).

Definition: a spike *starts* where the loss rises by at least ``factor`` (default 10×) from one logged value to
the next; it *ends* at the first logged step at which the loss is back to at most ``recovery`` (default 2×) times
its value before the rise. A further ``factor``-fold rise while the loss is still climbing (each logged value the
highest since the spike began) belongs to the same spike; one after the loss has come down from its peak starts
a new spike, and the unfinished one has no end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Spike", "loss_spikes", "spike_statistics"]


@dataclass(frozen=True)
class Spike:
    """One spike of the training loss.

    Attributes:
        start: the logged step before the rise (the last value before the spike).
        peak: the logged step of the highest loss within the spike.
        peak_loss: the loss there.
        rise: ``peak_loss / pre_loss`` (``inf`` if ``pre_loss`` is 0).
        end: the first logged step after the peak at which the loss is back to at most ``recovery × pre_loss``,
            or ``None`` if that does not happen before the log ends or the next spike starts.
        pre_loss: the loss at ``start``.
    """

    start: int
    peak: int
    peak_loss: float
    rise: float
    end: int | None
    pre_loss: float


def _check_factor(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    return float(value)


def loss_spikes(steps: Sequence[int], loss: Sequence[float], *, factor: float = 10.0,
                recovery: float = 2.0) -> list[Spike]:
    """The spikes of a logged training-loss curve (see the module's definition).

    Args:
        steps: ``[T]`` logged steps, strictly increasing.
        loss: ``[T]`` training loss at those steps, finite and non-negative.
        factor: the rise within one log interval that starts a spike, ``> 1``.
        recovery: the spike ends when the loss is back to at most ``recovery`` times its pre-spike value;
            ``0 < recovery < factor``.
    Returns:
        The spikes in order of their starts.
    Raises:
        ValueError: mismatched or non-increasing steps, non-finite or negative losses, or bad ``factor`` /
            ``recovery`` (each named).
    """
    factor, recovery = _check_factor("factor", factor), _check_factor("recovery", recovery)
    if factor <= 1:
        raise ValueError(f"factor={factor!r} must be > 1 (a rise)")
    if not 0 < recovery < factor:
        raise ValueError(f"recovery={recovery!r} must be in (0, factor={factor!r})")
    steps, loss = np.asarray(steps), np.asarray(loss, dtype=float)
    if steps.shape != loss.shape or steps.ndim != 1:
        raise ValueError(f"steps {steps.shape} and loss {loss.shape} must be 1-D of the same length")
    if len(steps) > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    if not np.all(np.isfinite(loss)) or np.any(loss < 0):
        raise ValueError("loss must be finite and non-negative")

    rises = (loss[1:] > 0) & (loss[1:] >= factor * loss[:-1])  # rises[i - 1]: a spike rise into index i
    spikes: list[Spike] = []
    i, n = 1, len(loss)
    while i < n:
        if not rises[i - 1]:
            i += 1
            continue
        pre = loss[i - 1]
        peak, end, k = i, None, i + 1
        while k < n:
            if loss[k] <= recovery * pre:
                end = k
                break
            if rises[k - 1] and k - 1 != peak:  # a new rise after the loss came down: the next spike
                break
            if loss[k] > loss[peak]:
                peak = k
            k += 1
        spikes.append(Spike(start=int(steps[i - 1]), peak=int(steps[peak]), peak_loss=float(loss[peak]),
                            rise=float(loss[peak] / pre) if pre > 0 else math.inf,
                            end=None if end is None else int(steps[end]), pre_loss=float(pre)))
        i = end + 1 if end is not None else k
    return spikes


def spike_statistics(spikes: Sequence[Spike]) -> dict:
    """Count, period and size of spikes.

    Returns:
        ``{"count", "period_median", "period_min", "period_max", "rise_median", "rise_max"}``: the number of
        spikes; the median, smallest and largest number of steps between consecutive spike starts (NaN with
        fewer than two spikes); the median and largest ``rise`` (NaN without spikes).
    """
    nan = float("nan")
    starts = np.array([s.start for s in spikes], dtype=float)
    rises = np.array([s.rise for s in spikes], dtype=float)
    periods = np.diff(starts)
    return {"count": len(spikes),
            "period_median": float(np.median(periods)) if len(periods) else nan,
            "period_min": float(periods.min()) if len(periods) else nan,
            "period_max": float(periods.max()) if len(periods) else nan,
            "rise_median": float(np.median(rises)) if len(rises) else nan,
            "rise_max": float(rises.max()) if len(rises) else nan}
