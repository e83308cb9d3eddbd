"""Phase differences over seeds with a hierarchical bootstrap interval, on planted data."""

import math

import numpy as np
import pytest

from hessian_book.stats import PhaseDifference, phase_difference


def planted(rng, shift, n_seeds=6, n_checkpoints=10):
    return [{"plateau": rng.normal(0.0, 1.0, n_checkpoints), "after": rng.normal(shift, 1.0, n_checkpoints)}
            for _ in range(n_seeds)]


@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_planted_rise_and_fall(statistic):
    values = planted(np.random.default_rng(0), 3.0)
    up = phase_difference(values, "plateau", "after", statistic=statistic)
    assert 0 < up.low <= up.estimate <= up.high and 2 < up.estimate < 4
    assert up.direction() == "rises" and up.n_seeds == 6 and up.n_boot == 2000 and up.statistic == statistic
    down = phase_difference(values, "after", "plateau", statistic=statistic)
    assert down.high < 0 and down.direction() == "falls"
    assert down.direction(down="drops") == "drops"
    assert down.estimate == pytest.approx(-up.estimate)


def test_estimate_is_the_mean_over_seeds_of_the_median_difference():
    values = [{"a": [1.0, 2.0, 30.0], "b": [5.0, 6.0]}, {"a": [0.0], "b": [10.0, 20.0, 30.0, 1000.0]}]
    # seed 0: 5.5 - 2 = 3.5; seed 1: 25 - 0 = 25
    assert phase_difference(values, "a", "b").estimate == pytest.approx((3.5 + 25) / 2)
    # means: seed 0: 5.5 - 11 = -5.5; seed 1: 265 - 0 = 265
    assert phase_difference(values, "a", "b", statistic="mean").estimate == pytest.approx((-5.5 + 265) / 2)


def test_identical_phases_cover_zero_and_show_no_clear_change():
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(100):
        d = phase_difference(planted(rng, 0.0), "plateau", "after", n_boot=500, seed=rep)
        hits += d.low <= 0 <= d.high
    # Nominal 95 %; the two-level bootstrap is conservative (resampling checkpoints on top of seeds counts
    # the within-seed noise twice): ~99 % over 1,000 repetitions. 90 of 100 leaves room for chance.
    assert hits >= 90
    values = planted(np.random.default_rng(2), 0.0)
    d = phase_difference(values, "plateau", "after")
    assert d.low < 0 < d.high and d.direction() == "shows no clear change"


def test_deterministic_for_a_fixed_seed():
    values = planted(np.random.default_rng(3), 0.5)
    first = phase_difference(values, "plateau", "after", seed=7)
    assert first == phase_difference(values, "plateau", "after", seed=7)
    other = phase_difference(values, "plateau", "after", seed=8)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)


def test_one_seed_gives_no_interval_and_empty_phases_drop_seeds():
    one = phase_difference([{"a": [0.0, 1.0], "b": [3.0, 4.0]}], "a", "b")
    assert one.estimate == pytest.approx(3.0) and math.isnan(one.low) and math.isnan(one.high)
    assert one.n_seeds == 1 and one.direction() == "shows no clear change"
    # the second and third runs have an empty (or all-NaN) phase: dropped, leaving one seed
    values = [{"a": [0.0, 1.0], "b": [3.0, 4.0]}, {"a": [], "b": [1.0]}, {"a": [1.0], "b": [float("nan")]}]
    dropped = phase_difference(values, "a", "b")
    assert dropped.n_seeds == 1 and dropped.estimate == pytest.approx(3.0) and math.isnan(dropped.low)
    none = phase_difference([{"a": [], "b": [1.0]}], "a", "b")
    assert none.n_seeds == 0 and all(math.isnan(v) for v in (none.estimate, none.low, none.high))


def test_uneven_phase_lengths():
    rng = np.random.default_rng(4)
    values = [{"a": rng.normal(0, 1, 3 + s), "b": rng.normal(2, 1, 12 - s)} for s in range(6)]
    d = phase_difference(values, "a", "b", n_boot=500)
    assert d.n_seeds == 6 and d.low > 0 and d.direction() == "rises"


def test_log_compares_ratios():
    rng = np.random.default_rng(5)
    values = [{"a": 10 ** rng.normal(-3, 0.1, 8), "b": 10 ** rng.normal(-1, 0.1, 8)} for _ in range(5)]
    d = phase_difference(values, "a", "b", log=True)
    assert d.log and d.estimate == pytest.approx(2.0, abs=0.2) and d.low > 0 and d.direction() == "rises"
    with pytest.raises(ValueError, match=r"run 0, phase 'a': log=True needs positive values"):
        phase_difference([{"a": [0.0, 1.0], "b": [1.0]}], "a", "b", log=True)


def test_missing_phases_are_named():
    values = [{"plateau": [1.0], "after": [2.0]}, {"plateau": [1.0]}, {"before": [0.0]}]
    with pytest.raises(ValueError) as err:
        phase_difference(values, "plateau", "after")
    message = str(err.value)
    assert "run 1 lacks 'after'" in message and "run 2 lacks 'plateau', 'after'" in message
    assert "run 0" not in message


def test_bad_arguments_are_refused():
    values = [{"a": [1.0], "b": [2.0]}] * 2
    with pytest.raises(ValueError, match="statistic='mode'"):
        phase_difference(values, "a", "b", statistic="mode")
    with pytest.raises(ValueError, match="n_boot=0"):
        phase_difference(values, "a", "b", n_boot=0)
    with pytest.raises(ValueError, match="confidence=1.5"):
        phase_difference(values, "a", "b", confidence=1.5)
    with pytest.raises(ValueError, match="same phase"):
        phase_difference(values, "a", "a")
    with pytest.raises(ValueError, match="infinite"):
        phase_difference([{"a": [float("inf")], "b": [1.0]}], "a", "b")


def test_result_is_frozen():
    d = PhaseDifference(estimate=1.0, low=0.5, high=1.5, n_seeds=5, n_boot=10, statistic="median")
    assert d.direction() == "rises" and d.confidence == 0.95 and not d.log
    with pytest.raises(AttributeError):
        d.low = 0.0
