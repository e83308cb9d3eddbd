"""Verdicts over independent runs whose error rates are measured: paired phase differences and depth slopes.

A chapter's verdict ("λ_max rises from the plateau to the transition") is a statement about the *recipe*, not
about one run, so the unit of replication is the run. Each run is first summarised by one number (the difference
of its phase medians: :func:`phase_difference`; its slope in the depth chapter: :func:`slope_test`), and the
inference is over these per-run numbers only:

* the p-value is an exact **sign-flip permutation test** (every one of the ``2**n`` sign patterns when that is at
  most ``max_exact``, else ``n_flips`` random ones with the observed pattern counted): valid at any run count
  when, under the null, each run's difference is symmetric about zero (the two phases of a run exchangeable);
* the interval is the **t-interval** of the per-run differences (mean ± t₍ₙ₋₁₎ · sd/√n);
* a **declared family** of primary comparisons gets Holm's family-wise control (:func:`holm`,
  :func:`declare_family`); the verdict word of a primary comparison is read off its Holm-adjusted p-value *and*
  its interval (:func:`verdict_word`); a comparison outside the family is *exploratory*: shown with its estimate
  and interval, never with a verdict word.

The sign-flip p-value cannot go below ``2 / 2**n`` (the observed pattern and its mirror), so a two-sided 5 %
verdict over a family of ``m`` needs ``2 * m / 2**n <= 0.05`` (:func:`smallest_p`).
``tests/book/test_stats.py`` measures the false-positive rates and powers on simulated runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as _scipy_stats

from .glue import direction_word

__all__ = ["PhaseDifference", "phase_difference", "run_differences", "sign_flip_p", "t_interval", "holm",
           "declare_family", "verdict_word", "smallest_p", "SlopeTest", "slope_test", "EXPLORATORY",
           "simulate_phase_runs", "verdict_signs", "phase_error_rates", "slope_error_rates"]

_STATISTICS = ("median", "mean")
EXPLORATORY = "exploratory (no verdict)"  # the word of a comparison outside the declared family


def smallest_p(n_runs: int, family_size: int = 1) -> float:
    """The smallest Holm-adjusted sign-flip p-value ``n_runs`` runs can give in a family of ``family_size``:
    ``family_size * 2 / 2**n_runs`` (1 when fewer than one run)."""
    if n_runs < 1:
        return 1.0
    return min(1.0, family_size * 2.0 / 2.0 ** n_runs)


def sign_flip_p(d: np.ndarray, *, max_exact: int = 2 ** 16, n_flips: int = 20_000,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Two-sided sign-flip permutation p-values of ``mean(d) = 0``, vectorised over leading axes.

    Args:
        d: ``[..., n]`` per-run differences (no NaN).
        max_exact: enumerate all ``2**n`` sign patterns when ``2**n <= max_exact``.
        n_flips: otherwise, random sign patterns (the observed one is counted too: ``(1 + hits) / (1 + n_flips)``,
            still a valid p-value).
        rng: the random patterns' generator (only used when not exact).
    Returns:
        ``[...]`` p-values: the share of sign patterns ``s`` with ``|mean(s·d)| >= |mean(d)|`` (to rounding).
        NaN for ``n = 0``.
    """
    d = np.asarray(d, dtype=float)
    n = d.shape[-1]
    if n == 0:
        return np.full(d.shape[:-1], np.nan)
    observed = np.abs(d.sum(axis=-1))
    slack = 1e-9 * np.abs(d).sum(axis=-1)  # ties to rounding count as at least as extreme
    if 2 ** n <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2**n, n]
        flipped = np.abs(d @ signs.T)  # [..., 2**n]
        return (flipped >= (observed - slack)[..., None]).mean(axis=-1)
    rng = np.random.default_rng(0) if rng is None else rng
    signs = rng.choice((1.0, -1.0), size=(n_flips, n))
    hits = (np.abs(d @ signs.T) >= (observed - slack)[..., None]).sum(axis=-1)
    return (1 + hits) / (1 + n_flips)


def t_interval(d: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The t-interval ``mean ± t_{n-1} sd / sqrt(n)`` of ``d`` ``[..., n]`` along its last axis (NaN for n < 2)."""
    d = np.asarray(d, dtype=float)
    n = d.shape[-1]
    mean = d.mean(axis=-1) if n else np.full(d.shape[:-1], np.nan)
    if n < 2:
        nan = np.full(d.shape[:-1], np.nan)
        return nan, nan.copy()
    half = _scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * d.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control at any level; NaN counts as 1)."""
    p = np.asarray(p_values, dtype=float)
    p = np.where(np.isnan(p), 1.0, p)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def verdict_word(p_adjusted: float, low: float, high: float, *, alpha: float = 0.05, up: str = "rises",
                 down: str = "falls", flat: str = "shows no clear change") -> str:
    """``up``/``down`` only when the (Holm-adjusted) p-value is at most ``alpha`` *and* the interval
    ``[low, high]`` lies on that side of zero (:func:`hessian_book.glue.direction_word`); ``flat`` otherwise."""
    if not (isinstance(p_adjusted, (int, float)) and p_adjusted <= alpha):
        return flat
    return direction_word(low, high, up=up, down=down, flat=flat)


@dataclass(frozen=True)
class PhaseDifference:
    """The change of a per-checkpoint quantity from one phase of training to another, over independent runs.

    Attributes:
        estimate: the mean over runs of ``stat(second) - stat(first)`` (of log10 values when ``log``: then
            ``10 ** estimate`` is the geometric mean over runs of the ratio ``stat(second) / stat(first)``).
        low, high: the t-interval of ``estimate`` at level ``confidence`` (NaN with fewer than two runs).
        p_value: the two-sided sign-flip permutation p-value of "no change" (:func:`sign_flip_p`).
        n_runs: runs used (runs with an empty phase are dropped).
        statistic: ``"median"`` or ``"mean"`` over a phase's checkpoints.
        confidence: the interval's level. log: whether log10 of the values was compared.
        per_run: ``(n_runs,)`` the per-run differences.
        family_size: the size of the declared family this comparison belongs to (0: exploratory).
        p_adjusted: Holm-adjusted p-value within the family (NaN when exploratory).
        alpha: the family-wise level of the verdict.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    n_runs: int
    statistic: str
    confidence: float = 0.95
    log: bool = False
    per_run: tuple = ()
    family_size: int = 0
    p_adjusted: float = float("nan")
    alpha: float = 0.05

    @property
    def primary(self) -> bool:
        """Whether the comparison belongs to a declared family (else it is exploratory)."""
        return self.family_size > 0

    def direction(self, up: str = "rises", down: str = "falls", flat: str = "shows no clear change",
                  exploratory: str = EXPLORATORY) -> str:
        """The verdict word (:func:`verdict_word` of the Holm-adjusted p-value and the interval) for a primary
        comparison; ``exploratory`` for one outside the declared family."""
        if not self.primary:
            return exploratory
        return verdict_word(self.p_adjusted, self.low, self.high, alpha=self.alpha, up=up, down=down, flat=flat)


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


def _summary(x: np.ndarray, statistic: str) -> float:
    return float(np.median(x) if statistic == "median" else np.mean(x))


def run_differences(values: Sequence[Mapping[str, Sequence[float]]], first: str, second: str, *,
                    statistic: str = "median", log: bool = False) -> np.ndarray:
    """``ndarray[n]``: for each run with both phases non-empty, ``stat(second) - stat(first)`` over its
    checkpoints (of log10 values with ``log``). Arguments and errors as in :func:`phase_difference`."""
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic={statistic!r} must be one of {_STATISTICS}")
    if first == second:
        raise ValueError(f"first and second are the same phase {first!r}")
    missing = {i: [ph for ph in (first, second) if ph not in run] for i, run in enumerate(values)}
    missing = {i: m for i, m in missing.items() if m}
    if missing:
        detail = "; ".join(f"run {i} lacks {', '.join(map(repr, m))}" for i, m in missing.items())
        raise ValueError(f"phases missing: {detail}")
    out = []
    for i, run in enumerate(values):
        a, b = _phase_array(i, first, run[first], log), _phase_array(i, second, run[second], log)
        if len(a) and len(b):
            out.append(_summary(b, statistic) - _summary(a, statistic))
    return np.array(out, dtype=float)


def phase_difference(values: Sequence[Mapping[str, Sequence[float]]], first: str, second: str, *,
                     statistic: str = "median", confidence: float = 0.95, log: bool = False,
                     n_flips: int = 20_000, seed: int = 0) -> PhaseDifference:
    """The change of a quantity from phase ``first`` to phase ``second`` over independent runs.

    Procedure: each run is summarised first, by ``d_r = stat(second) - stat(first)`` with ``stat`` the median
    (or mean) of the run's checkpoints in the phase, so a run counts once however many checkpoints its phases
    hold. Over the runs: the estimate is ``mean(d)``; the p-value is the two-sided sign-flip permutation test of
    ``mean(d) = 0`` (:func:`sign_flip_p`: exact over all ``2**n`` sign patterns up to n = 16 runs, else
    ``n_flips`` random patterns seeded by ``seed``); the interval is the t-interval of ``d`` at ``confidence``.
    The result is exploratory until :func:`declare_family` places it in a family.

    Args:
        values: one mapping per run: phase name -> that run's checkpoint values in the phase. NaNs are ignored
            (a missing measurement); a run whose ``first`` or ``second`` phase is then empty is dropped.
        first, second: the phases compared (``second`` minus ``first``).
        statistic: ``"median"`` or ``"mean"`` over a phase's checkpoints.
        confidence: the interval's level, in (0, 1).
        log: compare ``log10`` of the values (positive quantities; ``estimate > 0`` means ``second`` is larger).
        n_flips, seed: the random sign patterns beyond 16 runs.
    Returns:
        A :class:`PhaseDifference`; with no usable run every number is NaN, with one run the interval is NaN.
    Raises:
        ValueError: unknown statistic, bad ``confidence``/``n_flips``, a run without one of the phases (naming the
            runs and the missing phases), infinite values, or non-positive values with ``log``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    if isinstance(n_flips, bool) or not isinstance(n_flips, (int, np.integer)) or n_flips < 1:
        raise ValueError(f"n_flips={n_flips!r} must be a positive integer")
    d = run_differences(values, first, second, statistic=statistic, log=log)
    nan = float("nan")
    common = dict(n_runs=len(d), statistic=statistic, confidence=confidence, log=log, per_run=tuple(d.tolist()))
    if not len(d):
        return PhaseDifference(estimate=nan, low=nan, high=nan, p_value=nan, **common)
    low, high = t_interval(d, confidence)
    p = sign_flip_p(d, n_flips=n_flips, rng=np.random.default_rng(seed))
    return PhaseDifference(estimate=float(d.mean()), low=float(low), high=float(high), p_value=float(p), **common)


def declare_family(results: Mapping[Hashable, PhaseDifference | SlopeTest], family: Collection[Hashable], *,
                   alpha: float = 0.05) -> dict:
    """``results`` with the members of ``family`` given Holm-adjusted p-values over the family (and
    ``family_size``, ``alpha``); the others stay exploratory. Every member of ``family`` must be in ``results``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    absent = [key for key in family if key not in results]
    if absent:
        raise ValueError(f"family members without a result: {absent}")
    members = list(dict.fromkeys(family))
    adjusted = holm([results[key].p_value for key in members])
    out = {key: replace(value, family_size=0, p_adjusted=float("nan"), alpha=alpha)
           for key, value in results.items()}
    for key, p in zip(members, adjusted):
        out[key] = replace(out[key], family_size=len(members), p_adjusted=float(p))
    return out


# ---------------------------------------------------------------------------------------------------------------
# A slope over runs: does a quantity grow with depth?


@dataclass(frozen=True)
class SlopeTest:
    """The least-squares slope of ``y`` on ``x`` over runs (within strata), with a permutation p-value.

    Attributes:
        estimate: the pooled within-stratum least-squares slope.
        low, high: its t-interval at ``confidence`` (residual degrees of freedom ``n - strata - 1``).
        p_value: two-sided permutation p-value of "y does not depend on x" (``x`` permuted within strata).
        n_runs, n_permutations: runs used, random permutations drawn.
        family_size, p_adjusted, alpha: as in :class:`PhaseDifference`.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    n_runs: int
    n_permutations: int
    confidence: float = 0.95
    family_size: int = 0
    p_adjusted: float = float("nan")
    alpha: float = 0.05

    @property
    def primary(self) -> bool:
        return self.family_size > 0

    def direction(self, up: str = "increases", down: str = "decreases", flat: str = "shows no clear trend",
                  exploratory: str = EXPLORATORY) -> str:
        """As :meth:`PhaseDifference.direction`."""
        if not self.primary:
            return exploratory
        return verdict_word(self.p_adjusted, self.low, self.high, alpha=self.alpha, up=up, down=down, flat=flat)


def _centred(values: np.ndarray, codes: np.ndarray, n_strata: int) -> np.ndarray:
    """``values [n]`` minus their stratum means (strata ``codes [n]``, in ``range(n_strata)``)."""
    means = np.bincount(codes, weights=values, minlength=n_strata) / np.bincount(codes, minlength=n_strata)
    return values - means[codes]


def slope_test(x: Sequence[float], y: Sequence[float], *, strata: Sequence[Hashable] | None = None,
               n_permutations: int = 9999, confidence: float = 0.95, seed: int = 0) -> SlopeTest:
    """The slope of ``y`` on ``x`` over independent runs, with a permutation p-value and a t-interval.

    Procedure: ``x`` and ``y`` are centred within each stratum (e.g. the initialisation seed, so that a seed's
    offset shared by its runs cancels); the estimate is the least-squares slope ``Σ x̃ỹ / Σ x̃²``; the p-value is
    the share of ``n_permutations`` random permutations of ``x`` within the strata (the observed arrangement
    counted: ``(1 + hits) / (1 + n_permutations)``) whose ``|slope|`` is at least the observed one, valid when under
    the null the runs of a stratum are exchangeable; the interval is the ordinary t-interval of the slope with
    ``n - n_strata - 1`` degrees of freedom (NaN when none is left).

    Args:
        x, y: ``[n]`` the regressor (depth) and the per-run response (e.g. log10 λ_max); NaN pairs are dropped.
        strata: ``[n]`` labels of the runs' strata (``None``: one stratum).
        n_permutations: random within-stratum permutations.
        confidence: the interval's level. seed: the permutations' seed.
    Raises:
        ValueError: mismatched lengths, bad ``n_permutations``/``confidence``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    strata = np.zeros(len(x), dtype=int) if strata is None else np.asarray(strata)
    if not len(x) == len(y) == len(strata):
        raise ValueError(f"x, y and strata must have one entry per run, got {len(x)}, {len(y)}, {len(strata)}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise ValueError(f"n_permutations={n_permutations!r} must be a positive integer")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, strata = x[keep], y[keep], strata[keep]
    nan = float("nan")
    _, codes = np.unique(strata, return_inverse=True)
    n, n_strata = len(x), int(codes.max()) + 1 if len(x) else 0
    xc = _centred(x, codes, n_strata) if n else x
    yc = _centred(y, codes, n_strata) if n else y
    sxx = float(xc @ xc)
    if n < 2 or sxx == 0:
        return SlopeTest(estimate=nan, low=nan, high=nan, p_value=nan, n_runs=n, n_permutations=int(n_permutations),
                         confidence=confidence)
    slope = float(xc @ yc) / sxx
    rng = np.random.default_rng(seed)
    # permute x within strata: sort random keys inside each stratum
    keys = rng.random((n_permutations, n)) + codes[None, :]  # stratum-major order after sorting
    order_in = np.argsort(codes, kind="stable")  # the runs, stratum-major
    perm = np.argsort(keys, axis=1)  # [B, n]: slot j holds a random run of order_in[j]'s stratum
    xp = np.empty(perm.shape)
    xp[:, order_in] = xc[perm]
    slopes = (xp @ yc) / sxx
    hits = int(np.sum(np.abs(slopes) >= abs(slope) * (1 - 1e-12)))
    p = (1 + hits) / (1 + n_permutations)
    dof = n - n_strata - 1
    if dof >= 1:
        residual = yc - slope * xc
        se = math.sqrt(float(residual @ residual) / dof / sxx)
        half = float(_scipy_stats.t.ppf((1 + confidence) / 2, dof)) * se
        low, high = slope - half, slope + half
    else:
        low = high = nan
    return SlopeTest(estimate=slope, low=low, high=high, p_value=float(p), n_runs=n,
                     n_permutations=int(n_permutations), confidence=confidence)


# ---------------------------------------------------------------------------------------------------------------
# Simulated runs: the error rates of the phase verdicts, measured


def simulate_phase_runs(rng: np.random.Generator, n_sim: int, n_runs: int, effect: float, *, n_quantities: int = 1,
                        tau: float = 0.5, sigma: float = 1.0, correlation: float = 0.5
                        ) -> tuple[np.ndarray, list[list[dict]]]:
    """Simulated runs as the phase comparisons see them.

    Each run has a level ``u ~ N(0, 1)`` shared by its two phases, a random effect on its change
    ``b ~ N(0, tau²)`` (correlated ``correlation`` across the quantities of a run), checkpoint noise
    ``N(0, sigma²)``, and 3-12 checkpoints in the first phase and 2-8 in the second, drawn per run. The second
    phase is shifted by ``effect + b`` (``effect = 0``: the null, with run-to-run variation).

    Returns:
        ``(d, runs)``: ``d [n_sim, n_quantities, n_runs]`` each run's difference of phase medians, and the first
        simulation's runs as :func:`phase_difference` input (one list of ``{"a": …, "b": …}`` per quantity).
    """
    m1, m2 = 12, 8
    shape = (n_sim, n_quantities, n_runs)
    n1 = rng.integers(3, m1 + 1, size=(n_sim, 1, n_runs)).repeat(n_quantities, axis=1)
    n2 = rng.integers(2, m2 + 1, size=(n_sim, 1, n_runs)).repeat(n_quantities, axis=1)
    level = rng.normal(size=shape)
    shared = rng.normal(size=(n_sim, 1, n_runs))
    b = tau * (math.sqrt(correlation) * shared + math.sqrt(1 - correlation) * rng.normal(size=shape))
    first = level[..., None] + sigma * rng.normal(size=shape + (m1,))
    second = (level + effect + b)[..., None] + sigma * rng.normal(size=shape + (m2,))

    def medians(x: np.ndarray, n: np.ndarray) -> np.ndarray:
        inside = np.arange(x.shape[-1]) < n[..., None]
        return np.nanmedian(np.where(inside, x, np.nan), axis=-1)

    d = medians(second, n2) - medians(first, n1)
    runs = [[{"a": first[0, q, r, :n1[0, q, r]], "b": second[0, q, r, :n2[0, q, r]]} for r in range(n_runs)]
            for q in range(n_quantities)]
    return d, runs


def verdict_signs(d: np.ndarray, *, family_size: int = 1, alpha: float = 0.05) -> np.ndarray:
    """The verdicts of :func:`phase_difference` + :func:`declare_family` on per-run differences, vectorised:
    ``d [..., m, n_runs]`` -> ``[..., m]`` of +1 (rises), -1 (falls), 0 (no verdict), the p-values Holm-adjusted
    over the ``m`` axis when ``family_size > 1`` (``m`` must then equal ``family_size``)."""
    p = sign_flip_p(d)
    low, high = t_interval(d)
    if family_size > 1:
        if p.shape[-1] != family_size:
            raise ValueError(f"family_size={family_size} but d has {p.shape[-1]} comparisons")
        p = np.apply_along_axis(holm, -1, p)
    significant = p <= alpha
    return np.where(significant & (low > 0), 1, np.where(significant & (high < 0), -1, 0))


def phase_error_rates(n_runs: int, family_size: int, *, n_sim: int = 2000, effect_sd: float = 2.0,
                      tau: float = 0.5, sigma: float = 1.0, alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """The phase verdicts' error rates at ``n_runs`` runs, measured on :func:`simulate_phase_runs`.

    Returns ``fpr`` (a single comparison's verdict word under the null), ``fwer`` (any word in a family of
    ``family_size`` null comparisons, Holm-adjusted) and ``fwer_unadjusted`` (the same without Holm), ``power``
    (a single comparison's correct word under a change of ``effect_sd`` standard deviations of a run's difference)
    and ``family_power`` (the smallest, over the family's members, share of correct words when every member
    carries that change, Holm-adjusted), ``effect`` (that change) and ``n_sim``.
    """
    rng = np.random.default_rng(seed)
    null, _ = simulate_phase_runs(rng, n_sim, n_runs, 0.0, n_quantities=family_size, tau=tau, sigma=sigma)
    effect = effect_sd * float(np.std(null))
    planted, _ = simulate_phase_runs(rng, n_sim, n_runs, effect, n_quantities=family_size, tau=tau, sigma=sigma)
    single_null, single_planted = verdict_signs(null, alpha=alpha), verdict_signs(planted, alpha=alpha)
    family_null = verdict_signs(null, family_size=family_size, alpha=alpha)
    family_planted = verdict_signs(planted, family_size=family_size, alpha=alpha)
    return dict(fpr=float(np.mean(single_null[:, 0] != 0)), power=float(np.mean(single_planted[:, 0] == 1)),
                wrong=float(np.mean(single_planted[:, 0] == -1)),
                fwer=float(np.mean((family_null != 0).any(axis=1))),
                fwer_unadjusted=float(np.mean((single_null != 0).any(axis=1))),
                family_power=float(np.min(np.mean(family_planted == 1, axis=0))), effect=effect, n_sim=n_sim)


def slope_error_rates(depths: Sequence[int], n_seeds: int, *, family_size: int = 2, slope: float = 0.1,
                      noise_sd: float = 0.3, seed_sd: float = 0.3, n_sim: int = 1000, n_permutations: int = 499,
                      alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """The depth slope verdict's error rates, measured on simulated runs (one per depth and seed).

    Each simulated run's response is ``slope × depth`` plus a per-seed offset ``N(0, seed_sd²)`` and run noise
    ``N(0, noise_sd²)``, for each of ``family_size`` quantities (independent noise); the verdicts are
    :func:`slope_test` (depth permuted within seeds, ``n_permutations``) Holm-adjusted over the family
    (:func:`declare_family`). Returns ``fwer`` (any word when every slope is 0), ``power`` (the first member
    *increases* when every slope is ``slope``), ``wrong`` (it *decreases* then) and ``n_sim``.
    """
    rng = np.random.default_rng(seed)
    x = np.tile(np.asarray(depths, dtype=float), n_seeds)
    strata = np.repeat(np.arange(n_seeds), len(depths))

    def words(true_slope: float) -> np.ndarray:
        out = np.zeros((n_sim, family_size), dtype=int)
        for i in range(n_sim):
            tests = {}
            for q in range(family_size):
                y = (true_slope * x + seed_sd * rng.normal(size=n_seeds)[strata]
                     + noise_sd * rng.normal(size=len(x)))
                tests[q] = slope_test(x, y, strata=strata, n_permutations=n_permutations,
                                      seed=int(rng.integers(2 ** 31)))
            family = declare_family(tests, list(range(family_size)), alpha=alpha)
            out[i] = [{"increases": 1, "decreases": -1}.get(family[q].direction(), 0) for q in range(family_size)]
        return out

    null, planted = words(0.0), words(slope)
    return dict(fwer=float(np.mean((null != 0).any(axis=1))), power=float(np.mean(planted[:, 0] == 1)),
                wrong=float(np.mean(planted[:, 0] == -1)), n_sim=n_sim)
