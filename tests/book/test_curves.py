"""Threshold crossings and grokking delays on hand-built curves."""

import numpy as np
import pytest

from hessian_book.curves import first_crossing, grokking_delay


def test_first_crossing_and_stay():
    steps = [0, 10, 20, 30, 40]
    values = [0.1, 0.96, 0.5, 0.97, 0.99]
    assert first_crossing(steps, values, 0.95) == 10
    assert first_crossing(steps, values, 0.95, stay=True) == 30
    assert first_crossing(steps, values, 0.999) is None
    assert first_crossing(steps, values, 0.999, stay=True) is None


def test_first_crossing_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        first_crossing([0, 1], [0.5], 0.1)
    with pytest.raises(ValueError, match="increasing"):
        first_crossing([0, 2, 1], [0.5, 0.6, 0.7], 0.1)


def test_grokking_delay():
    steps = [0, 100, 200, 1000, 2000]
    out = grokking_delay(steps, [0.1, 0.995, 1.0, 1.0, 1.0], [0.0, 0.1, 0.2, 0.5, 0.97])
    assert out == {"memorised": 100, "generalised": 2000, "ratio": 20.0}
    never = grokking_delay(steps, [0.1] * 5, [0.0] * 5)
    assert never == {"memorised": None, "generalised": None, "ratio": None}


def test_phase_statistics():
    from hessian_book.curves import phase_statistics

    out = phase_statistics([0, 10, 20, 30, 40], [5.0, 1.0, 3.0, 2.0, 9.0], {"a": (10, 30), "b": (50, 60)})
    assert out["a"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert out["b"]["n"] == 0 and np.isnan(out["b"]["median"])
    with pytest.raises(ValueError, match="same length"):
        phase_statistics([0, 1], [1.0], {})
