"""Sharpness vs depth: MLPs of several depths learning ``a + b mod p`` with full-batch AdamW, over several seeds.

``Config`` holds the chapter's parameters (defaults, presets, validation). ``run(config)`` trains every
``(depth, seed)`` run and the seed's small-split runs through :func:`hessian_book.fanout.run_tasks` (each run is
:func:`hessian_book.runs.modadd_mlp_run`: the logged curves and, at every checkpoint, the extreme Hessian
eigenvalues and Adam's preconditioned sharpness), summarises them per run and per depth, and returns a
:class:`Result`, whose :meth:`Result.glued` gives every number the prose quotes. The ``plot_*`` functions draw the
chapter's figures from a result.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .. import config as checks
from ..config import ChapterConfig
from ..curves import stack_logs, value_at_step
from ..stats import SlopeTest, declare_family, slope_error_rates, slope_test
from ..outcomes import StopRule, outcome_of_log
from ..fanout import run_tasks
from ..progress import show_progress
from ..runs import modadd_mlp_run
from ..sharpness import adam_stability_threshold
from ..store import ResultStore

__all__ = ["Config", "Result", "run", "train_one", "slope_rates", "spread_text", "steps_text", "depth_list",
           "range_text",
           "per_run_summary", "depth_table", "plot_test_accuracy", "plot_training_curves", "plot_sharpness",
           "plot_grokking_and_preconditioned", "plot_top_spectrum", "plot_norms", "plot_seed_fraction", "depth_outcome",
           "certified_interval", "certified_word", "round_up_1sig", "resolved_text", "depth_slopes",
           "slope_sentence", "lam_min_bound_text",
           "ratio_summary"]

GOAL_MINUTES = 20  # the page's budget at its defaults (book/record.py), judged here on raw wall time;
# the Reproducibility page judges it at the reference speed (hessian_book.calibration)
# A depth "reaches Adam's stability threshold" when, in every seed, λ_max(P⁻¹H) reaches 38/lr (ratio >= 1) at some
# Hessian checkpoint of the second half of training. The cut is the threshold itself: on a quadratic with P frozen,
# Adam is unstable above it, and at the edge of stability the preconditioned sharpness hovers around it (Cohen et
# al. 2022), so a run there reaches it at some checkpoints while a run below it never does. No tuned fraction.
AT_EOS = 1.0
DEPTH_FAMILY = ("lam_max_first", "lam_max_final")
"""The declared family of depth tests: the slope of log10 λ_max on depth at the first Hessian checkpoint and at
each run's end (the seed's claim "top eigenvalues increase with depth"), Holm-adjusted together at
:data:`ALPHA`; nothing else on the page gets a depth-trend word."""
ALPHA = 0.05
_DPI = 80  # figures are PNG in the book: a modest resolution keeps the pages small


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The depth chapter's parameters.

    Attributes:
        p: the task ``(a + b) mod p``.
        depths: hidden layers of the MLPs (one run per depth and seed).
        seeds: initialisation seeds. split_seed: the train/test split, the same for every run.
        width: hidden width. input_encoding: ``"onehot"`` (a, b one-hot, concatenated) or ``"embed"``.
        train_fraction: share of the ``p²`` pairs trained on.
        n_steps, lr, weight_decay, beta1, beta2: full-batch AdamW; ``n_steps`` is the cap.
        stop_min_margin, stop_fraction: the stop rule (:class:`hessian_book.outcomes.StopRule`): a run stops once
            test accuracy has held >= 95 % for ``max(stop_min_margin, stop_fraction × g)`` steps after its
            generalisation step ``g``; a run that does not generalise trains to ``n_steps``.
        log_every: steps between logged metrics (train/test loss and accuracy, gradient and parameter norms).
        hessian_every: steps between checkpoints, at each of which the Hessian extremes are computed.
        lanczos_tol: Lanczos residual tolerance, relative to the spectral radius.
        hessian_dtype: precision of the Hessian-vector products (``"float32"`` or ``"float64"``).
        top_k: largest eigenvalues at the end of training (first seed of each depth; 0: none).
        seed_fraction, seed_fraction_depths: the seed repository's train fraction, rerun at these depths (first
            seed, Hessians at the last step only).
        threads: torch threads per run (0: torch's default).
        scheduler: where the runs execute: ``None``/``""`` local processes, ``"serial"`` this process, or a Dask
            scheduler address ``tcp://host:port`` (see :mod:`hessian_book.fanout`). The numbers do not depend on it.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # seconds of work, in a fresh temporary directory so that CI always recomputes it; in this process,
        # since starting worker processes would cost more than the runs
        "smoke": dict(depths=[1, 2], seeds=[0], n_steps=200, log_every=20, hessian_every=100, top_k=3,
                      seed_fraction_depths=[2], results_dir="", scheduler="serial"),
    }

    p: int = 97
    depths: list = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    width: int = 128
    input_encoding: str = "onehot"
    train_fraction: float = 0.3
    split_seed: int = 0
    # The cap is set by the page's budget: at 10,000 the record took 22.7 min at the reference speed against 20
    # (18 of 21 runs trained to the cap); depth 2, the one depth that generalised, stopped by step 5,400.
    n_steps: int = 7_000
    lr: float = 3e-3
    weight_decay: float = 3.0
    beta1: float = 0.9
    beta2: float = 0.98
    stop_min_margin: int = 2000
    stop_fraction: float = 0.25
    log_every: int = 100
    hessian_every: int = 1000
    lanczos_tol: float = 1e-2
    hessian_dtype: str = "float32"
    top_k: int = 10
    seed_fraction: float = 0.1
    seed_fraction_depths: list = field(default_factory=lambda: [1, 2])
    threads: int = 1
    scheduler: str | None = None

    def validate(self) -> None:
        for name in ("p", "width", "n_steps", "log_every", "hessian_every", "stop_min_margin"):
            checks.positive_int(name, getattr(self, name))
        if isinstance(self.stop_fraction, bool) or not isinstance(self.stop_fraction, (int, float)) or not (
                math.isfinite(self.stop_fraction) and self.stop_fraction >= 0):
            raise checks.ConfigError(f"stop_fraction={self.stop_fraction!r} must be a finite number >= 0")
        if self.p < 2:
            raise checks.ConfigError(f"p={self.p!r} must be >= 2")
        for name in ("depths", "seeds", "seed_fraction_depths"):
            values = getattr(self, name)
            checks.int_list(name, values, minimum=1 if name != "seeds" else 0)
            if len(set(values)) != len(values):
                raise checks.ConfigError(f"{name}={values!r} has repeated entries")
        checks.non_negative_int("split_seed", self.split_seed)
        checks.choice("input_encoding", self.input_encoding, ("onehot", "embed"))
        checks.fraction("train_fraction", self.train_fraction)
        checks.fraction("seed_fraction", self.seed_fraction)
        checks.positive_float("lr", self.lr)
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or not (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise checks.ConfigError(f"weight_decay={self.weight_decay!r} must be a finite number >= 0")
        for name in ("beta1", "beta2"):
            checks.fraction(name, getattr(self, name), closed=True)
            if getattr(self, name) == 1:
                raise checks.ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.log_every > self.n_steps or self.n_steps % self.log_every:
            raise checks.ConfigError(f"log_every={self.log_every!r} must divide n_steps={self.n_steps}")
        if self.n_steps % self.hessian_every or self.hessian_every % self.log_every:
            raise checks.ConfigError(f"hessian_every={self.hessian_every!r} must divide n_steps={self.n_steps} and "
                                     f"be a multiple of log_every={self.log_every}")
        checks.positive_float("lanczos_tol", self.lanczos_tol)
        checks.choice("hessian_dtype", self.hessian_dtype, ("float32", "float64"))
        checks.non_negative_int("top_k", self.top_k)
        checks.non_negative_int("threads", self.threads)
        checks.scheduler("scheduler", self.scheduler)

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    @property
    def n_train(self) -> int:
        """Training pairs (the split's size)."""
        return round(self.train_fraction * self.p * self.p)

    @property
    def eos_adam(self) -> float:
        """Adam's stability threshold for the preconditioned sharpness, ``(2 + 2 β1) / ((1 − β1) lr)``."""
        return adam_stability_threshold(self.lr, self.beta1)

    def stop_rule(self) -> StopRule:
        """Every run's stop rule (:class:`hessian_book.outcomes.StopRule` at 95 % test accuracy)."""
        return StopRule(min_margin=self.stop_min_margin, fraction=self.stop_fraction)

    def common(self) -> dict[str, Any]:
        """The training and Hessian parameters every run shares (all but depth, seed, split and schedule)."""
        return dict(p=self.p, width=self.width, input_encoding=self.input_encoding, split_seed=self.split_seed,
                    n_steps=self.n_steps, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas,
                    log_every=self.log_every, lanczos_tol=self.lanczos_tol, hessian_dtype=self.hessian_dtype,
                    stop=self.stop_rule())

    def tasks(self) -> list[dict[str, Any]]:
        """One :func:`train_one` task per run: every ``(depth, seed)`` (seed-major, so an interrupted page has whole
        seeds), then the seed-fraction runs. ``progress`` is added by :func:`run`."""
        common = dict(self.common(), results_dir=self.results_dir, threads=self.threads)
        main = [dict(common, depth=d, seed=s, train_fraction=self.train_fraction, hessian_every=self.hessian_every,
                     top_k=self.top_k if s == self.seeds[0] else 0)
                for s in self.seeds for d in self.depths]
        small = [dict(common, depth=d, seed=self.seeds[0], train_fraction=self.seed_fraction, hessian_every=0,
                      top_k=0)
                 for d in self.seed_fraction_depths]
        return main + small


def train_one(*, results_dir: str, threads: int, progress: bool | None = False, **run: Any) -> dict:
    """One run (:func:`hessian_book.runs.modadd_mlp_run`) with ``threads`` torch threads (0: leave torch's setting).

    The task function of :func:`run`: module-level, so worker processes import it; the thread setting is restored
    afterwards, so a run in the calling process (``scheduler="serial"``) leaves it as it was.
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return modadd_mlp_run(results_dir, progress=progress, **run)
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------------------
# Summaries


def per_run_summary(runs: dict[tuple[int, int], dict], config: Config) -> pd.DataFrame:
    """One row per ``(depth, seed)`` run (depth-major, seeds in ``config.seeds`` order).

    Every run is read up to its own end step ``end_step`` (where the stop rule ended it, ``stopped="rule"``, or
    the cap ``n_steps``, ``stopped="cap"``); "final" means at that step. Columns: ``n_params``; ``end_step``,
    ``stopped``; ``final_train``, ``final_test`` (accuracy at the end step), ``best_test`` (over the log),
    ``final_train_loss``; ``memorised``, ``generalised`` (:mod:`hessian_book.outcomes`, within ``n_steps``: test
    accuracy held >= 95 %), both nullable, ``delay_ratio`` and ``groks``; from the Hessian checkpoints:
    ``lam_max_first`` (at the first checkpoint after step 0, NaN if there is none), ``lam_max_final``,
    ``lam_max_peak``, ``lam_max_at_grok`` (interpolated geometrically at ``generalised``; NaN if it never
    generalised), ``lam_min_final``, ``precond_peak`` (the largest ``λ_max(P⁻¹H)``), and
    ``precond_late``/``precond_late_max``: the median/maximum of ``λ_max(P⁻¹H) / (38/lr)`` over the run's
    checkpoints in the second half of its training (steps >= end_step / 2).
    """
    eos = config.eos_adam
    rows = []
    for d in config.depths:
        for seed in config.seeds:
            r = runs[d, seed]
            h_steps = np.array([h["step"] for h in r["hessian"]])
            lam_max, lam_min, pre = (np.array([np.nan if h[k] is None else h[k] for h in r["hessian"]], dtype=float)
                                     for k in ("lambda_max", "lambda_min", "preconditioned_lambda_max"))
            end = int(r["log"][-1]["step"])
            late = h_steps >= end / 2
            with np.errstate(all="ignore"):
                pre_late = np.nanmedian(pre[late]) / eos if late.any() else float("nan")
                pre_late_max = np.nanmax(pre[late]) / eos if late.any() else float("nan")
                pre_peak = np.nanmax(pre)
            o = outcome_of_log(r["log"], budget=config.n_steps, rule=config.stop_rule())
            grok = o.generalised
            rows.append(dict(
                depth=d, seed=seed, n_params=r["n_params"], end_step=end,
                stopped=r["log"][-1].get("stopped", "cap"), final_train=r["log"][-1]["train_acc"],
                final_test=r["log"][-1]["test_acc"], best_test=max(x["test_acc"] for x in r["log"]),
                final_train_loss=r["log"][-1]["train_loss"], memorised=o.memorised, generalised=grok,
                delay_ratio=float("nan") if o.ratio is None else float(o.ratio), groks=o.groks,
                lam_max_first=lam_max[1] if len(h_steps) > 1 else float("nan"),
                lam_max_final=lam_max[-1], lam_max_peak=np.nanmax(lam_max),
                lam_max_at_grok=value_at_step(h_steps, lam_max, grok, log=True) if grok is not None
                else float("nan"),
                lam_min_final=lam_min[-1], precond_peak=pre_peak, precond_late=pre_late,
                precond_late_max=pre_late_max, **_certificate(r, config)))
    table = pd.DataFrame(rows)
    return table.astype({"memorised": "Int64", "generalised": "Int64"})


def _certificate(record: dict, config: Config) -> dict[str, Any]:
    """The per-run columns of the certified λ_min at the end step (see :func:`per_run_summary`)."""
    last = record["hessian"][-1]
    low, high, resolution = certified_interval(last["lambda_min"], last["lambda_max"], config.lanczos_tol)
    return dict(lam_min_low=low, lam_min_high=high, lam_min_resolution=resolution,
                lam_min_word=certified_word(low, high))


def depth_outcome(n_generalised: int, n_seeds: int) -> str:
    """Whether a depth generalises, from how many of its ``n_seeds`` runs generalised (test accuracy held >= 95 %,
    :mod:`hessian_book.outcomes`) within the step budget (which the caller's sentence names).

    The chapter's definition: a depth *generalises* when every seed does, *does not generalise* when none does;
    otherwise the count is given (``"generalises in 2 of 3 seeds"``).
    """
    if not 0 <= n_generalised <= n_seeds or n_seeds < 1:
        raise ValueError(f"n_generalised={n_generalised!r} must be in [0, n_seeds={n_seeds!r}], n_seeds >= 1")
    if n_generalised == n_seeds:
        return "generalises"
    if n_generalised == 0:
        return "does not generalise"
    return f"generalises in {n_generalised} of {n_seeds} seeds"


def certified_interval(lam_min: float, lam_max: float, tol: float) -> tuple[float, float, float]:
    """What the Lanczos residual bound says about the smallest eigenvalue: ``(θ − r, θ + r, r)`` for the smallest
    Ritz value ``θ = lam_min`` and ``r = tol × ρ``, ``ρ = max(|lam_min|, |lam_max|)`` the spectral radius (Lanczos
    stops when every residual is below ``tol × ρ``).

    A Ritz value with residual ``r`` lies within ``r`` of *some* eigenvalue, not necessarily the smallest (Lanczos
    may have missed eigenvalues below it), so ``[θ − r, θ + r]`` locates an eigenvalue, and the only bound it gives
    on the smallest eigenvalue is the upper one, ``λ_min <= θ + r`` (``high``); ``low`` bounds nothing about
    ``λ_min``. :func:`certified_word` reads only ``high``."""
    resolution = tol * max(abs(lam_min), abs(lam_max))
    return lam_min - resolution, lam_min + resolution, resolution


def certified_word(low: float, high: float) -> str:
    """``"negative"`` when the bound proves ``λ_min < 0`` (``high = θ + r < 0``: an eigenvalue lies within ``r``
    of ``θ``, hence below 0), else ``"not resolved"``: a positive ``λ_min`` is never certified, because the
    residual bound says nothing about eigenvalues Lanczos did not find. ``low`` is accepted for symmetry and
    ignored."""
    return "negative" if math.isfinite(high) and high < 0 else "not resolved"


def lam_min_bound_text(value: float, resolution: float) -> str:
    """The table's final λ_min: the upper bound ``λ_min <= θ + r`` quoted to the resolution, with its word
    (``"≤ -1.0 (negative)"``, ``"≤ 0.3 (not resolved)"``; ``"–"`` if undefined)."""
    if not (math.isfinite(value) and math.isfinite(resolution)):
        return "–"
    r = round_up_1sig(resolution)
    decimals = max(0, -math.floor(math.log10(r))) if r > 0 else 3
    high = value + resolution
    return f"≤ {high:.{decimals}f} ({certified_word(value - resolution, high)})"


def round_up_1sig(x: float) -> float:
    """``x > 0`` rounded *up* to one significant digit (0.24 → 0.3, 0.2 → 0.2): a resolution never understated."""
    if not x > 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** math.floor(math.log10(x))
    return math.ceil(round(x / scale, 9)) * scale


def resolved_text(value: float, resolution: float) -> str:
    """``value`` quoted only to its ``resolution``: ``"|λ| ≤ 0.3"`` when the interval contains 0, else the value
    rounded to the resolution's first digit, ``"-1.3 ± 0.3"``."""
    if not (math.isfinite(value) and math.isfinite(resolution)):
        return "–"
    r = round_up_1sig(resolution)
    if r <= 0:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(r)))
    if abs(value) <= resolution:
        return f"|λ| ≤ {r:.{decimals}f}"
    return f"{value:.{decimals}f} ± {r:.{decimals}f}"


def depth_slopes(per_run: pd.DataFrame, *, n_permutations: int = 9999, seed: int = 0) -> dict[str, SlopeTest]:
    """For each column of :data:`DEPTH_FAMILY`, the slope of its log10 on depth over every run
    (:func:`hessian_book.stats.slope_test`: within-seed least squares, depth permuted within seeds for the
    p-value, t-interval), Holm-adjusted over the family at :data:`ALPHA`. Non-positive values count as missing."""
    out = {}
    for name in DEPTH_FAMILY:
        values = per_run[name].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(values > 0, np.log10(values), np.nan)
        out[name] = slope_test(per_run.depth.to_numpy(dtype=float), y, strata=per_run.seed.to_numpy(),
                               n_permutations=n_permutations, seed=seed)
    return declare_family(out, DEPTH_FAMILY, alpha=ALPHA)


@functools.lru_cache(maxsize=8)
def slope_rates(depths: tuple, n_seeds: int) -> dict[str, float]:
    """:func:`hessian_book.stats.slope_error_rates` of :func:`depth_slopes` at these depths and seeds (Holm over
    :data:`DEPTH_FAMILY`; a slope of 0.1 decades per layer against 0.3 decades of run noise for the power);
    deterministic, so cached."""
    return slope_error_rates(list(depths), n_seeds, family_size=len(DEPTH_FAMILY), slope=0.1, noise_sd=0.3,
                             alpha=ALPHA)


def slope_sentence(test: SlopeTest) -> str:
    """``"increases with depth: ×1.8 per added layer (95 % interval ×1.5 to ×2.1; permutation p = 0.0001,
    Holm-adjusted 0.0002; 21 runs)"``, the word from :meth:`hessian_book.stats.SlopeTest.direction`."""
    if not math.isfinite(test.estimate):
        return f"is not tested ({test.n_runs} runs with a defined value)"
    interval = ("no interval" if not math.isfinite(test.low) else
                f"95 % interval ×{10 ** test.low:.3g} to ×{10 ** test.high:.3g}")
    adjusted = f", Holm-adjusted {test.p_adjusted:.2g}" if test.primary else ""
    return (f"{test.direction()} with depth: ×{10 ** test.estimate:.3g} per added layer ({interval}; permutation "
            f"p = {test.p_value:.2g}{adjusted}; {test.n_runs} runs, depth permuted within seeds)")


def ratio_summary(ratios: Sequence[float]) -> tuple[float, str]:
    """Median and ``"lo–hi"`` range of the defined delay ratios (NaN and ``"–"`` when none is defined)."""
    values = np.asarray(ratios, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), "–"
    return float(np.median(values)), range_text(values, "{:.1f}")


def spread_text(values: Sequence[float], fmt: str = "{:.3g}") -> str:
    """``"mean [min, max]"`` of the finite ``values`` (one value: itself; none: ``"–"``)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(values.mean())} [{fmt.format(values.min())}, {fmt.format(values.max())}]"


def steps_text(steps: Sequence[int | None]) -> str:
    """Per-seed steps, comma-separated, ``"–"`` for a missing one."""
    return ", ".join("–" if s is None or pd.isna(s) else str(int(s)) for s in steps)


def depth_list(depths: Sequence[int]) -> str:
    """``"3, 4"``, or ``"none"``."""
    return ", ".join(map(str, depths)) or "none"


def range_text(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``"lo–hi"`` of ``values`` (one value: itself; none: ``"–"``)."""
    values = list(values)
    if not values:
        return "–"
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if len(values) == 1 else f"{low}–{high}"


def depth_table(per_run: pd.DataFrame, n_seeds: int) -> pd.DataFrame:
    """The results table, one row per depth: mean [min, max] over seeds, and step lists per seed."""
    rows = {}
    for d, g in per_run.groupby("depth", sort=False):
        rows[d] = {
            "parameters": f"{int(g.n_params.iloc[0]):,}",
            "final train acc %": spread_text(100 * g.final_train, "{:.1f}"),
            "final test acc %": spread_text(100 * g.final_test, "{:.1f}"),
            "best test acc %": spread_text(100 * g.best_test, "{:.1f}"),
            "generalised": f"{int(g.generalised.notna().sum())}/{n_seeds}",
            "memorised at": steps_text(g.memorised),
            "test ≥ 95 % (held) from": steps_text(g.generalised),
            "trained steps": steps_text(g.end_step),
            "λ_max at grokking": spread_text(g.lam_max_at_grok),
            "λ_max final": spread_text(g.lam_max_final),
            "λ_min final: certified bound": "; ".join(lam_min_bound_text(v, r) for v, r in zip(
                g.lam_min_final, g.lam_min_resolution)),
            "delay ratio": ", ".join("–" if not np.isfinite(x) else f"{x:.1f}" for x in g.delay_ratio),
            "groks": f"{int(g.groks.sum())}/{n_seeds}",
            "λ_max(P⁻¹H) · lr/38: median": spread_text(g.precond_late, "{:.2f}"),
            "λ_max(P⁻¹H) · lr/38: max": spread_text(g.precond_late_max, "{:.2f}"),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "depth"
    return table


def _geometric_mean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


# ---------------------------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class Result:
    """What the chapter computed.

    Attributes:
        config: the configuration it was computed with.
        runs: ``(depth, seed) ->`` the run's record from :func:`hessian_book.runs.modadd_mlp_run` (``log``,
            ``hessian``, ``n_params``, ``memorised``, ``generalised``, ``top``).
        seed_fraction_runs: ``depth ->`` the record of the run at the seed's train fraction.
        per_run: :func:`per_run_summary`. table: :func:`depth_table` (for display).
        computed_seconds: wall seconds stored with the runs (of the execution that computed them): ``train``,
            ``evaluation`` (the logged metrics), ``hessians``.
        n_hvp: Hessian-vector products of all stored Hessian results.
        first_seconds: wall time of the first execution of :func:`run` with these parameters (stored).
        timings: this execution's wall seconds: ``runs`` (training and Hessians, or reading them),
            ``summaries``, ``total``.
    """

    config: Config
    runs: dict[tuple[int, int], dict]
    seed_fraction_runs: dict[int, dict]
    per_run: pd.DataFrame
    table: pd.DataFrame
    computed_seconds: dict[str, float]
    n_hvp: int
    first_seconds: float
    timings: dict[str, float]

    def curves(self, depth: int, key: str, source: str = "log") -> tuple[np.ndarray, np.ndarray]:
        """``(steps [T], values [seeds, T])`` of one logged (``source="log"``) or Hessian (``"hessian"``)
        quantity at ``depth``; every step of any seed's run, NaN after a run's end (runs stop at their own step)."""
        return stack_logs([self.runs[depth, s][source] for s in self.config.seeds], key, union=True)

    def _column(self, depth: int, name: str) -> np.ndarray:
        return self.per_run.loc[self.per_run.depth == depth, name].to_numpy()

    def check_text(self) -> str:
        """Deterministic facts about the runs, for the page's checked output."""
        runs = self.runs.values()
        records = [h for r in runs for h in r["hessian"]]
        finite = all(np.isfinite([x[k] for k in ("train_loss", "test_loss", "grad_norm")]).all()
                     for r in runs for x in r["log"])
        return "\n".join([
            f"runs: {len(self.runs)}",
            f"log records per run: {sorted({len(r['log']) for r in runs})}",
            f"Hessian records per run: {sorted({len(r['hessian']) for r in runs})}",
            f"every lambda_min <= lambda_max: {all(h['lambda_min'] <= h['lambda_max'] for h in records)}",
            f"all logged metrics finite: {finite}",
        ])

    def _verdicts(self, generalised, never, memorised_all, underfit, at_eos, n_grok) -> dict[str, Any]:
        """The chapter's conclusions as glued words and sentences, computed from the runs (see :meth:`glued`)."""
        c, out = self.config, {}
        depths, n_seeds, col = c.depths, len(c.seeds), self._column
        smoke = c.preset == "smoke"

        def verdict(topic: str, sentence: str) -> str:
            return f"a smoke run ({c.n_steps:,} steps) renders no verdict on {topic}" if smoke else sentence

        n_groks = {d: int(col(d, "groks").sum()) for d in depths}
        for d in depths:
            median, spread = ratio_summary(col(d, "delay_ratio"))
            out.update({f"delay_ratio_d{d}": median, f"delay_ratio_range_d{d}": spread,
                        f"n_groks_d{d}": n_groks[d],
                        f"outcome_d{d}": f"{depth_outcome(n_grok[d], n_seeds)} within {c.n_steps:,} steps"})
        # Which depths generalise, and do they grok (hessian_book.outcomes: generalised within the budget, test
        # accuracy held >= 95 %, with a delay ratio >= 5)?
        parts = []
        for d in generalised:
            median, spread = ratio_summary(col(d, "delay_ratio"))
            grok = [int(g) for g in col(d, "generalised")]
            mem = [int(m) for m in col(d, "memorised") if pd.notna(m)]
            parts.append(
                f"depth {d} generalises (test accuracy held >= 95 %) from step {int(np.median(grok))} (median over "
                f"seeds), "
                f"after memorising at step {int(np.median(mem))}: a delay ratio of {median:.1f} (median; "
                f"{spread} over seeds), and {n_groks[d]} of its {n_seeds} runs grok by this book's definition "
                f"(generalised within {c.n_steps:,} steps, with a delay ratio of at least 5)")
        out["grokking_sentence"] = verdict("grokking", "; ".join(parts) if parts else
                                           f"no depth generalised (test accuracy held >= 95 %) in every seed within "
                                           f"{c.n_steps:,} steps") + "."
        # The seed's claims.
        slopes = depth_slopes(self.per_run)
        out["claim_increase_text"] = verdict(
            "the seed's first claim", f"at step {c.hessian_every}, λ_max {slope_sentence(slopes['lam_max_first'])}; "
            f"at the end of each run, it {slope_sentence(slopes['lam_max_final'])}")
        if 2 not in depths:
            depth2 = "depth 2 was not run"
        elif n_groks[2] == n_seeds:
            depth2 = (f"every one of the {n_seeds} runs at depth 2 groks within {c.n_steps:,} steps by this book's "
                      "definition")
        elif n_groks[2] == 0:
            depth2 = (f"none of the {n_seeds} runs at depth 2 groks within {c.n_steps:,} steps by this book's "
                      "definition")
        else:
            depth2 = (f"{n_groks[2]} of the {n_seeds} runs at depth 2 grok within {c.n_steps:,} steps by this book's "
                      "definition")
        out["claim_depth2_text"] = verdict("the seed's second claim", depth2)
        deep = [d for d in depths if d >= 4]
        if not deep:
            deep_text = "no depth of 4 or more was run"
        else:
            deep_gen = [d for d in deep if n_grok[d] > 0]
            deep_text = (f"no run at depths {depth_list(deep)} generalised (test accuracy held >= 95 %) within "
                         f"{c.n_steps:,} steps"
                         if not deep_gen else f"depths {depth_list(deep_gen)} generalised in at least one seed")
        shallow_never = [d for d in never if d < 4]
        deep_text += (f"; below depth 4, depths {depth_list(shallow_never)} did not generalise in any seed either"
                      if shallow_never else "; every depth below 4 generalised in at least one seed")
        out["claim_deep_text"] = verdict("the seed's third claim", deep_text)
        out.update(depths_eos_memorised=depth_list([d for d in at_eos if d in memorised_all and d in never]),
                   depths_eos_fitting=depth_list([d for d in at_eos if d in underfit]))
        small_gen = [d for d, r in self.seed_fraction_runs.items()
                     if outcome_of_log(r["log"], budget=c.n_steps, rule=c.stop_rule()).generalised is not None]
        out["seed_fraction_text"] = verdict(
            "the seed's split", f"at depths {depth_list(small_gen)} a run generalised (test accuracy held >= 95 %) "
            f"within {c.n_steps:,} steps" if small_gen else f"no run at depths "
            f"{depth_list(list(self.seed_fraction_runs))} generalised (test accuracy held >= 95 %) within "
            f"{c.n_steps:,} steps")
        # λ_min at the end of training: negative where the residual bound proves it, else not resolved.
        words = self.per_run.lam_min_word
        out.update(n_lam_min_negative=int((words == "negative").sum()),
                   n_lam_min_unresolved=int((words == "not resolved").sum()), n_runs=len(self.per_run),
                   lam_min_resolution_max=round_up_1sig(float(self.per_run.lam_min_resolution.max())))
        return out

    def glued(self) -> dict[str, Any]:
        """Every number and word the prose glues, by glue name."""
        c, out = self.config, {}
        depths, n_seeds, eos = c.depths, len(c.seeds), c.eos_adam
        col = self._column
        n_grok = {d: int(pd.notna(col(d, "generalised")).sum()) for d in depths}
        memorised = {d: [int(m) for m in col(d, "memorised") if pd.notna(m)] for d in depths}
        generalised = [d for d in depths if n_grok[d] == n_seeds]
        never = [d for d in depths if n_grok[d] == 0]
        final_lam = {d: _geometric_mean(col(d, "lam_max_final")) for d in depths}
        peak_lam = {d: _geometric_mean(col(d, "lam_max_peak")) for d in depths}
        first_lam = {d: _geometric_mean(col(d, "lam_max_first")) for d in depths}
        late_ratio = {}  # median over each run's second half of λ_max(P⁻¹H) / (38/lr), pooled over seeds
        for d in depths:
            late = []
            for s in c.seeds:
                run, end = self.runs[d, s], self.runs[d, s]["log"][-1]["step"]
                late += [h["preconditioned_lambda_max"] for h in run["hessian"] if h["step"] >= end / 2]
            late = np.array([np.nan if x is None else x for x in late], dtype=float)
            late_ratio[d] = float(np.nanmedian(late) / eos) if np.isfinite(late).any() else float("nan")
        out.update(
            depths_all_generalised=depth_list(generalised), depths_never_generalised=depth_list(never),
            best_test_acc=100 * max(col(d, "best_test").max() for d in depths), n_seeds=n_seeds,
            n_train=c.n_train, top_k=c.top_k, eos_adam=eos, eos_gd=2 / c.lr,
            precond_peak_max=max(col(d, "precond_peak").max() for d in depths),
            lam_final_min_depth=min(final_lam, key=final_lam.get),
            lam_final_max_depth=max(final_lam, key=final_lam.get),
            lam_final_lo=min(final_lam.values()), lam_final_hi=max(final_lam.values()),
            lam_peak_lo=min(peak_lam.values()), lam_peak_hi=max(peak_lam.values()),
            lam_max_overall=max(col(d, "lam_max_peak").max() for d in depths),
            first_hessian_step=c.hessian_every)
        for d in depths:
            out[f"lam_first_d{d}"] = first_lam[d]
            out[f"precond_ratio_d{d}"] = late_ratio[d]
            out[f"final_train_d{d}"] = 100 * np.mean(col(d, "final_train"))
            out[f"final_loss_d{d}"] = _geometric_mean(col(d, "final_train_loss"))
        memorised_all = [d for d in depths if len(memorised[d]) == n_seeds]
        underfit = [d for d in depths if len(memorised[d]) < n_seeds]
        # "reaches" to rounding: a ratio computed as 1 - 1e-16 reaches the threshold
        at_eos = [d for d in depths if bool(np.all(col(d, "precond_late_max") >= AT_EOS * (1 - 1e-9)))]
        deep_underfit = [d for d in underfit if d > 1]
        out.update(
            depths_above_gd=depth_list([d for d in depths if peak_lam[d] > 2 / c.lr]),
            depths_stuck=depth_list([d for d in memorised_all if n_grok[d] == 0]),
            depths_underfit=depth_list(underfit), depths_at_eos=depth_list(at_eos),
            precond_range_at_eos=range_text([late_ratio[d] for d in at_eos]),
            n_generalised_at_eos=sum(n_grok[d] for d in at_eos),
            precond_range_generalised=range_text([late_ratio[d] for d in generalised]),
            depths_deep_underfit=depth_list(deep_underfit),
            test_range_deep_underfit=range_text([100 * col(d, "final_test").mean() for d in deep_underfit], "{:.0f}"),
            train_range_deep_underfit=range_text([100 * col(d, "final_train").mean() for d in deep_underfit],
                                                 "{:.0f}"))
        # Growth of λ_max with depth: a test over all runs (depth_slopes), not a word from per-depth means.
        slope = depth_slopes(self.per_run)["lam_max_first"]
        out.update(
            lam_first_factor=10 ** slope.estimate, lam_first_factor_low=10 ** slope.low,
            lam_first_factor_high=10 ** slope.high, lam_first_p=slope.p_value, lam_first_padj=slope.p_adjusted,
            lam_first_slope_text=slope_sentence(slope),
            **{f"slope_sim_{k}": 100 * v if k != "n_sim" else v
               for k, v in slope_rates(tuple(sorted(depths)), n_seeds).items()},  # rates in %
            lam_first_lo=min(first_lam.values()), lam_first_hi=max(first_lam.values()),
            lam_first_lo_depth=min(first_lam, key=first_lam.get), lam_first_hi_depth=max(first_lam, key=first_lam.get))
        late_max = {d: float(np.max(col(d, "precond_late_max"))) for d in depths}
        out.update(precond_max_overall=max(late_max.values()), precond_max_depth=max(late_max, key=late_max.get))
        for d in depths:
            grok = [int(g) for g in col(d, "generalised") if pd.notna(g)]
            at_grok = col(d, "lam_max_at_grok")
            at_grok = at_grok[np.isfinite(at_grok)]
            out.update({
                f"final_test_d{d}": 100 * col(d, "final_test").mean(), f"n_grok_d{d}": n_grok[d],
                f"grok_step_d{d}": int(np.median(grok)) if grok else "never",
                f"memorised_d{d}": int(np.median(memorised[d])) if memorised[d] else "never",
                f"lam_final_d{d}": final_lam[d], f"lam_peak_d{d}": peak_lam[d],
                f"lam_grok_d{d}": _geometric_mean(at_grok) if len(at_grok) else float("nan")})
        out.update(self._verdicts(generalised, never, memorised_all, underfit, at_eos, n_grok))
        # The seed's small split.
        small = self.seed_fraction_runs.values()
        out.update(seed_fraction_best_test=100 * max(max(x["test_acc"] for x in r["log"]) for r in small),
                   seed_fraction_pct=100 * c.seed_fraction,
                   seed_fraction_depths=", ".join(map(str, c.seed_fraction_depths)),
                   decay_steps=1 / (c.lr * c.weight_decay) if c.weight_decay else float("inf"))
        # Wall time.
        out.update({f"seconds_{k}": v for k, v in self.computed_seconds.items()})
        out.update(minutes_total=sum(self.computed_seconds.values()) / 60, n_hvp_total=self.n_hvp,
                   n_steps_text=f"{c.n_steps:,}", page_seconds=self.timings["total"],
                   first_minutes=self.first_seconds / 60,
                   goal_text="met" if self.first_seconds <= 60 * GOAL_MINUTES
                   else f"missed, by a factor {self.first_seconds / (60 * GOAL_MINUTES):.1f}")
        return out


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Train (or read) every run of ``config`` and summarise them.

    The runs are independent tasks for :func:`hessian_book.fanout.run_tasks` on ``config.scheduler``; each is
    stored under its own parameters (:func:`hessian_book.runs.modadd_mlp_run`), so an interrupted execution resumes
    per run and a rerun reads everything back. Full-batch training is deterministic, so the executor does not
    change the numbers (with the same ``threads``).
    """
    started = time.perf_counter()
    serial = config.scheduler == "serial"
    # Per-run bars only in this process: parallel workers would interleave theirs.
    tasks = [dict(task, progress=progress if serial else False) for task in config.tasks()]
    results = run_tasks(train_one, tasks, scheduler=config.scheduler, desc="runs",
                        progress=show_progress(progress))
    records = [r.value for r in results]
    n_main = len(config.depths) * len(config.seeds)
    runs = {(t["depth"], t["seed"]): r for t, r in zip(tasks[:n_main], records[:n_main])}
    small = {t["depth"]: r for t, r in zip(tasks[n_main:], records[n_main:])}
    runs_seconds = time.perf_counter() - started
    per_run = per_run_summary(runs, config)
    everything = list(runs.values()) + list(small.values())
    computed = dict(train=sum(r["log"][-1]["train_seconds"] for r in everything),
                    evaluation=sum(x["eval_seconds"] for r in everything for x in r["log"]),
                    hessians=sum(h["seconds"] for r in everything for h in r["hessian"]))
    n_hvp = sum(h["n_hvp"] for r in everything for h in r["hessian"])
    # The first execution with these parameters did the computing: record its time once, keep it after.
    page_store = ResultStore(config.results_dir, "mlp_depth_modadd_page", dict(
        config.common(), stop=config.stop_rule().as_dict(), depths=config.depths, seeds=config.seeds, train_fraction=config.train_fraction,
        hessian_every=config.hessian_every, seed_fraction=config.seed_fraction,
        seed_fraction_depths=config.seed_fraction_depths))
    first_seconds = page_store.cached("first_execution", lambda: time.perf_counter() - started)
    total = time.perf_counter() - started
    return Result(config=config, runs=runs, seed_fraction_runs=small, per_run=per_run,
                  table=depth_table(per_run, len(config.seeds)), computed_seconds=computed, n_hvp=n_hvp,
                  first_seconds=first_seconds,
                  timings=dict(runs=runs_seconds, summaries=total - runs_seconds, total=total))


# ---------------------------------------------------------------------------------------------------------------
# Figures


def _subplots(*args, **kwargs):
    import matplotlib.pyplot as plt

    return plt.subplots(*args, dpi=_DPI, **kwargs)


def _depth_colour(depths: Sequence[int]) -> Callable[[int], Any]:
    import matplotlib.pyplot as plt

    return lambda d: plt.cm.viridis(list(depths).index(d) / max(1, len(depths) - 1))


def _jitter(i: int, n: int) -> float:
    return (i - (n - 1) / 2) * 0.08


def plot_test_accuracy(result: Result):
    """Final and best test accuracy per depth and seed, and the mean final accuracy."""
    c = result.config
    fig, ax = _subplots(figsize=(7, 3.5))
    x = np.array(c.depths)
    for i, s in enumerate(c.seeds):
        rows = result.per_run[result.per_run.seed == s]
        jitter = _jitter(i, len(c.seeds))
        ax.plot(x + jitter, 100 * rows.final_test.to_numpy(), "o", color=f"C{i}", label=f"seed {s}: final")
        ax.plot(x + jitter, 100 * rows.best_test.to_numpy(), "_", ms=12, color=f"C{i}",
                label=f"seed {s}: best during training")
    ax.plot(c.depths, [100 * result._column(d, "final_test").mean() for d in c.depths], color="k", lw=1,
            label="mean final")
    ax.axhline(95, color="0.5", ls=":", lw=1)
    ax.set_xticks(c.depths)
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel("test accuracy %")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    return fig


def plot_training_curves(result: Result):
    """Train and test loss (top) and accuracy (bottom) per depth: mean and min–max over seeds."""
    from ..plots import plot_seed_spread

    c = result.config
    fig, axes = _subplots(2, len(c.depths), figsize=(2.6 * len(c.depths), 5), sharex=True, sharey="row",
                          squeeze=False)
    for col, d in enumerate(c.depths):
        for key, colour in (("train", "C0"), ("test", "C3")):
            steps, loss = result.curves(d, f"{key}_loss")
            plot_seed_spread(steps, loss, ax=axes[0, col], color=colour, log=True, label=key)
            steps, acc = result.curves(d, f"{key}_acc")
            plot_seed_spread(steps, 100 * acc, ax=axes[1, col], color=colour, label=key)
        axes[0, col].set_title(f"depth {d}")
        axes[0, col].set_xlabel("")
    axes[0, 0].set_ylabel("cross-entropy")
    axes[1, 0].set_ylabel("accuracy %")
    axes[0, 0].legend(frameon=False)
    fig.suptitle(f"mean and min–max over {len(c.seeds)} seed(s)")
    fig.tight_layout()
    return fig


def plot_sharpness(result: Result):
    """λ_max (top, log scale) and λ_min (bottom, symlog, with the Lanczos resolution shaded) over training per
    depth: geometric mean and range over seeds, single runs, and each run's grokking step (dotted)."""
    from ..plots import plot_seed_spread

    c = result.config
    fig, axes = _subplots(2, len(c.depths), figsize=(2.6 * len(c.depths), 5), sharex=True, sharey="row",
                          squeeze=False)
    for col, d in enumerate(c.depths):
        steps, lam_max = result.curves(d, "lambda_max", "hessian")
        plot_seed_spread(steps, lam_max, ax=axes[0, col], color="k", log=True)
        steps, lam_min = result.curves(d, "lambda_min", "hessian")
        # Grey: |λ| below the Lanczos resolution lanczos_tol × λ_max, where λ_min's value is not resolved.
        resolution = c.lanczos_tol * np.nanmax(lam_max, axis=0)
        axes[1, col].fill_between(steps, -resolution, resolution, color="0.85", lw=0)
        plot_seed_spread(steps, lam_min, ax=axes[1, col], color="k")
        axes[1, col].set_yscale("symlog", linthresh=1e-4)
        for i, s in enumerate(c.seeds):
            grok = result.runs[d, s]["generalised"]
            for row, values in ((0, lam_max), (1, lam_min)):
                axes[row, col].plot(steps, values[i], color=f"C{i}", lw=0.7)
                if grok is not None:
                    axes[row, col].axvline(grok, color=f"C{i}", lw=0.9, ls=":")
        axes[0, col].set_title(f"depth {d}")
        axes[0, col].set_xlabel("")
    axes[0, 0].set_ylabel("λ_max")
    axes[1, 0].set_ylabel("λ_min")
    fig.tight_layout()
    return fig


def plot_grokking_and_preconditioned(result: Result):
    """Left: λ_max at the grokking step and at the end, per depth and seed. Right: Adam's preconditioned sharpness
    over training per depth against its stability threshold 38/lr."""
    from ..plots import plot_seed_spread

    c = result.config
    colour = _depth_colour(c.depths)
    fig, axes = _subplots(1, 2, figsize=(11, 3.8))
    x = np.array(c.depths, dtype=float)
    for i, s in enumerate(c.seeds):
        rows = result.per_run[result.per_run.seed == s]
        jitter = _jitter(i, len(c.seeds))
        axes[0].plot(x + jitter, rows.lam_max_at_grok.to_numpy(), "o", color=f"C{i}", label=f"seed {s}: at grokking")
        axes[0].plot(x + jitter, rows.lam_max_final.to_numpy(), "x", color=f"C{i}", label=f"seed {s}: end of training")
    axes[0].set_yscale("log")
    axes[0].set_xticks(c.depths)
    axes[0].set_xlabel("depth (hidden layers)")
    axes[0].set_ylabel("λ_max")
    axes[0].set_title("λ_max at the grokking step (o; only runs that generalised) and at the end (x)", fontsize=9)
    axes[0].legend(frameon=False, fontsize=7)
    for d in c.depths:
        steps, values = result.curves(d, "preconditioned_lambda_max", "hessian")
        plot_seed_spread(steps[1:], values[:, 1:], ax=axes[1], log=True, label=f"depth {d}", color=colour(d))
    axes[1].axhline(c.eos_adam, color="C3", ls="--", lw=1, label=f"38/lr = {c.eos_adam:.3g}")
    axes[1].set_ylabel("λ_max(P⁻¹H)")
    axes[1].set_title("Adam's preconditioned sharpness and its stability threshold", fontsize=9)
    axes[1].legend(frameon=False, fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_top_spectrum(result: Result):
    """The ``top_k`` largest eigenvalues at the end of training per depth (first seed)."""
    c = result.config
    colour = _depth_colour(c.depths)
    fig, ax = _subplots(figsize=(7, 3.8))
    for d in c.depths:
        top = result.runs[d, c.seeds[0]]["top"]
        if top is not None:
            ax.plot(np.full(len(top), d), top, "_", ms=14, mew=1.5, color=colour(d))
    ax.set_yscale("log")
    ax.set_xticks(c.depths)
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"the {c.top_k} largest Hessian eigenvalues at each run's end step (at most {c.n_steps:,}; "
                 f"seed {c.seeds[0]})", fontsize=10)
    return fig


def plot_norms(result: Result):
    """The full-batch gradient norm (left) and the parameter norm (right) over training per depth."""
    from ..plots import plot_seed_spread

    c = result.config
    colour = _depth_colour(c.depths)
    fig, axes = _subplots(1, 2, figsize=(12, 3.8))
    for d in c.depths:
        for ax, key in zip(axes, ("grad_norm", "param_norm")):
            steps, values = result.curves(d, key)
            plot_seed_spread(steps, values, ax=ax, log=True, label=f"depth {d}", color=colour(d))
    axes[0].set_ylabel("‖∇L_train‖ (full batch)")
    axes[1].set_ylabel("‖θ‖")
    axes[0].legend(frameon=False, ncol=2, fontsize=8)
    fig.tight_layout()
    return fig


def plot_seed_fraction(result: Result):
    """Train (dotted) and test accuracy over training of the runs at the seed's train fraction."""
    fig, ax = _subplots(figsize=(7, 3.5))
    for d, r in result.seed_fraction_runs.items():
        steps = [x["step"] for x in r["log"]]
        ax.plot(steps, [100 * x["test_acc"] for x in r["log"]], label=f"depth {d} test")
        ax.plot(steps, [100 * x["train_acc"] for x in r["log"]], ls=":", label=f"depth {d} train")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"train fraction {result.config.seed_fraction}")
    ax.legend(frameon=False)
    return fig
