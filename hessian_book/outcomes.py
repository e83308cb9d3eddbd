"""The one definition of each training outcome, used by every chapter, and the rule that stops training once its
question is answered.

All outcomes are read off a run's *logged* curve (steps ascending, accuracies in [0, 1]):

* **memorised**: the first logged step with train accuracy ``>= 0.99`` (:data:`MEMORISED_AT`).
* **generalised**: the first logged step ``g`` from which test accuracy stays ``>= 0.95`` (:data:`GENERALISED_AT`)
  at every logged step up to ``g + margin(g)``, where ``margin(g) = max(2,000, ceil(g / 4))`` steps
  (:class:`StopRule`) -- or, when the run ended before ``g + margin(g)``, at every logged step to the end of the
  run (then :attr:`Outcome.held_margin` is False and the sentences say so). A brief excursion above 95 % that
  falls back inside the margin is not generalisation; the clock restarts at the next logged step above 95 %.
* **delay ratio**: ``generalised / memorised`` (defined when both are, and ``memorised > 0``).
* **groks**: generalised within the run's step budget with a delay ratio ``>= 5`` (:data:`GROKS_RATIO`).

Every outcome is relative to the run's step budget (its cap): "does not generalise" always means "within N
steps", and :func:`outcome_sentence` / :func:`groks_text` say the N.

The stop rule (:class:`StopRule`) ends a run at the logged step at which its generalisation is confirmed: the
first logged step ``s`` with test accuracy ``>= 0.95`` at every logged step of ``[g, s]`` and ``s - g >=
margin(g)``. A run that does not generalise trains to its cap. Since the rule and the definition of
*generalised* are one computation (:meth:`StopRule.held`), a run stopped by the rule has generalised (with the
margin held) at exactly the step the definition gives, and a run trained further would report the same step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MEMORISED_AT", "GENERALISED_AT", "GROKS_RATIO", "StopRule", "DEFAULT_RULE", "Held", "Outcome",
           "memorised_step", "outcome", "outcome_of_log", "steps_text", "outcome_sentence", "groks_text",
           "generalises_text"]

MEMORISED_AT = 0.99  # train accuracy that counts as memorised
GENERALISED_AT = 0.95  # test accuracy that counts as generalised (held for the margin)
GROKS_RATIO = 5.0  # generalising at least this many times later than memorising is grokking


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Held:
    """Where test accuracy first held above the threshold: ``start`` (the generalisation step ``g``), ``until``
    (the last logged step of that streak that was examined), and ``margin_held`` (True when the streak lasted
    ``margin(g)`` steps; False when the log ended first)."""

    start: int
    until: int
    margin_held: bool


@dataclass(frozen=True)
class StopRule:
    """Stop a run once test accuracy has held ``>= threshold`` for ``margin(g) = max(min_margin, ceil(fraction *
    g))`` steps after its generalisation step ``g`` (checked at logged steps only).

    Attributes:
        threshold: the test accuracy that counts as generalised (``0 < threshold <= 1``).
        min_margin: the smallest margin, in steps (a positive integer).
        fraction: the margin grows with ``g`` as ``fraction * g`` (``>= 0``): a run that took long to generalise
            must hold it longer.
    """

    threshold: float = GENERALISED_AT
    min_margin: int = 2000
    fraction: float = 0.25

    def __post_init__(self) -> None:
        if not (_real(self.threshold) and 0 < self.threshold <= 1):
            raise ValueError(f"threshold={self.threshold!r} must be a number in (0, 1]")
        if isinstance(self.min_margin, bool) or not isinstance(self.min_margin, int) or self.min_margin < 1:
            raise ValueError(f"min_margin={self.min_margin!r} must be a positive integer (steps)")
        if not (_real(self.fraction) and self.fraction >= 0):
            raise ValueError(f"fraction={self.fraction!r} must be a finite number >= 0")

    def margin(self, generalised: int) -> int:
        """Steps test accuracy must hold after the generalisation step ``generalised``."""
        return max(self.min_margin, math.ceil(self.fraction * generalised))

    def held(self, steps: Sequence[int], test_acc: Sequence[float]) -> Held | None:
        """The first streak of logged steps with ``test_acc >= threshold`` that lasts ``margin`` steps, else the
        streak that reaches the end of the log (``margin_held=False``), else ``None``.

        Args:
            steps: ``[T]`` logged steps, strictly increasing.
            test_acc: ``[T]`` test accuracy at those steps.
        """
        steps, values = _curve(steps, test_acc)
        start = None
        for step, value in zip(steps.tolist(), values.tolist()):
            if not value >= self.threshold:  # NaN counts as below
                start = None
                continue
            if start is None:
                start = step
            if step - start >= self.margin(start):
                return Held(start=start, until=step, margin_held=True)
        return None if start is None else Held(start=start, until=int(steps[-1]), margin_held=False)

    def stop_step(self, steps: Sequence[int], test_acc: Sequence[float]) -> int | None:
        """The logged step at which the rule stops the run (``None``: it does not, within the log)."""
        held = self.held(steps, test_acc)
        return held.until if held is not None and held.margin_held else None

    def as_dict(self) -> dict:
        """The rule's parameters (e.g. for a results key)."""
        return asdict(self)


DEFAULT_RULE = StopRule()


def _curve(steps: Sequence[int], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"steps {steps.shape} and values {values.shape} must be 1-D, non-empty, of the same length")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    return steps, values


def memorised_step(steps: Sequence[int], train_acc: Sequence[float]) -> int | None:
    """The first logged step with train accuracy ``>= MEMORISED_AT`` (``None`` if never)."""
    steps, values = _curve(steps, train_acc)
    hits = np.flatnonzero(values >= MEMORISED_AT)
    return int(steps[hits[0]]) if len(hits) else None


@dataclass(frozen=True)
class Outcome:
    """A run's outcomes within its budget (see the module docstring for the definitions).

    Attributes:
        memorised, generalised: steps (``None``: not within ``budget`` steps).
        ratio: ``generalised / memorised`` (``None`` unless both are defined and ``memorised > 0``).
        groks: generalised with ``ratio >= GROKS_RATIO``.
        held_margin: whether test accuracy held for the whole margin after ``generalised`` (False: the run
            ended first; ``None`` without generalisation).
        budget: the run's step cap, which every "not within" refers to.
        last_step: the last logged step (the cap, or the step at which the stop rule ended the run).
    """

    memorised: int | None
    generalised: int | None
    ratio: float | None
    groks: bool
    held_margin: bool | None
    budget: int
    last_step: int

    def delay(self) -> dict:
        """``{"memorised", "generalised", "ratio"}`` (the keys the chapters' tables use)."""
        return {"memorised": self.memorised, "generalised": self.generalised, "ratio": self.ratio}


def outcome(steps: Sequence[int], train_acc: Sequence[float], test_acc: Sequence[float], *, budget: int | None = None,
            rule: StopRule = DEFAULT_RULE) -> Outcome:
    """The run's :class:`Outcome` from its logged curve.

    Args:
        steps: ``[T]`` logged steps, strictly increasing.
        train_acc, test_acc: ``[T]`` accuracies in [0, 1].
        budget: the run's step cap (default: the last logged step). Logged steps beyond it are an error.
        rule: gives the generalisation threshold and the margin.
    """
    steps_arr, _ = _curve(steps, train_acc)
    _curve(steps, test_acc)
    last = int(steps_arr[-1])
    budget = last if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < last:
        raise ValueError(f"budget={budget!r} must be an integer >= the last logged step {last}")
    memorised = memorised_step(steps, train_acc)
    held = rule.held(steps, test_acc)
    generalised = held.start if held is not None else None
    ratio = generalised / memorised if memorised and generalised is not None else None
    return Outcome(memorised=memorised, generalised=generalised, ratio=ratio,
                   groks=bool(ratio is not None and ratio >= GROKS_RATIO),
                   held_margin=None if held is None else held.margin_held, budget=int(budget), last_step=last)


def outcome_of_log(log: Sequence[dict], *, budget: int | None = None, rule: StopRule = DEFAULT_RULE) -> Outcome:
    """:func:`outcome` of a training log (records with ``step``, ``train_acc``, ``test_acc``)."""
    return outcome([r["step"] for r in log], [r["train_acc"] for r in log], [r["test_acc"] for r in log],
                   budget=budget, rule=rule)


def steps_text(n: int) -> str:
    """``"10,000 steps"``."""
    return f"{int(n):,} steps"


def generalises_text(o: Outcome) -> str:
    """``"generalises at step 8,400"`` (with ``", held to the end of the run at step N (shorter than its
    margin)"`` when the run ended inside the margin) or ``"does not generalise within 10,000 steps"``."""
    if o.generalised is None:
        return f"does not generalise within {steps_text(o.budget)}"
    text = f"generalises at step {o.generalised:,}"
    if not o.held_margin:
        text += f" (held to the end of the run at step {o.last_step:,}, before its margin ended)"
    return text


def groks_text(o: Outcome) -> str:
    """``"groks within 40,000 steps"`` or ``"does not grok within 40,000 steps"``."""
    return f"{'groks' if o.groks else 'does not grok'} within {steps_text(o.budget)}"


def outcome_sentence(o: Outcome) -> str:
    """The run's outcomes in words, naming the budget: ``"memorises at step 1,000 and generalises at step 8,000
    (8.0× later): groks within 40,000 steps"``."""
    if o.memorised is None:
        head = f"does not memorise within {steps_text(o.budget)} and {generalises_text(o)}"
    else:
        head = f"memorises at step {o.memorised:,} and {generalises_text(o)}"
        if o.ratio is not None:
            head += f" ({o.ratio:.1f}× later)"
    return f"{head}: {groks_text(o)}"
