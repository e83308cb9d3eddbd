"""The one definition of each training outcome (hessian_book.outcomes) against a brute-force reading of it."""

import math

import numpy as np
import pytest

from hessian_book.outcomes import (DEFAULT_RULE, StopRule, groks_text, outcome, outcome_of_log, outcome_sentence)


def _reference_generalised(steps, acc, rule):
    """The definition read literally: the first logged g from which accuracy is >= threshold at every logged step
    up to g + margin(g) (the log reaching that far), or to the end of the log when it ends earlier. Returns
    ``(g, stop)`` with ``stop`` the first logged step >= g + margin(g) (``None`` when the log ends before)."""
    for i, g in enumerate(steps):
        horizon = g + rule.margin(g)
        window = [j for j in range(i, len(steps)) if steps[j] <= horizon]
        if not all(acc[j] >= rule.threshold for j in window):
            continue
        after = [j for j in range(i, len(steps)) if steps[j] >= horizon]
        if after:
            if all(acc[j] >= rule.threshold for j in range(i, after[0] + 1)):
                return g, steps[after[0]]
            continue
        return g, None  # the run ended inside the margin, above the threshold throughout
    return None, None


def test_rule_and_definition_match_the_literal_reading_on_random_curves():
    rng = np.random.default_rng(0)
    for trial in range(3000):
        n = int(rng.integers(1, 40))
        steps = np.cumsum(rng.integers(1, 400, size=n)) - 1
        acc = np.where(rng.random(n) < rng.random(), 0.97, 0.5)
        rule = StopRule(min_margin=int(rng.integers(1, 1500)), fraction=float(rng.choice([0.0, 0.25, 1.0])))
        g, stop = _reference_generalised(steps.tolist(), acc.tolist(), rule)
        held = rule.held(steps, acc)
        assert (held.start if held else None) == g, trial
        assert rule.stop_step(steps, acc) == stop, trial
        if held is not None:
            assert held.margin_held == (stop is not None)


def test_margin_and_validation():
    assert DEFAULT_RULE.margin(4000) == 2000 and DEFAULT_RULE.margin(21_500) == 5375
    assert StopRule(min_margin=10, fraction=0.25).margin(41) == 11  # rounded up
    for kw, name in ((dict(threshold=0.0), "threshold"), (dict(threshold=1.5), "threshold"),
                     (dict(min_margin=0), "min_margin"), (dict(min_margin=2.5), "min_margin"),
                     (dict(fraction=-0.1), "fraction"), (dict(fraction=math.nan), "fraction")):
        with pytest.raises(ValueError, match=name):
            StopRule(**kw)


def test_transient_crossing_is_not_generalisation():
    steps = [0, 1000, 2000, 3000, 4000, 5000, 8000, 10000, 12000]
    test = [0.0, 0.96, 0.5, 0.2, 0.3, 0.96, 0.97, 0.99, 0.99]
    train = [0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    o = outcome(steps, train, test, budget=40_000)
    assert o.memorised == 1000 and o.generalised == 5000 and o.ratio == 5.0 and o.groks and o.held_margin
    assert DEFAULT_RULE.stop_step(steps, test) == 8000  # 5000 + max(2000, 1250)


def test_groks_needs_the_delay_and_generalisation_within_the_budget():
    steps = list(range(0, 10_001, 500))
    train = [0.0] + [1.0] * 20
    early = [0.0, 0.0] + [0.99] * 19  # generalises at 1000, memorised at 500: ratio 2
    o = outcome(steps, train, early, budget=10_000)
    assert (o.generalised, o.ratio, o.groks) == (1000, 2.0, False)
    never = outcome(steps, train, [0.5] * 21, budget=10_000)
    assert never.generalised is None and never.ratio is None and not never.groks and never.held_margin is None
    assert outcome_sentence(never) == ("memorises at step 500 and does not generalise within 10,000 steps: "
                                       "does not grok within 10,000 steps")
    late = outcome(steps, train, [0.5] * 20 + [0.96], budget=40_000)  # held to the end, inside its margin
    assert late.generalised == 10_000 and late.held_margin is False and late.groks
    assert "held to the end of the run at step 10,000" in outcome_sentence(late)
    assert groks_text(late) == "groks within 40,000 steps"
    with pytest.raises(ValueError, match="budget"):
        outcome(steps, train, early, budget=5000)


def test_outcome_of_log_and_no_memorisation():
    log = [{"step": s, "train_acc": 0.5, "test_acc": 0.01} for s in (0, 10, 20)]
    o = outcome_of_log(log, budget=300)
    assert o.memorised is None and o.generalised is None and o.last_step == 20
    assert outcome_sentence(o).startswith("does not memorise within 300 steps and does not generalise within 300")
