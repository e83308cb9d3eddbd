"""Grokking a + b mod p: a one-layer transformer trained full-batch with AdamW, and its Hessian spectrum through
the transition.

``Config`` holds the chapter's parameters; :func:`main_run` trains (or reads) the chapter's main run, which the
Fiedler and mechanistic chapters read too; :func:`hessian_batch` is the Hessian subsample and
:func:`transition_picks` the checkpoints picked around the transition (the Fiedler chapter uses the same).
:func:`run` computes the chapter: the recipe search, the main run, Lanczos and SLQ at every checkpoint, all
eigenvalues at the picked checkpoints and the statistics per phase of training; the ``plot_*`` functions draw its
figures from the :class:`Result`.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from hessian_core import eigen_linkage, spectral_gaps, spectrum_stats

from .. import config as checks
from ..config import ChapterConfig
from ..curves import grokking_delay, groks, phase_statistics, transition_checkpoints, transition_window
from ..measure import QuadratureDensity, dense_spectrum, extreme_eigenvalues, slq_density, slq_stats
from ..models import ModAddTransformer, n_parameters
from ..progress import show_progress
from ..runs import ModAddRun, hessian_batch as _hessian_batch, modadd_checkpoint_steps, train_modadd
from ..store import ResultStore

__all__ = ["Config", "main_run", "hessian_batch", "checkpoint_steps", "window", "transition_picks",
           "recipe_label", "test_at_twice_memorised", "plateau_phases", "RecipeCurves", "Result",
           "analysis_stores", "run", "plot_recipes", "plot_main_run", "plot_summary", "plot_spectrum_evolution",
           "plot_density", "plot_dendrograms", "dendrogram_gif", "plot_cluster_counts", "plot_gap_barcode",
           "plot_phases"]

_DENSE_PICKS = ("before", "during", "after", "final")


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The grokking chapter's parameters.

    Attributes:
        p, train_fraction: the task ``a + b mod p`` (p prime) and the share of all ``p²`` pairs trained on.
        split_seed: the train/test split. seed: the initialisation; the Hessian subsample uses ``seed + 1``.
        lr, betas, weight_decay, n_steps: full-batch AdamW (Nanda et al. 2023, except the weight decay).
        log_every: train/test curves are logged this often.
        d_model, n_heads, d_mlp: the main run's model (``d_mlp=None``: attention only).
        dense_every, dense_until, sparse_every: checkpoints 0, 10, 50, 100, 200, 500, every ``dense_every`` from
            1K to ``dense_until``, then every ``sparse_every``.
        recipe_configs, recipe_steps: the recipe search, ``[d_model, n_heads, d_mlp, weight_decay]`` each.
        hessian_samples: the Hessian's seeded subsample of training pairs (float64).
        lanczos_k, lanczos_tol, lanczos_block: eigenvalues at each end at every checkpoint, relative residual
            tolerance, block size.
        slq_probes, slq_steps: stochastic Lanczos quadrature at every checkpoint.
        n_vectors: top and bottom eigenvectors kept where the full spectrum is computed.
        dense_picks: checkpoints that get all eigenvalues (of before, during, after, final).
        transition_low, transition_high: the transition is test accuracy climbing from low to high.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # a tiny model for a few hundred steps, in a fresh temporary directory so CI always recomputes
        "smoke": dict(p=23, d_model=8, d_mlp=16, weight_decay=1.0, lr=3e-3, n_steps=300, log_every=10,
                      recipe_configs=[[8, 1, None, 1.0], [8, 1, 16, 0.1], [8, 1, 16, 0.3], [8, 1, 16, 1.0],
                                      [8, 1, 8, 0.5]],
                      recipe_steps=100, hessian_samples=20, lanczos_k=3, lanczos_block=2, slq_probes=2,
                      slq_steps=10, n_vectors=3, results_dir=""),
    }

    p: int = 113
    train_fraction: float = 0.3
    split_seed: int = 0
    seed: int = 0
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    n_steps: int = 40000
    log_every: int = 100
    d_model: int = 32
    n_heads: int = 1
    d_mlp: int | None = 128
    weight_decay: float = 0.5
    dense_every: int = 500
    dense_until: int = 14000
    sparse_every: int = 6500
    recipe_configs: list = field(default_factory=lambda: [[32, 1, None, 1.0], [32, 1, 128, 0.1],
                                                          [32, 1, 128, 0.3], [32, 1, 128, 1.0],
                                                          [32, 1, 64, 0.5]])
    recipe_steps: int = 6000
    hessian_samples: int = 200
    lanczos_k: int = 20
    lanczos_tol: float = 1e-6
    lanczos_block: int = 8
    slq_probes: int = 6
    slq_steps: int = 50
    n_vectors: int = 50
    dense_picks: list = field(default_factory=lambda: ["before", "during", "after"])
    transition_low: float = 0.5
    transition_high: float = 0.95

    def validate(self) -> None:
        checks.prime("p", self.p)
        for name in ("n_steps", "log_every", "d_model", "n_heads", "dense_every", "dense_until", "sparse_every",
                     "recipe_steps", "hessian_samples", "lanczos_k", "lanczos_block", "slq_probes", "slq_steps",
                     "n_vectors"):
            checks.positive_int(name, getattr(self, name))
        checks.non_negative_int("split_seed", self.split_seed)
        checks.non_negative_int("seed", self.seed)
        if self.lanczos_k < 2:
            raise checks.ConfigError(f"lanczos_k={self.lanczos_k} must be >= 2 (the top-k dendrograms need a merge)")
        if self.d_mlp is not None:
            checks.positive_int("d_mlp", self.d_mlp)
        if self.d_model % self.n_heads:
            raise checks.ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        checks.fraction("train_fraction", self.train_fraction)
        checks.positive_float("lr", self.lr)
        checks.positive_float("lanczos_tol", self.lanczos_tol)
        _non_negative("weight_decay", self.weight_decay)
        if (not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(_real(b) and 0 <= b < 1 for b in self.betas)):
            raise checks.ConfigError(f"betas={self.betas!r} must be two numbers in [0, 1)")
        checks.fraction("transition_low", self.transition_low, closed=True)
        checks.fraction("transition_high", self.transition_high, closed=True)
        if not self.transition_low < self.transition_high:
            raise checks.ConfigError(f"transition_low={self.transition_low!r} and transition_high="
                                     f"{self.transition_high!r} must satisfy 0 <= low < high <= 1")
        if (not isinstance(self.dense_picks, (list, tuple)) or not self.dense_picks
                or not all(isinstance(pick, str) for pick in self.dense_picks)
                or not set(self.dense_picks) <= set(_DENSE_PICKS)):
            raise checks.ConfigError(f"dense_picks={self.dense_picks!r} must be a non-empty subset of "
                                     f"{list(_DENSE_PICKS)}")
        if not isinstance(self.recipe_configs, (list, tuple)):
            raise checks.ConfigError(f"recipe_configs={self.recipe_configs!r} must be a list of "
                                     "[d_model, n_heads, d_mlp, weight_decay]")
        for entry in self.recipe_configs:
            if not isinstance(entry, (list, tuple)) or len(entry) != 4:
                raise checks.ConfigError(f"recipe_configs entry {entry!r} must be [d_model, n_heads, d_mlp, "
                                         "weight_decay]")
            d, h, m, wd = entry
            try:
                checks.positive_int("d_model", d)
                checks.positive_int("n_heads", h)
                if m is not None:
                    checks.positive_int("d_mlp", m)
                _non_negative("weight_decay", wd)
                if d % h:
                    raise checks.ConfigError(f"d_model={d} must be divisible by n_heads={h}")
            except checks.ConfigError as error:
                raise checks.ConfigError(f"recipe_configs entry {entry!r}: {error}") from None
        n_train = round(self.train_fraction * self.p * self.p)
        if self.hessian_samples > n_train:
            raise checks.ConfigError(f"hessian_samples={self.hessian_samples} exceeds the {n_train} training pairs")
        n_params = n_parameters(ModAddTransformer(self.p, self.d_model, self.n_heads, self.d_mlp, self.seed))
        if 2 * self.lanczos_k > n_params or 2 * self.n_vectors > n_params:
            raise checks.ConfigError(f"lanczos_k={self.lanczos_k} and n_vectors={self.n_vectors} must be <= "
                                     f"{n_params // 2} (half the parameters)")


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative(name: str, value: Any) -> None:
    if not (_real(value) and value >= 0):
        raise checks.ConfigError(f"{name}={value!r} must be a finite number >= 0")


def checkpoint_steps(config: Config) -> list[int]:
    """The main run's checkpoint schedule."""
    return modadd_checkpoint_steps(config.n_steps, dense_every=config.dense_every, dense_until=config.dense_until,
                                   sparse_every=config.sparse_every)


def main_run(config: Config, *, progress: bool | None = None) -> ModAddRun:
    """Train (or resume, or read) the chapter's main run; keyed by its training parameters only."""
    return train_modadd(config.results_dir, "grokking_modadd", p=config.p, train_fraction=config.train_fraction,
                        split_seed=config.split_seed, seed=config.seed, d_model=config.d_model,
                        n_heads=config.n_heads, d_mlp=config.d_mlp, lr=config.lr, weight_decay=config.weight_decay,
                        betas=config.betas, n_steps=config.n_steps, log_every=config.log_every,
                        checkpoint_steps=checkpoint_steps(config), progress=progress, desc="main run")


def hessian_batch(config: Config) -> tuple[Tensor, Tensor]:
    """The Hessian's fixed subsample of training pairs: ``(LongTensor[n, 3], LongTensor[n])``."""
    return _hessian_batch(config.p, config.train_fraction, config.split_seed, config.hessian_samples,
                          subsample_seed=config.seed + 1)


def window(run: ModAddRun, config: Config) -> dict:
    """The transition of ``run``: ``{"start", "end"}``, the first logged steps at which test accuracy reaches
    ``config.transition_low`` and ``config.transition_high`` (each ``None`` if never reached)."""
    return transition_window(run.curve("step"), run.curve("test_acc"), low=config.transition_low,
                             high=config.transition_high)


def transition_picks(run: ModAddRun, config: Config) -> dict[str, int]:
    """The checkpoints the chapter picks around the transition: ``{"before", "during", "after", "final"}`` steps.

    ``before``/``during``/``after`` are :func:`hessian_book.curves.transition_checkpoints` of the chapter's
    checkpoint schedule and :func:`window`; ``final`` is the last checkpoint. The Fiedler chapter reads the same
    picks.
    """
    checkpoints = checkpoint_steps(config)
    return {**transition_checkpoints(checkpoints, window(run, config)), "final": checkpoints[-1]}


# ---------------------------------------------------------------------------------------------------------------
# The recipe search


def recipe_label(d_model: int, n_heads: int, d_mlp: int | None, weight_decay: float) -> str:
    """A candidate's name in the recipe table: ``"d32 h1 MLP 128, wd 0.5"`` (``"attention only"`` without MLP)."""
    return f"d{d_model} h{n_heads} " + ("attention only" if d_mlp is None else f"MLP {d_mlp}") + \
        f", wd {weight_decay:g}"


def test_at_twice_memorised(steps: Sequence[int], train_acc: Sequence[float],
                            test_acc: Sequence[float]) -> float | None:
    """Test accuracy (in %) at twice the memorisation step, linearly interpolated between logged steps.

    Memorisation is the first logged step with train accuracy >= 99 % (:func:`hessian_book.curves.grokking_delay`).
    Near the chance level if generalisation is delayed (a plateau), well above it if the run generalises soon
    after memorising. ``None`` if the run never memorises or the log ends before twice that step.
    """
    memorised = grokking_delay(steps, train_acc, test_acc)["memorised"]
    if memorised is None or 2 * memorised > np.asarray(steps)[-1]:
        return None
    return 100 * float(np.interp(2 * memorised, steps, test_acc))


@dataclass(frozen=True)
class RecipeCurves:
    """One candidate of the recipe search (or the main run): its name, logged curves and grokking events.

    Attributes:
        label: :func:`recipe_label` (``" (chosen)"`` appended for the main run).
        steps, train_acc, test_acc: ``ndarray[T]`` logged steps and accuracies in [0, 1].
        memorised, generalised, ratio: :func:`hessian_book.curves.grokking_delay` (``None`` when not reached).
        test2x: :func:`test_at_twice_memorised`.
        groks: :func:`hessian_book.curves.groks`.
    """

    label: str
    steps: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    memorised: int | None
    generalised: int | None
    ratio: float | None
    test2x: float | None
    groks: bool

    @classmethod
    def of(cls, label: str, run: ModAddRun) -> RecipeCurves:
        steps, train, test = run.curve("step"), run.curve("train_acc"), run.curve("test_acc")
        return cls(label=label, steps=steps, train_acc=train, test_acc=test, **grokking_delay(steps, train, test),
                   test2x=test_at_twice_memorised(steps, train, test), groks=groks(steps, train, test))


def _recipe_run(config: Config, d_model: int, n_heads: int, d_mlp: int | None, weight_decay: float, *,
                progress: bool | None) -> ModAddRun:
    return train_modadd(config.results_dir, "grokking_modadd_recipe", p=config.p,
                        train_fraction=config.train_fraction, split_seed=config.split_seed, seed=config.seed,
                        d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, lr=config.lr, weight_decay=weight_decay,
                        betas=config.betas, n_steps=config.recipe_steps, log_every=config.log_every,
                        checkpoint_steps=range(0, config.recipe_steps + 1, 1000), progress=progress,
                        desc=recipe_label(d_model, n_heads, d_mlp, weight_decay))


def _recipe_table(curves: Sequence[RecipeCurves], runs: Sequence[ModAddRun]) -> pd.DataFrame:
    rows = []
    for c, r in zip(curves, runs):
        size = n_parameters(ModAddTransformer(*(r.params[k] for k in ("p", "d_model", "n_heads", "d_mlp"))))
        rows.append({"model": c.label, "parameters": size, "steps": r.params["n_steps"],
                     "train ≥ 99 % at": c.memorised, "test acc. at twice that step (%)": c.test2x,
                     "test ≥ 95 % at": c.generalised, "ratio": c.ratio,
                     "final test acc. (%)": 100 * float(c.test_acc[-1]), "groks": "yes" if c.groks else "no",
                     "training time (s)": float(r.log[-1]["train_seconds"])})
    table = pd.DataFrame(rows).set_index("model")
    for column in ("train ≥ 99 % at", "test ≥ 95 % at"):
        table[column] = table[column].astype("Int64")
    for column in ("test acc. at twice that step (%)", "ratio"):
        table[column] = table[column].astype(float)
    return table


# ---------------------------------------------------------------------------------------------------------------
# Phases of training


def plateau_phases(checkpoints: Sequence[int], memorised: int | None, window: dict,
                   picks: dict) -> tuple[int, dict[str, tuple[int, int]]]:
    """The three phases the chapter compares, as ``(first, last)`` checkpoint steps (both included).

    Args:
        checkpoints: the checkpoint steps, ascending.
        memorised: the first logged step with train accuracy >= 99 % (``None`` if never).
        window: ``{"start", "end"}`` of the transition (:func:`window`).
        picks: ``{"before", "after", ...}`` (:func:`transition_picks`).
    Returns:
        ``(memorised_checkpoint, phases)``: the first checkpoint at or after ``memorised`` (the first checkpoint
        if the run never memorises, or memorises after the last checkpoint), and ``{"plateau": (memorised
        checkpoint, before), "transition": (window start, window end), "after": (after, last checkpoint)}``
        (an open window end counts as step 0).
    """
    memorised_checkpoint = next((s for s in checkpoints if memorised is not None and s >= memorised),
                                checkpoints[0])
    return memorised_checkpoint, {"plateau": (memorised_checkpoint, picks["before"]),
                                  "transition": (window["start"] or 0, window["end"] or 0),
                                  "after": (picks["after"], checkpoints[-1])}


def _shape_titles(k: int) -> dict[str, str]:
    """Glue prefix -> title of the scale-free quantities compared per phase."""
    return {"entropy": "spectral entropy (SLQ)", "spread": f"λ_max / λ_{k} (top-{k} spread)",
            "n_quarter": f"eigenvalues ≥ λ_max / 4 (of the top {k})", "negratio": "−λ_min / λ_max",
            "negfrac": "negative mass fraction (SLQ)", "lmax_loss": "λ_max / loss"}


# ---------------------------------------------------------------------------------------------------------------
# The chapter's result


@dataclass(frozen=True)
class Result:
    """Everything the chapter's figures, tables and prose read.

    Attributes:
        config: the configuration that produced it.
        main_label: the main run's :func:`recipe_label`; n_params: its parameter count.
        recipes: the recipe table, one row per candidate (``recipe_configs`` in order, then the main run).
        recipe_curves: the candidates' curves in the same order (the last is the main run).
        curves: the main run's log (``step, train_loss, train_acc, test_loss, test_acc``, one row per logged step).
        checkpoints: ``ndarray[T]`` checkpoint steps.
        window: ``{"start", "end"}`` of the transition; picks: :func:`transition_picks`.
        dense_picked: label -> step of the checkpoints with all eigenvalues (``config.dense_picks``).
        memorised_checkpoint, phases: :func:`plateau_phases`.
        extremes: ``ndarray[T, 2k]`` Lanczos eigenvalues at each checkpoint (k smallest, then k largest, ascending).
        subsample_loss, lanczos_hvps: ``ndarray[T]`` the loss on the Hessian subsample and the HVPs Lanczos spent.
        densities: the SLQ quadrature at each checkpoint; slq: its statistics (:func:`slq_stats`), one row per
            checkpoint (index: step).
        full, full_stats: step -> all eigenvalues (ascending) and :func:`hessian_core.spectrum_stats`, at the
            picked checkpoints.
        shape: glue prefix -> ``ndarray[T]`` of each scale-free quantity (titles: :attr:`shape_titles`).
        by_phase: glue prefix -> :func:`hessian_book.curves.phase_statistics` of that quantity.
        phase_table: medians and ranges of ``shape`` per phase; full_table: statistics of the full spectra.
        lanczos_error: largest deviation of the Lanczos extremes from the full spectra, relative to the norm.
        slq_error: relative deviation of the SLQ trace and spectral entropy from the full spectra (largest).
        lanczos_dir: the Lanczos store's directory (the dendrogram GIF is written there).
        timings: wall seconds: ``recipe`` and ``train`` (optimiser steps), ``lanczos``, ``slq``,
            ``dense_hessian``, ``dense_eig`` (as stored when computed) and ``this_run`` (this call of :func:`run`).
    """

    config: Config
    main_label: str
    n_params: int
    recipes: pd.DataFrame
    recipe_curves: list[RecipeCurves]
    curves: pd.DataFrame
    checkpoints: np.ndarray
    window: dict
    picks: dict[str, int]
    dense_picked: dict[str, int]
    memorised_checkpoint: int
    phases: dict[str, tuple[int, int]]
    extremes: np.ndarray
    subsample_loss: np.ndarray
    lanczos_hvps: np.ndarray
    densities: list[QuadratureDensity]
    slq: pd.DataFrame
    full: dict[int, np.ndarray]
    full_stats: dict[int, dict]
    shape: dict[str, np.ndarray]
    by_phase: dict[str, dict[str, dict]]
    phase_table: pd.DataFrame
    full_table: pd.DataFrame
    lanczos_error: float
    slq_error: dict[str, float]
    lanczos_dir: str
    timings: dict[str, float]

    @property
    def main(self) -> RecipeCurves:
        """The main run's curves and grokking events."""
        return self.recipe_curves[-1]

    @property
    def tops(self) -> np.ndarray:
        """``ndarray[T, k]``: the k largest eigenvalues at each checkpoint, ascending."""
        return self.extremes[:, self.config.lanczos_k:]

    @property
    def dense_steps(self) -> list[int]:
        return sorted(set(self.dense_picked.values()))

    @property
    def dense_sorted_finite(self) -> bool:
        """Whether every full spectrum is ascending and finite."""
        return all(bool(np.all(np.diff(lam) >= 0) and np.isfinite(lam).all()) for lam in self.full.values())

    @property
    def shape_titles(self) -> dict[str, str]:
        return _shape_titles(self.config.lanczos_k)

    def curve_at_checkpoints(self, name: str) -> np.ndarray:
        """``ndarray[T]`` of a logged quantity at the checkpoints."""
        return self.curves.set_index("step").loc[self.checkpoints, name].to_numpy()

    def glued(self) -> dict[str, Any]:
        """Every number and word the chapter's prose glues, by glue name."""
        c, k = self.config, self.config.lanczos_k
        out: dict[str, Any] = {}
        for i, r in enumerate(self.recipe_curves):  # recipe_configs in order, then the main run
            out.update({f"recipe{i}_train": 100 * r.train_acc[-1], f"recipe{i}_test": 100 * r.test_acc[-1],
                        f"recipe{i}_memorised": _nan(r.memorised), f"recipe{i}_generalised": _nan(r.generalised),
                        f"recipe{i}_ratio": _nan(r.ratio), f"recipe{i}_test2x": _nan(r.test2x)})
        main = self.main
        out.update(memorised=_nan(main.memorised), generalised=_nan(main.generalised), ratio=_nan(main.ratio),
                   window_start=_nan(self.window["start"]), window_end=_nan(self.window["end"]))
        test_at = dict(zip(main.steps.tolist(), main.test_acc))
        for key in ("before", "during", "after"):
            out[f"pick_{key}"] = self.picks[key]
            out[f"pick_{key}_test"] = 100 * test_at[self.picks[key]]
        out.update(final_test_acc=100 * main.test_acc[-1], final_train_acc=100 * main.train_acc[-1],
                   n_steps=c.n_steps, recipe_steps=c.recipe_steps, n_params=self.n_params,
                   n_checkpoints=len(self.checkpoints), main_label=self.main_label,
                   grokked="groks" if main.groks else "does not grok", transition_low=100 * c.transition_low,
                   transition_high=100 * c.transition_high, n_recipes=len(self.recipe_curves),
                   n_recipes_grokking=sum(r.groks for r in self.recipe_curves), pick_final=self.picks["final"],
                   dense_list=", ".join(f"step {step} ({key})" for key, step in self.dense_picked.items()),
                   lanczos_error=self.lanczos_error, slq_trace_error=100 * self.slq_error["trace"],
                   slq_entropy_error=100 * self.slq_error["spectral_entropy"],
                   hessian_samples=c.hessian_samples, lanczos_k=k, lanczos_tol=c.lanczos_tol,
                   slq_probes=c.slq_probes, slq_steps=c.slq_steps)
        gaps_inside_top = all(np.all(spectral_gaps(self.full[s], top=10)[:, 1] >= self.full[s][-k])
                              for s in self.dense_steps)
        out["gaps_inside_top"] = "are" if gaps_inside_top else "are not all"
        for name, stats in self.by_phase.items():
            for label, v in stats.items():
                out[f"{name}_{label}"] = v["median"]
        first = next(iter(self.by_phase))
        for label in self.phases:
            out[f"n_{label}"] = self.by_phase[first][label]["n"]
        for label, v in phase_statistics(self.checkpoints, self.subsample_loss, self.phases).items():
            out[f"loss_{label}"] = v["median"]
        # the overall scale against the loss: correlation of log λ_max and log loss over all checkpoints
        lmax = self.extremes[:, -1]
        out["corr_lmax_loss"] = np.corrcoef(np.log(lmax), np.log(self.subsample_loss))[0, 1]
        after = self.subsample_loss[self.checkpoints >= self.memorised_checkpoint]
        out["loss_span"] = np.log10(after.max() / after.min())
        out["memorised_ckpt"] = self.memorised_checkpoint
        for label, step in self.dense_picked.items():
            lam, st = self.full[step], self.full_stats[step]
            out[f"full_{label}_effrank"] = st["effective_rank"]
            out[f"full_{label}_entropy"] = st["spectral_entropy"]
            out[f"full_{label}_small"] = 100 * np.mean(np.abs(lam) < 1e-6 * lam[-1])
            out[f"full_{label}_top10"] = 100 * np.sort(np.abs(lam))[-10:].sum() / np.abs(lam).sum()
            out[f"full_{label}_l4"] = lam[-4] / lam[-1]
        out["full_small_list"] = ", ".join(f"{out[f'full_{label}_small']:.0f} % ({label}, step {step})"
                                           for label, step in self.dense_picked.items())
        stored = {key: value for key, value in self.timings.items() if key != "this_run"}
        out.update({f"seconds_{key}": value for key, value in stored.items()})
        out["minutes_total"] = sum(stored.values()) / 60
        out["lanczos_hvps"] = float(np.mean(self.lanczos_hvps))
        out["seconds_this_run"] = self.timings["this_run"]
        out["threads"] = torch.get_num_threads()
        return out


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def analysis_stores(config: Config, run: ModAddRun) -> dict[str, ResultStore]:
    """The chapter's Hessian results of ``run``: one child store per method (``"lanczos"``, ``"slq"``,
    ``"dense"``), each keyed by the training run's key, the Hessian subsample and the method's own settings only."""
    hessian = dict(run=run.store.key, hessian_samples=config.hessian_samples)
    return {"lanczos": ResultStore(config.results_dir, "grokking_modadd_lanczos",
                                   dict(hessian, k=config.lanczos_k, tol=config.lanczos_tol,
                                        block=config.lanczos_block)),
            "slq": ResultStore(config.results_dir, "grokking_modadd_slq",
                               dict(hessian, probes=config.slq_probes, steps=config.slq_steps)),
            "dense": ResultStore(config.results_dir, "grokking_modadd_dense",
                                 dict(hessian, n_vectors=config.n_vectors))}


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Compute the chapter (every step is stored as it completes, so an interrupted run resumes).

    Trains the recipe candidates and the main run (stores keyed by training parameters only), then at every
    checkpoint the Lanczos extremes and the SLQ density, and all eigenvalues at the picked checkpoints, each method
    in a child store keyed by ``dict(run=<main run's key>, hessian_samples=..., <its own parameters>)``.
    """
    started = time.perf_counter()
    show = show_progress(progress)
    from tqdm.std import tqdm

    c, k = config, config.lanczos_k
    recipe_runs = [_recipe_run(c, *entry, progress=progress) for entry in c.recipe_configs]
    main = main_run(c, progress=progress)
    main_label = recipe_label(c.d_model, c.n_heads, c.d_mlp, c.weight_decay)
    labels = [recipe_label(*entry) for entry in c.recipe_configs] + [main_label + " (chosen)"]
    recipe_curves = [RecipeCurves.of(label, r) for label, r in zip(labels, recipe_runs + [main])]
    checkpoints = checkpoint_steps(c)
    win = window(main, c)
    picks = transition_picks(main, c)

    lanczos_store, slq_store, dense_store = analysis_stores(c, main).values()
    batch = hessian_batch(c)
    extremes, densities = [], []
    for step in tqdm(checkpoints, desc="Lanczos + SLQ", disable=not show):
        model = main.model_at(step)
        extremes.append(lanczos_store.cached(f"lanczos_{step:07d}", lambda: extreme_eigenvalues(
            model, batch, k=k, tol=c.lanczos_tol, block_size=c.lanczos_block, seed=c.seed)))
        densities.append(slq_store.cached(f"slq_{step:07d}", lambda: slq_density(
            model, batch, n_probes=c.slq_probes, n_steps=c.slq_steps, seed=c.seed)))
    dense_picked = {key: picks[key] for key in c.dense_picks}
    dense_steps = sorted(set(dense_picked.values()))
    dense = {}
    for step in tqdm(dense_steps, desc="dense spectra", disable=not show):
        model = main.model_at(step)
        dense[step] = dense_store.cached(f"dense_{step:07d}", lambda: dense_spectrum(model, batch,
                                                                                    n_vectors=c.n_vectors))

    steps = np.array(checkpoints)
    ext = np.array([e.eigenvalues for e in extremes])  # [T, 2k]: k smallest, then k largest, ascending
    tops = ext[:, k:]
    slq = pd.DataFrame([slq_stats(d.nodes, d.weights, d.dimension) for d in densities],
                       index=pd.Index(checkpoints, name="step"))
    full = {s: dense[s].eigenvalues for s in dense_steps}
    full_stats = {s: spectrum_stats(full[s]) for s in dense_steps}
    # Lanczos against the full spectrum where both exist: largest |difference| at both ends, relative to ||H||
    lanczos_error = max(float(np.abs(ext[checkpoints.index(s)] - np.concatenate([full[s][:k], full[s][-k:]])).max()
                              / np.abs(full[s]).max()) for s in dense_steps)
    slq_error = {key: max(abs(slq.loc[s, key] - full_stats[s][key]) / abs(full_stats[s][key])
                          for s in dense_steps) for key in ("trace", "spectral_entropy")}

    memorised_checkpoint, phases = plateau_phases(checkpoints, recipe_curves[-1].memorised, win, picks)
    subsample_loss = np.array([e.loss for e in extremes])
    shape = {"entropy": slq["spectral_entropy"].to_numpy(), "spread": tops[:, -1] / tops[:, 0],
             "n_quarter": np.sum(tops >= tops[:, -1:] / 4, axis=1).astype(float), "negratio": -ext[:, 0] / ext[:, -1],
             "negfrac": slq["negative_mass_fraction"].to_numpy(), "lmax_loss": ext[:, -1] / subsample_loss}
    by_phase = {name: phase_statistics(steps, values, phases) for name, values in shape.items()}
    titles = _shape_titles(k)
    first = next(iter(by_phase))
    phase_table = pd.DataFrame(
        {(f"{label} (steps {a}–{b}, {by_phase[first][label]['n']} checkpoints)", stat): {
            titles[name]: by_phase[name][label][stat] for name in shape}
         for label, (a, b) in phases.items() for stat in ("median", "min", "max")})
    phase_table.index.name = "quantity"
    test_at = dict(zip(main.curve("step").tolist(), main.curve("test_acc")))
    keys = ("lambda_max", "lambda_min", "trace", "spectral_entropy", "effective_rank", "n_negative_tol",
            "n_near_zero", "negative_mass_fraction")
    full_table = pd.DataFrame([{"full spectrum at": key, "step": step, "test acc. (%)": 100 * test_at[step],
                                **{name: full_stats[step][name] for name in keys}}
                               for key, step in dense_picked.items()]).set_index("full spectrum at")

    curves = pd.DataFrame({name: main.curve(name) for name in ("step", "train_loss", "train_acc", "test_loss",
                                                                 "test_acc")})
    timings = dict(
        recipe=sum(float(r.log[-1]["train_seconds"]) for r in recipe_runs),
        train=float(main.log[-1]["train_seconds"]),
        lanczos=sum(e.seconds for e in extremes),
        slq=sum(d.seconds for d in densities),
        dense_hessian=sum(dense[s].seconds_hessian for s in dense_steps),
        dense_eig=sum(dense[s].seconds_eig for s in dense_steps),
    )
    timings["this_run"] = time.perf_counter() - started
    return Result(config=c, main_label=main_label,
                  n_params=n_parameters(ModAddTransformer(c.p, c.d_model, c.n_heads, c.d_mlp, c.seed)),
                  recipes=_recipe_table(recipe_curves, recipe_runs + [main]), recipe_curves=recipe_curves,
                  curves=curves, checkpoints=steps, window=win, picks=picks, dense_picked=dense_picked,
                  memorised_checkpoint=memorised_checkpoint, phases=phases, extremes=ext,
                  subsample_loss=subsample_loss, lanczos_hvps=np.array([e.hvps for e in extremes]),
                  densities=densities, slq=slq, full=full, full_stats=full_stats, shape=shape, by_phase=by_phase,
                  phase_table=phase_table, full_table=full_table, lanczos_error=lanczos_error, slq_error=slq_error,
                  lanczos_dir=str(lanczos_store.directory), timings=timings)


# ---------------------------------------------------------------------------------------------------------------
# Figures (each returns its matplotlib Figure)


def _shade(ax, result: Result, x_of=lambda s: max(s, 1)) -> None:
    """Shade the transition on an axis whose x coordinate of step s is ``x_of(s)``."""
    start, end = result.window["start"], result.window["end"]
    if start is not None and end is not None:
        ax.axvspan(x_of(start), x_of(end), color="C3", alpha=0.12, lw=0)


def _column_of(result: Result):
    """x coordinate of a step on the checkpoint-indexed heatmaps (cells centred on i + 0.5)."""
    steps = result.checkpoints

    def column(step: float) -> float:
        return float(np.interp(np.log(max(step, 1)), np.log(np.maximum(steps, 1)), np.arange(len(steps)) + 0.5))

    return column


def plot_recipes(result: Result):
    """Accuracy curves of the recipe candidates and the main run, one panel each, memorisation and generalisation
    marked."""
    import matplotlib.pyplot as plt

    from ..plots import plot_grokking_curves

    curves = result.recipe_curves
    ncols = min(3, len(curves))
    nrows = -(-len(curves) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3 * nrows), sharey=True, squeeze=False)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, curves):
        plot_grokking_curves(r.steps, r.train_acc, r.test_acc, axes=[ax],
                             marks={"train 99 %": r.memorised, "test 95 %": r.generalised})
        ax.set_title(r.label, fontsize=9)
        if ax is not axes[0, 0]:
            ax.get_legend().remove()
    fig.tight_layout()
    return fig


def plot_main_run(result: Result):
    """The main run's accuracy and loss curves, the transition shaded."""
    from ..plots import plot_grokking_curves

    c, main = result.curves, result.main
    axes = plot_grokking_curves(c["step"], c["train_acc"], c["test_acc"], train_loss=c["train_loss"],
                                test_loss=c["test_loss"], window=(result.window["start"], result.window["end"]),
                                marks={"train 99 %": main.memorised, "test 95 %": main.generalised})
    axes[0].figure.suptitle(result.main_label)
    return axes[0].figure


def plot_summary(result: Result):
    """Loss, test accuracy, SLQ trace and entropy, λ_max and the negative count over training; black crosses:
    the exact values from the full spectra."""
    from .. import plots

    steps = result.checkpoints
    series = {
        "train / test loss": result.curve_at_checkpoints("train_loss"),
        "test accuracy (%)": 100 * result.curve_at_checkpoints("test_acc"),
        "trace (SLQ)": result.slq["trace"].to_numpy(),
        "spectral entropy (SLQ)": result.slq["spectral_entropy"].to_numpy(),
        "λ_max (Lanczos)": result.extremes[:, -1],
        "negative eigenvalues (SLQ estimate)": result.slq["n_negative"].to_numpy(),
    }
    fig = plots.plot_summary(steps, series, log=("train / test loss", "λ_max (Lanczos)"))
    fig.axes[0].plot(np.maximum(steps, 1), result.curve_at_checkpoints("test_loss"), marker="o", ms=3, lw=1.2,
                     color="C1")
    exact = {"trace (SLQ)": "trace", "spectral entropy (SLQ)": "spectral_entropy", "λ_max (Lanczos)": "lambda_max",
             "negative eigenvalues (SLQ estimate)": "n_negative_tol"}
    for ax, name in zip(fig.axes, series):
        _shade(ax, result)
        if name in exact:
            ax.plot([max(s, 1) for s in result.dense_steps],
                    [result.full_stats[s][exact[name]] for s in result.dense_steps], "kx", ms=7)
    return fig


def plot_spectrum_evolution(result: Result):
    """The largest and the most negative Lanczos eigenvalues over training."""
    import matplotlib.pyplot as plt

    from .. import plots

    n_lines = min(20, result.config.lanczos_k)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plots.plot_spectrum_evolution(result.checkpoints, list(result.extremes), n_lines=n_lines, ax=ax)
    _shade(ax, result)
    ax.set_title(f"Lanczos: the {n_lines} largest eigenvalues (solid) and most negative (dashed, |λ|)")
    return fig


def plot_density(result: Result):
    """The SLQ spectral density at every checkpoint as a heatmap."""
    import matplotlib.pyplot as plt

    from ..plots import plot_density_evolution

    fig, ax = plt.subplots(figsize=(10, 4.5))
    plot_density_evolution(result.checkpoints, result.densities, ax=ax)
    _shade(ax, result, _column_of(result))
    ax.set_title("SLQ spectral density over training (transition shaded)")
    return fig


def plot_dendrograms(result: Result):
    """Truncated single-linkage dendrograms of all eigenvalues at the picked checkpoints."""
    import matplotlib.pyplot as plt

    from ..plots import plot_truncated_dendrogram

    picked = result.dense_picked
    fig, axes = plt.subplots(1, len(picked), figsize=(4.2 * len(picked), 3.6), squeeze=False)
    for ax, (key, step) in zip(axes[0], picked.items()):
        plot_truncated_dendrogram(eigen_linkage(result.full[step]), top=30, ax=ax)
        ax.set_title(f"{key}: step {step}, all eigenvalues")
    fig.tight_layout()
    return fig


def dendrogram_gif(result: Result) -> str:
    """Write (or overwrite) the GIF of the top-k dendrogram over checkpoints in the Lanczos store; its path."""
    from ..plots import save_dendrogram_gif

    return save_dendrogram_gif(f"{result.lanczos_dir}/dendrogram_top.gif", list(result.checkpoints),
                               list(result.tops), top=min(30, result.config.lanczos_k - 1))


def plot_cluster_counts(result: Result, *, relative: bool = False):
    """n(ε) of the top-k Lanczos eigenvalues at every checkpoint (heatmap) and of all eigenvalues at the picked
    checkpoints; with ``relative``, at resolutions ε λ_max (each spectrum divided by its λ_max)."""
    import matplotlib.pyplot as plt

    from .. import plots

    k, picked = result.config.lanczos_k, result.dense_picked
    eps = np.logspace(-8, 0, 81) if relative else np.logspace(-6, 4, 101)
    tops = [t / t[-1] for t in result.tops] if relative else list(result.tops)
    full = [result.full[s] / result.full[s][-1] if relative else result.full[s] for s in picked.values()]
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.2), gridspec_kw=dict(width_ratios=[3, 2]))
    plots.plot_cluster_heatmap(result.checkpoints, tops, eps, ax=axes[0])
    _shade(axes[0], result, _column_of(result))
    plots.plot_cluster_counts(full, eps, labels=[f"{key}: step {s}" for key, s in picked.items()], ax=axes[1])
    if relative:
        axes[0].set_ylabel("log10 (ε / λ_max)")
        axes[0].set_title(f"n(ε λ_max) of the top {k} eigenvalues (Lanczos)")
        axes[1].set_xlabel("relative resolution ε / λ_max")
        axes[1].set_title("n(ε λ_max) of all eigenvalues")
    else:
        axes[0].set_title(f"n(ε) of the top {k} eigenvalues (Lanczos)")
        axes[1].set_title("n(ε) of all eigenvalues")
    fig.tight_layout()
    return fig


def plot_gap_barcode(result: Result):
    """The ten widest gaps among the top-k eigenvalues at each checkpoint."""
    import matplotlib.pyplot as plt

    from .. import plots

    fig, ax = plt.subplots(figsize=(10, 4))
    plots.plot_gap_barcode(result.checkpoints, [spectral_gaps(t, top=10) for t in result.tops], ax=ax)
    column = _column_of(result)
    _shade(ax, result, lambda s: column(s) - 0.5)
    ax.set_title(f"top-10 gaps among the top {result.config.lanczos_k} eigenvalues at each checkpoint")
    return fig


def plot_phases(result: Result):
    """The scale-free quantities over training with their phase medians (black bars)."""
    from .. import plots

    titles = result.shape_titles
    fig = plots.plot_summary(result.checkpoints, {titles[name]: v for name, v in result.shape.items()},
                             log=(titles["spread"], titles["negratio"], titles["lmax_loss"]), ncols=3)
    for ax, stats in zip(fig.axes, result.by_phase.values()):
        _shade(ax, result)
        for label, (a, b) in result.phases.items():
            ax.hlines(stats[label]["median"], max(a, 1), max(b, 1), color="k", lw=2)
    return fig
