"""Training-loss spikes (the slingshot cycle) on planted curves."""

import math

import numpy as np
import pytest

from hessian_book.spikes import Spike, loss_spikes, spike_statistics


def sawtooth(spike_at, *, every=100, n=100, base=1e-6, decay=0.9, height=1e3):
    """A loss logged every ``every`` steps that decays by ``decay`` per log interval and, at each logged step in
    ``spike_at``, jumps ``height``-fold and then relaxes by 10× per interval back onto the decaying baseline."""
    steps = np.arange(n) * every
    baseline = base * decay ** np.arange(n)
    loss = baseline.copy()
    for s in spike_at:
        i = s // every
        for j, boost in enumerate(height / 10.0 ** np.arange(int(math.log10(height)) + 1)):
            if i + j < n:
                loss[i + j] = max(loss[i + j], baseline[i + j] * boost)
    return steps, loss


def test_planted_sawtooth_spikes_at_known_steps():
    spike_at = [1200, 2500, 3900, 5100, 6500]
    steps, loss = sawtooth(spike_at)
    spikes = loss_spikes(steps, loss)
    assert [s.start for s in spikes] == [s - 100 for s in spike_at]
    assert [s.peak for s in spikes] == spike_at
    # 1000× the baseline at the peak over the previous value, which is 1/0.9 of the baseline there
    assert [s.rise for s in spikes] == pytest.approx([1000 * 0.9] * 5)
    # after 10×, 10×, 10× relaxation the loss is back on the baseline (below the pre-spike value) 3 intervals later
    assert [s.end for s in spikes] == [s + 300 for s in spike_at]
    assert all(s.peak_loss == pytest.approx(loss[s.peak // 100]) for s in spikes)
    stats = spike_statistics(spikes)
    assert stats["count"] == 5
    assert stats["period_median"] == 1350 and stats["period_min"] == 1200 and stats["period_max"] == 1400
    assert stats["rise_median"] == pytest.approx(900) and stats["rise_max"] == pytest.approx(900)


def test_the_issue_example():
    # 3.3e-7 -> 5.1e-5 between steps 8,300 and 8,400, then back down
    steps = [8200, 8300, 8400, 8500, 8600, 8700]
    loss = [3.5e-7, 3.3e-7, 5.1e-5, 4.0e-6, 5.0e-7, 2.9e-7]
    (spike,) = loss_spikes(steps, loss)
    assert spike == Spike(start=8300, peak=8400, peak_loss=5.1e-5, rise=pytest.approx(5.1e-5 / 3.3e-7), end=8600,
                          pre_loss=3.3e-7)
    # with recovery=1 the loss has to be back at or below 3.3e-7
    assert loss_spikes(steps, loss, recovery=1.0)[0].end == 8700


def test_a_climb_over_two_intervals_is_one_spike_and_a_rise_after_the_peak_is_another():
    steps = np.arange(10) * 10
    loss = [1e-7, 1e-6, 1e-4, 1e-5, 2e-4, 1e-5, 1e-6, 1e-7, 1e-7, 1e-7]
    #            rise   rise   down   rise (after the peak: a new spike)
    first, second = loss_spikes(steps, loss)
    assert (first.start, first.peak, first.end) == (0, 20, None)  # not recovered before the next spike
    assert first.rise == pytest.approx(1e3)
    assert (second.start, second.peak, second.end, second.pre_loss) == (30, 40, 50, 1e-5)  # back to 1e-5 at 50
    assert second.rise == pytest.approx(20)


def test_unfinished_spike_and_rise_from_zero():
    (spike,) = loss_spikes([0, 1, 2, 3], [1e-3, 1e-4, 1e-2, 5e-3])
    assert (spike.start, spike.peak, spike.end) == (1, 2, None)
    (spike,) = loss_spikes([0, 1, 2], [0.0, 1e-6, 0.0])
    assert spike.rise == math.inf and spike.end == 2
    assert loss_spikes([0, 1, 2], [0.0, 0.0, 0.0]) == []


def test_no_spikes_on_a_monotone_decreasing_curve_or_below_the_factor():
    steps = np.arange(200) * 50
    assert loss_spikes(steps, 5.0 * np.exp(-steps / 500.0)) == []
    steps, loss = sawtooth([1000, 3000], height=1e3)
    assert len(loss_spikes(steps, loss)) == 2
    assert loss_spikes(steps, loss, factor=1e4) == []  # a 900× rise is not a 10,000× spike
    assert loss_spikes([0], [1.0]) == [] and loss_spikes([], []) == []


def test_statistics_without_enough_spikes():
    none = spike_statistics([])
    assert none["count"] == 0 and all(math.isnan(v) for k, v in none.items() if k != "count")
    one = spike_statistics(loss_spikes([0, 1, 2], [1e-6, 1e-4, 1e-7]))
    assert one["count"] == 1 and math.isnan(one["period_median"]) and one["rise_median"] == pytest.approx(100)


def test_bad_arguments_are_refused():
    steps, loss = [0, 1, 2], [1.0, 0.5, 0.25]
    for factor in (1.0, 0.5, float("nan"), float("inf"), "10", True):
        with pytest.raises(ValueError, match="factor="):
            loss_spikes(steps, loss, factor=factor)
    for recovery in (0.0, 10.0, float("nan")):
        with pytest.raises(ValueError, match="recovery="):
            loss_spikes(steps, loss, recovery=recovery)
    with pytest.raises(ValueError, match="same length"):
        loss_spikes([0, 1], loss)
    with pytest.raises(ValueError, match="strictly increasing"):
        loss_spikes([0, 2, 1], loss)
    with pytest.raises(ValueError, match="finite and non-negative"):
        loss_spikes(steps, [1.0, float("nan"), 0.1])
    with pytest.raises(ValueError, match="finite and non-negative"):
        loss_spikes(steps, [1.0, -0.1, 0.1])
