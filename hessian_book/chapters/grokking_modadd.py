"""Grokking a + b mod p: a one-layer transformer trained full-batch with AdamW, replicated over initialisations and
splits, with a no-weight-decay control, and its Hessian spectrum and circuit through the transition.

``Config`` holds the chapter's parameters; :func:`main_run` trains (or reads) the chapter's reference run (the
first initialisation on the reference split), which the Fiedler and mechanistic chapters read too;
:func:`hessian_batch` is its Hessian subsample and :func:`transition_picks` the checkpoints picked around its
transition. :func:`run` computes the chapter: the recipe search; every run of the replication and the control as
independent tasks (:func:`hessian_book.fanout.run_tasks`; each trains, re-runs its own transition densely, and
measures Lanczos extremes, SLQ and Nanda et al.'s progress measures at every checkpoint); then, for the reference
run, all eigenvalues at the picks, the subsample against the full training set, and one loss spike resolved
checkpoint by checkpoint; finally the phase comparisons over the independent replicates (sign-flip p-values,
t-intervals, Holm over the declared family :data:`PRIMARY`; :mod:`hessian_book.stats`). The ``plot_*``
functions draw its figures from the :class:`Result`.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from hessian_core import eigen_linkage, hessian_operator, lanczos, spectral_gaps, spectrum_stats

from .. import config as checks
from ..circuit import mlp_activations, progress_measures
from ..config import ChapterConfig
from ..curves import phase_statistics, transition_checkpoints, transition_window
from ..data import modular_addition_split
from ..fanout import run_tasks
from ..fourier import key_frequencies
from ..measure import dense_spectrum, extreme_eigenvalues, slq_density, slq_stats
from ..models import ModAddTransformer, n_parameters
from ..outcomes import GROKS_RATIO, Outcome, StopRule, memorised_step, outcome
from ..progress import show_progress
from ..runs import ModAddRun, train_modadd
from ..sampling import coverage, stratified_pairs
from ..sharpness import adam_preconditioner, adam_stability_threshold, hessian_extremes
from ..spikes import Spike, loss_spikes, spike_statistics
from ..stats import PhaseDifference, declare_family, phase_difference, phase_error_rates, smallest_p
from ..store import ResultStore
from ..training import checkpoint_name, split_evaluator, train_full_batch_adamw

__all__ = ["Config", "RunSpec", "main_run", "train_run", "hessian_batch", "run_hessian_batch",
           "checkpoint_grid", "checkpoint_steps", "stop_rule", "control_steps", "run_cap", "run_outcome", "window",
           "transition_picks", "refinement_steps", "refine_run", "recipe_label",
           "test_at_twice_memorised",
           "plateau_phases", "run_boundaries", "phase_masks", "matched_boundaries", "RecipeCurves", "RunAnalysis",
           "analyse_run", "task", "compare_phases", "declare_primary", "recipe_candidates", "Result",
           "analysis_stores", "run", "plot_recipes",
           "plot_main_run", "plot_replication", "plot_progress_measures", "plot_spike", "plot_summary",
           "plot_spectrum_evolution", "plot_density", "plot_dendrograms", "dendrogram_gif", "plot_cluster_counts",
           "plot_gap_barcode", "plot_phases", "explorer_runs", "explorer_spec", "explorer"]

_DENSE_PICKS = ("before", "during", "after", "final")
PHASES = ("plateau", "transition", "after")
COMPARISONS = (("plateau", "transition"), ("transition", "after"), ("plateau", "after"))
# the per-checkpoint quantities compared over phases: name -> (title, compared as log10?)
QUANTITIES = {
    "lambda_max": ("λ_max (Lanczos)", True),
    "spread": ("λ_max / λ_k (top-k spread)", True),
    "entropy": ("spectral entropy (SLQ)", False),
    "lmax_loss": ("λ_max / loss", True),
    "restricted_loss": ("restricted loss", True),
    "excluded_loss": ("excluded loss", True),
    "gini_embedding": ("Gini of W_E's Fourier norms", False),
    "gini_unembedding": ("Gini of W_U's Fourier norms", False),
}
PRIMARY = (("lambda_max", "plateau", "transition"), ("spread", "plateau", "transition"),
           ("entropy", "plateau", "transition"))
"""The declared family of primary comparisons ``(quantity, first phase, second phase)``, fixed in this code before
the replicate runs (init ``seed + i``, split ``split_seed + i``) were computed: does the scale (λ_max), the shape of
the top (λ_max / λ_k) and the spread of the bulk (spectral entropy) of the Hessian spectrum change when test
accuracy starts to climb? Holm's procedure controls the family-wise error over these at :data:`ALPHA`; every other
comparison of :data:`QUANTITIES` × :data:`COMPARISONS` is exploratory (estimate and interval, no verdict word).
Three members and :attr:`Config.n_replicates` = 7 runs: the smallest Holm-adjusted sign-flip p-value is
3 · 2 / 2⁷ ≈ 0.047 <= 0.05 (:func:`hessian_book.stats.smallest_p`), so a verdict is possible; 6 runs could not
give one."""
ALPHA = 0.05  # the family-wise level of the phase verdicts


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The grokking chapter's parameters.

    Attributes:
        p, train_fraction: the task ``a + b mod p`` (p prime) and the share of all ``p²`` pairs trained on.
        split_seed, seed: the reference run's split and initialisation (the run the other chapters read; it chose
            the recipe, so it is not a replicate).
        n_replicates: independent replicates of the recipe behind the phase verdicts: replicate ``i`` (1..n) has
            initialisation ``seed + i`` *and* split ``split_seed + i``. The default, 7, is the fewest with which a
            two-sided 5 % verdict survives Holm over :data:`PRIMARY` (see there).
        control_weight_decay: the control: the reference run's initialisation, split and model with this weight
            decay (0: no weight decay), trained as long as the longest run of the recipe (:func:`control_steps`).
        lr, betas, weight_decay, n_steps: full-batch AdamW (Nanda et al. 2023, except the weight decay).
        log_every: train/test curves are logged this often.
        d_model, n_heads, d_mlp: the model (``d_mlp=None``: attention only).
        n_log_checkpoints, log_grid_end, sparse_every: checkpoints of every run (:func:`checkpoint_steps`): 0,
            ``n_log_checkpoints`` log-spaced steps from 10 to ``log_grid_end`` (multiples of ``log_every`` once
            above it), every ``sparse_every``, and the run's end step. The grid does not depend on ``n_steps``, so
            a run's store and schedule do not depend on its cap.
        stop_min_margin, stop_fraction: the stop rule (:class:`hessian_book.outcomes.StopRule`): a run of the
            recipe (and a recipe candidate) stops once test accuracy has held >= 95 % for ``max(stop_min_margin,
            stop_fraction × g)`` steps after its generalisation step ``g``; ``n_steps`` stays the cap. The control
            trains exactly as long as the longest run of the recipe (matched steps), without the rule.
        refine_every: each run's transition is re-run from its checkpoint before it, saving every ``refine_every``.
        recipe_configs, recipe_steps: the recipe search, ``[d_model, n_heads, d_mlp, weight_decay]`` each, trained
            for ``recipe_steps``; the chosen recipe is added when absent (:func:`recipe_candidates`).
        hessian_samples: the Hessian's subsample of training pairs (stratified: every token and class; float64).
        lanczos_k, lanczos_tol, lanczos_block: eigenvalues at each end at every checkpoint, relative residual
            tolerance, block size.
        slq_probes, slq_steps: stochastic Lanczos quadrature at every checkpoint.
        n_vectors: top and bottom eigenvectors kept where the full spectrum is computed.
        dense_picks: checkpoints of the reference run that get all eigenvalues (of before, during, after, final).
        transition_low, transition_high: the transition is test accuracy climbing from low to high.
        spike_every, spike_span, spike_tol: the resolved loss spike of the reference run: a checkpoint every
            ``spike_every`` steps for ``spike_span`` steps from its start; sharpness to relative tolerance
            ``spike_tol`` on the full training set.
        scheduler: where the runs execute: ``None``/``""`` local processes, ``"serial"`` this process, or a Dask
            scheduler address ``tcp://host:port`` (:mod:`hessian_book.fanout`). The numbers do not depend on it.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # a small model for at most 1,500 steps, in a fresh temporary directory so CI always recomputes. Chosen
        # (measured on the pinned path with eager steps, as CI trains) so that every outcome branch runs: the
        # reference run (init 2, split 2) groks (memorised at 110, generalised at 790, stopped by the rule at 990),
        # replicate 3/3 generalises without a 5x delay (260), replicate 4/4 does not generalise within the cap, nor
        # does the weight-decay-0 control; the reference run's neurons have key frequencies (the mechanistic smoke's)
        "smoke": dict(p=23, train_fraction=0.6, d_model=32, d_mlp=64, weight_decay=1.5, lr=6e-3, n_steps=1500,
                      seed=2, split_seed=2,
                      log_every=10, n_replicates=2, n_log_checkpoints=8, log_grid_end=300, sparse_every=100,
                      refine_every=20, stop_min_margin=50,
                      recipe_configs=[[8, 1, None, 1.0], [8, 1, 16, 0.1], [8, 1, 16, 0.3], [8, 1, 16, 1.0],
                                      [8, 1, 8, 0.5]],
                      recipe_steps=100, hessian_samples=30, lanczos_k=3, lanczos_tol=1e-6, lanczos_block=2, slq_probes=2,
                      slq_steps=10, n_vectors=3, spike_span=40, scheduler="serial", results_dir=""),
    }

    p: int = 113
    train_fraction: float = 0.3
    split_seed: int = 0
    seed: int = 0
    n_replicates: int = 7
    control_weight_decay: float = 0.0
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    n_steps: int = 40000
    log_every: int = 100
    d_model: int = 32
    n_heads: int = 1
    d_mlp: int | None = 128
    weight_decay: float = 0.5
    n_log_checkpoints: int = 40
    log_grid_end: int = 40000
    sparse_every: int = 4000
    stop_min_margin: int = 2000
    stop_fraction: float = 0.25
    refine_every: int = 250
    recipe_configs: list = field(default_factory=lambda: [[32, 1, None, 1.0], [32, 1, 128, 0.1],
                                                          [32, 1, 128, 0.3], [32, 1, 128, 1.0],
                                                          [32, 1, 64, 0.5]])
    recipe_steps: int = 6000
    hessian_samples: int = 200
    lanczos_k: int = 6
    # 1e-4 costs ~0.55x the HVPs of 1e-6 on this model (measured at steps 200-2,000: top six equal to 1e-16,
    # lambda_min within 1.2e-3 relative); the smallest end, at the edge of a dense bulk, dominates the cost
    lanczos_tol: float = 1e-4
    lanczos_block: int = 4
    slq_probes: int = 3
    slq_steps: int = 30
    n_vectors: int = 50
    # one dense P = 19,808 spectrum (~10 CPU-min at the reference speed): it validates Lanczos and SLQ and gives
    # the exact dendrogram; each further pick costs as much again (issue 18: dense work only where needed)
    dense_picks: list = field(default_factory=lambda: ["after"])
    transition_low: float = 0.5
    transition_high: float = 0.95
    spike_every: int = 30  # each checkpoint: three Lanczos solves on the 3,831 training pairs
    spike_span: int = 300
    spike_tol: float = 1e-4
    scheduler: str | None = None

    def validate(self) -> None:
        checks.prime("p", self.p)
        for name in ("n_steps", "log_every", "d_model", "n_heads", "sparse_every", "refine_every",
                     "recipe_steps", "hessian_samples", "lanczos_k", "lanczos_block", "slq_probes", "slq_steps",
                     "n_vectors", "n_log_checkpoints", "spike_every", "spike_span", "n_replicates", "log_grid_end",
                     "stop_min_margin"):
            checks.positive_int(name, getattr(self, name))
        for name in ("n_steps", "recipe_steps"):
            if getattr(self, name) % self.log_every:
                raise checks.ConfigError(f"{name}={getattr(self, name)} must be a multiple of log_every="
                                         f"{self.log_every} (a cap is a logged step)")
        _non_negative("stop_fraction", self.stop_fraction)
        checks.non_negative_int("split_seed", self.split_seed)
        checks.non_negative_int("seed", self.seed)
        if self.n_log_checkpoints < 2:
            raise checks.ConfigError(f"n_log_checkpoints={self.n_log_checkpoints} must be >= 2")
        if self.spike_every > self.spike_span:
            raise checks.ConfigError(f"spike_every={self.spike_every} must be <= spike_span={self.spike_span}")
        if self.lanczos_k < 2:
            raise checks.ConfigError(f"lanczos_k={self.lanczos_k} must be >= 2 (the top-k dendrograms need a merge)")
        if self.d_mlp is not None:
            checks.positive_int("d_mlp", self.d_mlp)
        if self.d_model % self.n_heads:
            raise checks.ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        checks.fraction("train_fraction", self.train_fraction)
        checks.positive_float("lr", self.lr)
        checks.positive_float("lanczos_tol", self.lanczos_tol)
        checks.positive_float("spike_tol", self.spike_tol)
        _non_negative("weight_decay", self.weight_decay)
        _non_negative("control_weight_decay", self.control_weight_decay)
        if self.control_weight_decay == self.weight_decay:
            raise checks.ConfigError(f"control_weight_decay={self.control_weight_decay!r} must differ from "
                                     f"weight_decay={self.weight_decay!r} (else the control is a replicate)")
        checks.scheduler("scheduler", self.scheduler)
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
        if not self.p <= self.hessian_samples <= n_train:
            raise checks.ConfigError(f"hessian_samples={self.hessian_samples} must lie in [p={self.p}, {n_train}] "
                                     "(every answer class, at most the training pairs)")
        if self.d_mlp is None:
            raise checks.ConfigError("d_mlp=None: the progress measures read the MLP's neurons; give a width")
        n_params = n_parameters(ModAddTransformer(self.p, self.d_model, self.n_heads, self.d_mlp, self.seed))
        if 2 * self.lanczos_k > n_params or 2 * self.n_vectors > n_params:
            raise checks.ConfigError(f"lanczos_k={self.lanczos_k} and n_vectors={self.n_vectors} must be <= "
                                     f"{n_params // 2} (half the parameters)")

    def runs(self) -> list[RunSpec]:
        """The reference run first, then the ``n_replicates`` independent replicates (replicate ``i``:
        initialisation ``seed + i``, split ``split_seed + i``), the control last."""
        out = [RunSpec("grok", self.seed, self.split_seed, self.weight_decay)]
        out += [RunSpec("grok", self.seed + i, self.split_seed + i, self.weight_decay)
                for i in range(1, self.n_replicates + 1)]
        return out + [RunSpec("control", self.seed, self.split_seed, self.control_weight_decay)]


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative(name: str, value: Any) -> None:
    if not (_real(value) and value >= 0):
        raise checks.ConfigError(f"{name}={value!r} must be a finite number >= 0")


@dataclass(frozen=True)
class RunSpec:
    """One run of the chapter: ``role`` ``"grok"`` (the recipe) or ``"control"``, its initialisation ``seed``,
    ``split_seed`` and ``weight_decay``."""

    role: str
    seed: int
    split_seed: int
    weight_decay: float

    @property
    def label(self) -> str:
        name = f"init {self.seed} · split {self.split_seed}"
        return f"control (wd {self.weight_decay:g}), {name}" if self.role == "control" else name


# ---------------------------------------------------------------------------------------------------------------
# Runs, checkpoints, transitions


def checkpoint_grid(config: Config) -> list[int]:
    """The fixed part of every run's checkpoint schedule: 0 and ``n_log_checkpoints`` log-spaced steps from 10 to
    ``log_grid_end`` (rounded to multiples of ``log_every`` once above it, so the logged curve stays regular).
    It does not depend on the cap ``n_steps`` (steps beyond a run's end are simply not reached), so neither does
    the run's store."""
    c = config
    raw = np.geomspace(10, c.log_grid_end, c.n_log_checkpoints) if c.log_grid_end > 10 else np.array([c.log_grid_end])
    steps = {0}
    for s in raw:
        s = int(round(s))
        steps.add(int(round(s / c.log_every)) * c.log_every if s > c.log_every else s)
    return sorted(steps)


def checkpoint_steps(config: Config, end: int | None = None) -> list[int]:
    """A run's checkpoint schedule up to its end step ``end`` (default: the cap ``n_steps``): the fixed grid
    (:func:`checkpoint_grid`), every ``sparse_every`` and ``end`` itself (where the stop rule or the cap ended
    the run; always saved)."""
    c = config
    end = c.n_steps if end is None else int(end)
    steps = set(checkpoint_grid(c)) | set(range(0, end + 1, c.sparse_every)) | {end}
    return sorted(s for s in steps if 0 <= s <= end)


def stop_rule(config: Config) -> StopRule:
    """The chapter's stop rule (:class:`hessian_book.outcomes.StopRule` with the 95 % threshold)."""
    return StopRule(min_margin=config.stop_min_margin, fraction=config.stop_fraction)


def control_steps(config: Config) -> int:
    """The control's step budget: the end step of the longest run of the recipe (read from their stores, trained
    if missing), rounded up to a multiple of ``log_every`` -- matched steps."""
    ends = [train_run(config, s, progress=False).end_step for s in config.runs() if s.role == "grok"]
    return -(-max(ends) // config.log_every) * config.log_every


def run_cap(config: Config, spec: RunSpec) -> int:
    """A run's step budget: ``n_steps`` for the recipe's runs; :func:`control_steps` for the control."""
    return control_steps(config) if spec.role == "control" else config.n_steps


def _training(config: Config, spec: RunSpec) -> dict:
    """The arguments of :func:`hessian_book.runs.train_modadd` for one run (its store is keyed by all but the cap
    ``n_steps`` and the rule ``stop``). The recipe's runs stop by the rule; the control trains to its cap."""
    c = config
    return dict(p=c.p, train_fraction=c.train_fraction, split_seed=spec.split_seed, seed=spec.seed,
                d_model=c.d_model, n_heads=c.n_heads, d_mlp=c.d_mlp, lr=c.lr, weight_decay=spec.weight_decay,
                betas=c.betas, n_steps=run_cap(c, spec), log_every=c.log_every, checkpoint_steps=checkpoint_grid(c),
                checkpoint_every=c.sparse_every, stop=None if spec.role == "control" else stop_rule(c))


def train_run(config: Config, spec: RunSpec, *, progress: bool | None = None) -> ModAddRun:
    """Train (or resume, or read) one run; keyed by its training parameters only (not its cap)."""
    return train_modadd(config.results_dir, "grokking_modadd", **_training(config, spec), progress=progress,
                        desc=spec.label)


def main_run(config: Config, *, progress: bool | None = None) -> ModAddRun:
    """Train (or resume, or read) the chapter's reference run (``seed`` on ``split_seed``), which the Fiedler
    and mechanistic chapters read."""
    return train_run(config, config.runs()[0], progress=progress)


def run_hessian_batch(config: Config, split_seed: int, seed: int) -> tuple[Tensor, Tensor]:
    """A run's Hessian subsample: ``hessian_samples`` training pairs of split ``split_seed`` covering every token
    and answer class (:func:`hessian_book.sampling.stratified_pairs`, seeded by the run's ``seed + 1``)."""
    train_x, train_y = modular_addition_split(config.p, config.train_fraction, split_seed)["train"]
    index = stratified_pairs(train_x, train_y, config.hessian_samples, p=config.p, seed=seed + 1)
    return train_x[index], train_y[index]


def hessian_batch(config: Config) -> tuple[Tensor, Tensor]:
    """The reference run's Hessian subsample: ``(LongTensor[n, 3], LongTensor[n])`` (:func:`run_hessian_batch`)."""
    return run_hessian_batch(config, config.split_seed, config.seed)


def window(run: ModAddRun, config: Config) -> dict:
    """The transition of ``run``: ``{"start", "end"}``, the first logged steps at which test accuracy reaches
    ``config.transition_low`` and ``config.transition_high`` (each ``None`` if never reached)."""
    return transition_window(run.curve("step"), run.curve("test_acc"), low=config.transition_low,
                             high=config.transition_high)


def transition_picks(run: ModAddRun, config: Config) -> dict[str, int]:
    """The checkpoints picked around the transition: ``{"before", "during", "after", "final"}`` steps.

    ``before``/``during``/``after`` are :func:`hessian_book.curves.transition_checkpoints` of the run's checkpoint
    schedule (:func:`checkpoint_steps` up to its end step, saved in the run's own store) and :func:`window`;
    ``final`` is the last checkpoint (the end step). The Fiedler chapter reads the same picks.
    """
    checkpoints = list(run.checkpoint_steps)
    return {**transition_checkpoints(checkpoints, window(run, config)), "final": checkpoints[-1]}


def refinement_steps(checkpoints: Sequence[int], window: Mapping, every: int) -> tuple[int, list[int]] | None:
    """Where a run's transition is re-run densely: ``(resume, steps)``.

    ``resume`` is the last checkpoint before the window's start; ``steps`` are ``resume``, the multiples of
    ``every`` after it, and the first checkpoint at or after the window's end (the last checkpoint if none).
    ``None`` if the window is open (no transition).
    """
    start, end = window.get("start"), window.get("end")
    if start is None or end is None:
        return None
    checkpoints = sorted(int(s) for s in checkpoints)
    earlier = [s for s in checkpoints if s < start]
    later = [s for s in checkpoints if s >= end]
    resume = earlier[-1] if earlier else checkpoints[0]
    stop = later[0] if later else checkpoints[-1]
    first = (resume // every + 1) * every
    return resume, sorted({resume, stop} | set(range(first, stop, every)))


def _refine_store(config: Config, run: ModAddRun, resume: int, steps: Sequence[int]) -> ResultStore:
    return ResultStore(config.results_dir, "grokking_modadd_refine",
                       dict(run=run.store.key, resume=resume, stop=steps[-1], every=config.refine_every))


def _continue(run: ModAddRun, store: ResultStore, resume: int, steps: Sequence[int], *, log_steps: Sequence[int],
              progress: bool | None, desc: str) -> list[dict]:
    """Re-run ``run`` from its stored checkpoint ``resume`` to ``steps[-1]``, saving every step of ``steps`` into
    ``store`` (full-batch AdamW is deterministic: the same trajectory, with the run's own step backend, which its
    checkpoint's optimiser state names and checks)."""
    if not store.verified(checkpoint_name(resume)):
        state = run.store.load(checkpoint_name(resume))
        state = dict(state, log=[r for r in state["log"] if r["step"] <= resume])
        store.save(checkpoint_name(resume), state)
    params = run.params
    split = modular_addition_split(params["p"], params["train_fraction"], params["split_seed"])
    model = ModAddTransformer(params["p"], params["d_model"], params["n_heads"], params["d_mlp"], params["seed"])
    return train_full_batch_adamw(model, *split["train"], store=store, n_steps=int(steps[-1]), checkpoint_steps=steps,
                                  lr=params["lr"], weight_decay=params["weight_decay"], betas=tuple(params["betas"]),
                                  log_steps=log_steps, evaluate=split_evaluator(split["train"], split["test"]),
                                  progress=progress, desc=desc, step_backend=params["step_backend"])


def refine_run(config: Config, run: ModAddRun, *, progress: bool | None = None) -> tuple[ResultStore, list[int],
                                                                                          list[dict]] | None:
    """Re-run ``run``'s own transition densely (:func:`refinement_steps`) into a child store keyed by the run's key
    and the refinement window; ``(store, steps, log)`` or ``None`` without a transition."""
    where = refinement_steps(run.checkpoint_steps, window(run, config), config.refine_every)
    if where is None:
        return None
    resume, steps = where
    store = _refine_store(config, run, resume, steps)
    log = _continue(run, store, resume, steps, log_steps=steps, progress=progress, desc="transition, densely")
    return store, steps, log


def _model_from(store: ResultStore, params: Mapping, step: int) -> ModAddTransformer:
    model = ModAddTransformer(params["p"], params["d_model"], params["n_heads"], params["d_mlp"], params["seed"])
    model.load_state_dict(store.load(checkpoint_name(step))["model"])
    return model


# ---------------------------------------------------------------------------------------------------------------
# Phases of training


def plateau_phases(checkpoints: Sequence[int], memorised: int | None, window: dict,
                   picks: dict) -> tuple[int, dict[str, tuple[int, int]]]:
    """The reference run's three phases as ``(first, last)`` checkpoint steps (both included), for its table.

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


def run_boundaries(memorised: float | None, window: Mapping, stop: int) -> dict | None:
    """A run's phase boundaries ``{"memorised", "start", "end", "stop"}`` from its own curve, ``stop`` being its
    end step (where the stop rule or the cap ended its training); ``None`` unless it memorises and its transition
    both starts and ends."""
    if memorised is None or window.get("start") is None or window.get("end") is None:
        return None
    return {"memorised": memorised, "start": window["start"], "end": window["end"], "stop": stop}


def phase_masks(steps: Sequence[int], boundaries: Mapping | None) -> dict[str, np.ndarray]:
    """Which checkpoints fall in each phase: plateau ``memorised <= s < start``, transition ``start <= s <= end``,
    after ``end < s <= stop``. All empty without boundaries."""
    steps = np.asarray(steps, dtype=float)
    if boundaries is None:
        return {name: np.zeros(len(steps), dtype=bool) for name in PHASES}
    m, a, b, stop = (float(boundaries[k]) for k in ("memorised", "start", "end", "stop"))
    return {"plateau": (steps >= m) & (steps < a), "transition": (steps >= a) & (steps <= b),
            "after": (steps > b) & (steps <= stop)}


def matched_boundaries(boundaries: Sequence[Mapping | None]) -> dict | None:
    """The median over runs of each boundary (the steps at which the control is compared); ``None`` if no run
    has boundaries."""
    present = [b for b in boundaries if b is not None]
    if not present:
        return None
    return {k: float(np.median([b[k] for b in present])) for k in ("memorised", "start", "end", "stop")}


def compare_phases(values: Sequence[Mapping[str, np.ndarray]], steps: Sequence[np.ndarray],
                   boundaries: Sequence[Mapping | None], *, log: bool) -> dict[tuple[str, str], PhaseDifference]:
    """:func:`hessian_book.stats.phase_difference` for each of :data:`COMPARISONS`, over runs: each run's
    difference of phase medians, a sign-flip p-value and a t-interval over the runs. The results are exploratory
    until :func:`declare_primary` places the members of :data:`PRIMARY` in their family.

    Args:
        values: per run, the quantity at its checkpoints (``ndarray[T_r]``; non-positive values count as missing
            with ``log``).
        steps: per run, its checkpoint steps.
        boundaries: per run, its (or the matched) :func:`run_boundaries`; runs with ``None`` are left out.
    """
    per_run = []
    for v, s, b in zip(values, steps, boundaries):
        if b is None:
            continue
        v = np.asarray(v, dtype=float).copy()
        v[~np.isfinite(v)] = np.nan
        if log:
            v[v <= 0] = np.nan
        masks = phase_masks(s, b)
        per_run.append({name: v[mask] for name, mask in masks.items()})
    return {(a, b): phase_difference(per_run, a, b, log=log) for a, b in COMPARISONS}


def declare_primary(diffs: Mapping[str, Mapping[tuple[str, str], PhaseDifference]]
                    ) -> dict[str, dict[tuple[str, str], PhaseDifference]]:
    """``diffs`` (quantity -> comparison -> difference) with Holm's adjustment over :data:`PRIMARY` at
    :data:`ALPHA` (:func:`hessian_book.stats.declare_family`); the other comparisons stay exploratory."""
    flat = {(q, a, b): d for q, by in diffs.items() for (a, b), d in by.items()}
    flat = declare_family(flat, PRIMARY, alpha=ALPHA)
    return {q: {(a, b): flat[q, a, b] for (a, b) in by} for q, by in diffs.items()}


# ---------------------------------------------------------------------------------------------------------------
# The recipe search


def recipe_label(d_model: int, n_heads: int, d_mlp: int | None, weight_decay: float) -> str:
    """A candidate's name in the recipe table: ``"d32 h1 MLP 128, wd 0.5"`` (``"attention only"`` without MLP)."""
    return f"d{d_model} h{n_heads} " + ("attention only" if d_mlp is None else f"MLP {d_mlp}") + \
        f", wd {weight_decay:g}"


def test_at_twice_memorised(steps: Sequence[int], train_acc: Sequence[float],
                            test_acc: Sequence[float]) -> float | None:
    """Test accuracy (in %) at twice the memorisation step, linearly interpolated between logged steps.

    Memorisation is the first logged step with train accuracy >= 99 % (:func:`hessian_book.outcomes.memorised_step`).
    Near the chance level if generalisation is delayed (a plateau), well above it if the run generalises soon
    after memorising. ``None`` if the run never memorises or the log ends before twice that step.
    """
    memorised = memorised_step(steps, train_acc)
    if memorised is None or 2 * memorised > np.asarray(steps)[-1]:
        return None
    return 100 * float(np.interp(2 * memorised, steps, test_acc))




def recipe_sentence(curve: "RecipeCurves", n_steps: int) -> str:
    """What one recipe candidate did within its budget, in words built from its curve (no undefined numbers)."""
    parts = [f"{curve.label}: final train accuracy {100 * curve.train_acc[-1]:.1f} %, test {100 * curve.test_acc[-1]:.1f} %"]
    if curve.memorised is None:
        parts.append(f"train accuracy never reaches 99 % within {n_steps:,} steps")
    else:
        parts.append(f"train accuracy reaches 99 % at step {curve.memorised}")
        if curve.generalised is None:
            parts.append(f"it does not generalise (test accuracy held >= 95 %) within {n_steps:,} steps")
        else:
            parts.append(f"it generalises (test accuracy held >= 95 %) from step {curve.generalised} "
                         f"({curve.ratio:.1f}× later)")
        if curve.test2x is not None:
            parts.append(f"test accuracy at twice the memorisation step {curve.test2x:.1f} %")
    parts.append(f"{'groks' if curve.groks else 'does not grok'} within {n_steps:,} steps by the definition")
    return "; ".join(parts) + "."


def plateau_word(levels: Sequence[float], *, p: int, n_test: int, z: float = 3.0) -> str:
    """Whether memorisation plateaus sit at chance: ``"above chance"`` when every run's plateau test accuracy
    (``levels``, in [0, 1]) exceeds chance ``1/p`` by more than ``z`` binomial standard errors on ``n_test``
    pairs, ``"at chance"`` when none does, ``"above chance in some runs"`` otherwise (``""`` without runs)."""
    levels = [x for x in levels if x is not None and np.isfinite(x)]
    if not levels:
        return ""
    chance = 1 / p
    bound = chance + z * math.sqrt(chance * (1 - chance) / n_test)
    above = [x > bound for x in levels]
    return "above chance" if all(above) else "at chance" if not any(above) else "above chance in some runs"


@dataclass(frozen=True)
class RecipeCurves:
    """One candidate of the recipe search (or the main run): its name, logged curves and grokking events.

    Attributes:
        label: :func:`recipe_label` (``" (chosen)"`` appended for the main run).
        steps, train_acc, test_acc: ``ndarray[T]`` logged steps and accuracies in [0, 1].
        memorised, generalised, ratio, groks: :func:`hessian_book.outcomes.outcome` within the run's cap, with
            its stop rule (``None`` when not reached).
        test2x: :func:`test_at_twice_memorised`.
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
        o = run_outcome(run)
        return cls(label=label, steps=steps, train_acc=train, test_acc=test, **o.delay(),
                   test2x=test_at_twice_memorised(steps, train, test), groks=o.groks)


def run_outcome(run: ModAddRun) -> Outcome:
    """The run's :class:`hessian_book.outcomes.Outcome` within its cap, by its own stop rule's margin (the default
    rule for a run without one, e.g. the control)."""
    rule = StopRule(**run.params["stop"]) if run.params.get("stop") else StopRule()
    return outcome(run.curve("step"), run.curve("train_acc"), run.curve("test_acc"), budget=run.params["n_steps"],
                   rule=rule)


def _chosen(config: Config) -> list:
    return [config.d_model, config.n_heads, config.d_mlp, config.weight_decay]


def recipe_candidates(config: Config) -> list[list]:
    """The recipe search's candidates ``[d_model, n_heads, d_mlp, weight_decay]``: ``recipe_configs``, then the
    chosen recipe (the chapter's model and weight decay) unless it is among them, so that the chosen recipe is
    trained at the same budget (``recipe_steps``) as every candidate it was chosen over."""
    candidates = [list(entry) for entry in config.recipe_configs]
    return candidates if _chosen(config) in candidates else candidates + [_chosen(config)]


def _recipe_run(config: Config, d_model: int, n_heads: int, d_mlp: int | None, weight_decay: float, *,
                progress: bool | None) -> ModAddRun:
    return train_modadd(config.results_dir, "grokking_modadd_recipe", p=config.p,
                        train_fraction=config.train_fraction, split_seed=config.split_seed, seed=config.seed,
                        d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, lr=config.lr, weight_decay=weight_decay,
                        betas=config.betas, n_steps=config.recipe_steps, log_every=config.log_every,
                        checkpoint_steps=[0], checkpoint_every=1000, stop=stop_rule(config), progress=progress,
                        desc=recipe_label(d_model, n_heads, d_mlp, weight_decay))


def _recipe_table(curves: Sequence[RecipeCurves], runs: Sequence[ModAddRun]) -> pd.DataFrame:
    rows = []
    for c, r in zip(curves, runs):
        size = n_parameters(ModAddTransformer(*(r.params[k] for k in ("p", "d_model", "n_heads", "d_mlp"))))
        rows.append({"model": c.label, "parameters": size, "steps": r.params["n_steps"], "trained steps": r.end_step,
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


#


# ---------------------------------------------------------------------------------------------------------------
# One run's analysis (a task of the fan-out)


def analysis_stores(config: Config, run: ModAddRun) -> dict[str, ResultStore]:
    """The Hessian results of ``run``: one child store per method (``"lanczos"``, ``"slq"``, ``"dense"``), each
    keyed by the training run's key, the stratified Hessian subsample and the method's own settings only.
    Refined checkpoints share them: the trajectory is the same, so step ``s`` names one model."""
    hessian = dict(run=run.store.key, hessian_samples=config.hessian_samples, subsample="stratified")
    return {"lanczos": ResultStore(config.results_dir, "grokking_modadd_lanczos",
                                   dict(hessian, k=config.lanczos_k, tol=config.lanczos_tol,
                                        block=config.lanczos_block, solver="warm")),
            "slq": ResultStore(config.results_dir, "grokking_modadd_slq",
                               dict(hessian, probes=config.slq_probes, steps=config.slq_steps)),
            "dense": ResultStore(config.results_dir, "grokking_modadd_dense",
                                 dict(hessian, n_vectors=config.n_vectors))}


@dataclass(frozen=True)
class RunAnalysis:
    """One run measured at every checkpoint (its schedule plus its densely re-run transition).

    Attributes:
        spec: which run; run_key: its training store's key.
        curves: its log (``step, train_loss, train_acc, test_loss, test_acc``), the re-run transition merged in.
        memorised, generalised, ratio, groks: :func:`hessian_book.outcomes.outcome` within the run's cap.
        window: ``{"start", "end"}``; boundaries: :func:`run_boundaries` (``None`` without a full transition).
        plateau_level: median test accuracy (in [0, 1]) over the logged steps from memorisation to the
            transition's start (to the end of the run without one); NaN if it never memorises.
        checkpoints: ``ndarray[T]``; refined: the steps of the dense re-run.
        extremes: ``ndarray[T, 2k]`` Lanczos (k smallest, k largest, ascending); subsample_loss, lanczos_hvps,
            slq_hvps: ``ndarray[T]``.
        densities: SLQ quadratures; slq: their :func:`slq_stats` (index: step).
        progress: :func:`hessian_book.circuit.progress_measures` with the run's final key frequencies, on the
            training pairs (index: step).
        key_frequencies: the final checkpoint's key frequencies.
        spikes: :func:`hessian_book.spikes.loss_spikes` of the logged training loss (schedule run only).
        coverage: :func:`hessian_book.sampling.coverage` of its Hessian subsample.
        seconds: ``train``, ``refine``, ``lanczos``, ``slq``, ``progress`` (as stored when computed).
    """

    spec: RunSpec
    run_key: str
    curves: pd.DataFrame
    memorised: int | None
    generalised: int | None
    ratio: float | None
    groks: bool
    window: dict
    boundaries: dict | None
    plateau_level: float
    checkpoints: np.ndarray
    refined: np.ndarray
    extremes: np.ndarray
    subsample_loss: np.ndarray
    lanczos_hvps: np.ndarray
    slq_hvps: np.ndarray
    densities: list
    slq: pd.DataFrame
    progress: pd.DataFrame
    key_frequencies: list
    spikes: list
    coverage: dict
    seconds: dict

    @property
    def label(self) -> str:
        return self.spec.label

    def quantities(self) -> dict[str, np.ndarray]:
        """Each of :data:`QUANTITIES` at every checkpoint (``ndarray[T]``)."""
        k = self.extremes.shape[1] // 2
        tops = self.extremes[:, k:]
        with np.errstate(divide="ignore", invalid="ignore"):
            spread = np.where(tops[:, 0] > 0, tops[:, -1] / tops[:, 0], np.nan)
            lmax_loss = tops[:, -1] / self.subsample_loss
        return {"lambda_max": tops[:, -1], "spread": spread, "entropy": self.slq["spectral_entropy"].to_numpy(),
                "lmax_loss": lmax_loss, **{name: self.progress[name].to_numpy() for name in (
                    "restricted_loss", "excluded_loss", "gini_embedding", "gini_unembedding")}}


def analyse_run(config: Config, spec: RunSpec, *, progress: bool | None = None) -> RunAnalysis:
    """Train (or read) one run, re-run its transition densely, and measure every checkpoint: Lanczos extremes and
    SLQ on its stratified Hessian subsample, and the progress measures. Everything is stored as it completes
    (child stores keyed by the run's key), so a rerun reads it back and an interrupted one resumes. Each
    checkpoint's Lanczos starts from the previous checkpoint's Ritz vectors (:func:`hessian_core.warm_lanczos`,
    same certified residual bound as a cold start); the vectors are not stored, so the first checkpoint computed
    after one read from the store (e.g. a resumed analysis's first) starts cold."""
    c = config
    run = train_run(c, spec, progress=progress)
    refined = refine_run(c, run, progress=progress)
    main_steps = list(run.checkpoint_steps)
    refine_steps = refined[1] if refined else []
    steps = sorted(set(main_steps) | set(refine_steps))
    params = run.params

    def model_at(step: int) -> ModAddTransformer:
        return _model_from(run.store if step in main_steps else refined[0], params, step)

    split = modular_addition_split(c.p, c.train_fraction, spec.split_seed)
    batch = run_hessian_batch(c, spec.split_seed, spec.seed)
    stores = analysis_stores(c, run)
    show = show_progress(progress)
    from tqdm.std import tqdm

    extremes, densities, ritz = [], [], None  # ritz: the last computed checkpoint's Ritz vectors (warm start)
    for step in tqdm(steps, desc=f"{spec.label}: Lanczos + SLQ", disable=not show, leave=False):
        model = model_at(step)

        def solve(start=ritz):
            nonlocal ritz
            result = extreme_eigenvalues(model, batch, k=c.lanczos_k, tol=c.lanczos_tol,
                                         block_size=c.lanczos_block, seed=spec.seed, start=start)
            ritz = result.vectors
            return result.without_vectors()

        ritz = None  # stays None if this step is read from the store
        extremes.append(stores["lanczos"].cached(f"lanczos_{step:07d}", solve))
        densities.append(stores["slq"].cached(f"slq_{step:07d}", lambda: slq_density(
            model, batch, n_probes=c.slq_probes, n_steps=c.slq_steps, seed=spec.seed)))
    freqs = key_frequencies(mlp_activations(model_at(steps[-1]), c.p))
    progress_store = ResultStore(c.results_dir, "grokking_modadd_progress", dict(run=run.store.key, frequencies=freqs))

    def measure(step: int) -> dict:
        started = time.perf_counter()
        out = progress_measures(model_at(step), c.p, train=split["train"], frequencies=freqs)
        return dict(out, seconds=time.perf_counter() - started)

    records = [progress_store.cached(f"progress_{s:07d}", lambda: measure(s)) for s in steps]
    progress_table = pd.DataFrame([{k: v for k, v in r.items() if k != "key_frequencies"} for r in records],
                                  index=pd.Index(steps, name="step"))

    log = {r["step"]: r for r in run.log}
    if refined:
        log.update({r["step"]: r for r in refined[2] if r["step"] not in log})
    curves = pd.DataFrame([{k: log[s][k] for k in ("step", "train_loss", "train_acc", "test_loss", "test_acc")}
                           for s in sorted(log)])
    s_, tr, te = run.curve("step"), run.curve("train_acc"), run.curve("test_acc")
    result = run_outcome(run)
    delay = result.delay()
    win = window(run, c)
    if delay["memorised"] is None:
        plateau = float("nan")
    else:
        inside = (s_ >= delay["memorised"]) & (s_ < (win["start"] if win["start"] is not None else np.inf))
        plateau = float(np.median(te[inside])) if inside.any() else float("nan")
    return RunAnalysis(
        spec=spec, run_key=run.store.key, curves=curves, **delay, groks=result.groks, window=win,
        boundaries=run_boundaries(delay["memorised"], win, run.end_step), plateau_level=plateau,
        checkpoints=np.array(steps), refined=np.array(refine_steps, dtype=int),
        extremes=np.array([e.eigenvalues for e in extremes]), subsample_loss=np.array([e.loss for e in extremes]),
        lanczos_hvps=np.array([e.hvps for e in extremes]), slq_hvps=np.array([d.hvps for d in densities]),
        densities=densities,
        slq=pd.DataFrame([slq_stats(d.nodes, d.weights, d.dimension) for d in densities],
                         index=pd.Index(steps, name="step")),
        progress=progress_table, key_frequencies=list(freqs),
        spikes=loss_spikes(s_, run.curve("train_loss")),
        coverage=coverage(*batch, c.p),
        seconds=dict(train=float(run.log[-1]["train_seconds"]),
                     refine=float(refined[2][-1]["train_seconds"] - refined[2][0]["train_seconds"]) if refined
                     else 0.0,
                     lanczos=sum(e.seconds for e in extremes), slq=sum(d.seconds for d in densities),
                     progress=sum(r["seconds"] for r in records)))


# ---------------------------------------------------------------------------------------------------------------
# The reference run's extra measurements


def _dense(config: Config, run: ModAddRun, step: int):
    store = analysis_stores(config, run)["dense"]
    return store.cached(f"dense_{step:07d}", lambda: dense_spectrum(run.model_at(step), hessian_batch(config),
                                                                    n_vectors=config.n_vectors))


def _fullset(config: Config, run: ModAddRun, step: int) -> dict:
    """The top ``lanczos_k`` eigenvalues on the full training set at ``step`` (for the subsample comparison)."""
    c = config
    store = ResultStore(c.results_dir, "grokking_modadd_fullset",
                        dict(run=run.store.key, k=c.lanczos_k, tol=c.lanczos_tol, block=c.lanczos_block))

    def compute() -> dict:
        started = time.perf_counter()
        train = modular_addition_split(c.p, c.train_fraction, c.split_seed)["train"]
        op = hessian_operator(run.model_at(step), nn.CrossEntropyLoss(), train)
        top = lanczos(op, c.lanczos_k, which="largest", tol=c.lanczos_tol, block_size=c.lanczos_block,
                      seed=c.seed, progress=False)
        return {"top": np.asarray(top), "hvps": op.n_products, "n": len(train[1]),
                "seconds": time.perf_counter() - started}

    return store.cached(f"fullset_{step:07d}", compute)


def spike_to_resolve(analysis: RunAnalysis, config: Config) -> Spike | None:
    """The first loss spike after the run memorises whose ``spike_span`` steps fit in the run (``None`` if none)."""
    after = analysis.memorised if analysis.memorised is not None else 0
    end = int(analysis.curves["step"].iloc[-1])  # the run's end step (its stop rule or its cap)
    return next((s for s in analysis.spikes if s.start >= after and s.start + config.spike_span <= end), None)


def _spike(config: Config, run: ModAddRun, start: int, *, progress: bool | None = False) -> list[dict]:
    """Re-run ``run`` across the spike that starts at ``start``, a checkpoint every ``spike_every`` steps for
    ``spike_span`` steps, and at each: λ_max, λ_min and Adam's preconditioned λ_max on the full training set."""
    c = config
    resume = max(s for s in run.checkpoint_steps if s <= start)
    steps = sorted({resume} | set(range(start, start + c.spike_span + 1, c.spike_every)))
    store = ResultStore(c.results_dir, "grokking_modadd_spike",
                        dict(run=run.store.key, resume=resume, start=start, span=c.spike_span, every=c.spike_every))
    log = _continue(run, store, resume, steps, log_steps=steps, progress=progress, desc="spike, densely")
    sharp = ResultStore(c.results_dir, "grokking_modadd_spike_sharpness", dict(run=store.key, tol=c.spike_tol))
    train = modular_addition_split(c.p, c.train_fraction, c.split_seed)["train"]
    by_step = {r["step"]: r for r in log}

    def compute(step: int) -> dict:
        state = store.load(checkpoint_name(step))
        model = _model_from(store, run.params, step)
        P = adam_preconditioner(state["optimiser"])
        return hessian_extremes(model, nn.CrossEntropyLoss(), train, tol=c.spike_tol, dtype=torch.float64,
                                preconditioner=P)

    return [{"step": s, "train_loss": by_step[s]["train_loss"], "test_acc": by_step[s]["test_acc"],
             **sharp.cached(f"sharpness_{s:07d}", lambda: compute(s))} for s in steps if s >= start]


# ---------------------------------------------------------------------------------------------------------------
# The fan-out


def task(config: Config, kind: str, *, threads: int = 1, progress: bool | None = False, **arguments: Any) -> dict:
    """One independent task of :func:`run` (module-level, so worker processes import it), with ``threads`` torch
    threads (restored afterwards): ``kind="run"`` (``spec=dict(role, seed, split_seed, weight_decay)``):
    :func:`analyse_run`; ``"recipe"``
    (``entry=[d_model, n_heads, d_mlp, weight_decay]``): a recipe candidate; ``"dense"``/``"fullset"``
    (``step=``): the reference run's full spectrum or full-set top-k there; ``"spike"`` (``start=``): the
    resolved spike. Results go to the stores (atomic writes); the return value is a small summary."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if kind == "run":
            analysis = analyse_run(config, RunSpec(**arguments["spec"]), progress=progress)
            return {"kind": kind, "label": analysis.label, "checkpoints": len(analysis.checkpoints),
                    "groks": analysis.groks, "end_step": int(analysis.curves["step"].iloc[-1])}
        if kind == "recipe":
            recipe = _recipe_run(config, *arguments["entry"], progress=progress)
            return {"kind": kind, "label": recipe_label(*arguments["entry"]), "steps": recipe.params["n_steps"]}
        reference = main_run(config, progress=False)
        if kind == "dense":
            return {"kind": kind, "step": arguments["step"],
                    "n": len(_dense(config, reference, arguments["step"]).eigenvalues)}
        if kind == "fullset":
            return {"kind": kind, "step": arguments["step"],
                    "hvps": _fullset(config, reference, arguments["step"])["hvps"]}
        if kind == "spike":
            return {"kind": kind, "n": len(_spike(config, reference, arguments["start"], progress=progress))}
        raise ValueError(f"kind={kind!r} must be 'run', 'recipe', 'dense', 'fullset' or 'spike'")
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------------------
# The chapter's result


def _shape_titles(k: int) -> dict[str, str]:
    """Glue prefix -> title of the reference run's scale-free quantities compared per phase."""
    return {"entropy": "spectral entropy (SLQ)", "spread": f"λ_max / λ_{k} (top-{k} spread)",
            "n_quarter": f"eigenvalues ≥ λ_max / 4 (of the top {k})", "negratio": "−λ_min / λ_max",
            "negfrac": "negative mass fraction (SLQ)", "lmax_loss": "λ_max / loss"}


def _change(d: PhaseDifference, log: bool) -> tuple[float, float, float]:
    """A difference as shown: a factor ``10**x`` for log quantities, else the difference itself."""
    f = (lambda x: 10 ** x) if log else (lambda x: x)
    return f(d.estimate), f(d.low), f(d.high)


def _fmt(x: float, log: bool) -> str:
    return f"×{x:.3g}" if log else f"{x:+.3g}"


def _p(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:.2g}"


def verdict_sentence(title: str, diffs: Mapping[tuple[str, str], PhaseDifference], log: bool) -> str:
    """``"<title> rises from the plateau to the transition (×2.1, 95 % interval ×1.5 to ×3.0, p = 0.016,
    Holm-adjusted 0.047, over 7 runs); changes from … (exploratory, no verdict)"``: a primary comparison's word
    from its Holm-adjusted p-value and interval (:meth:`PhaseDifference.direction`); an exploratory one is shown
    with its estimate and interval only."""
    parts = []
    for (a, b), d in diffs.items():
        est, low, high = _change(d, log)
        where = f"from {'the ' if a != 'after' else ''}{a} to {'the ' + b if b != 'after' else 'after it'}"
        numbers = f"{_fmt(est, log)}, 95 % interval {_fmt(low, log)} to {_fmt(high, log)}, p = {_p(d.p_value)}"
        if d.primary:
            parts.append(f"{d.direction()} {where} ({numbers}, Holm-adjusted {_p(d.p_adjusted)}, over "
                         f"{d.n_runs} runs)")
        else:
            parts.append(f"changes {where} by {numbers} unadjusted, over {d.n_runs} runs (exploratory, no "
                         "verdict)")
    return f"{title} " + "; ".join(parts[:-1]) + "; and " + parts[-1]


@dataclass(frozen=True)
class Result:
    """Everything the chapter's figures, tables and prose read.

    Reference-run fields (``checkpoints`` … ``lanczos_dir``) describe the reference run (init ``seed``, split
    ``split_seed``); ``runs`` holds every run's :class:`RunAnalysis` (the reference first, the control last).

    Attributes:
        config, main_label, n_params: the configuration, the model's :func:`recipe_label` and parameter count.
        recipes: the recipe table, every candidate of :func:`recipe_candidates` at ``recipe_steps`` (the chosen
            recipe among them); recipe_curves: their curves, then the reference run's.
        runs: :class:`RunAnalysis` of each run.
        checkpoints, window, picks, dense_picked, memorised_checkpoint, phases, extremes, subsample_loss,
            lanczos_hvps, densities, slq, full, full_stats, shape, by_phase, phase_table, full_table,
            lanczos_error, slq_error, lanczos_dir: the reference run's spectra (as in the single-run chapter).
        replication: one row per run (events, plateau level, final accuracy, groks, spikes).
        diffs: quantity -> comparison -> :class:`PhaseDifference` over the replicates that grok, each in its own
            phases; the members of :data:`PRIMARY` carry Holm-adjusted p-values, the rest are exploratory.
        matched: the same at the matched (median) boundaries; control: the control's differences there.
        matched_steps: the matched boundaries (``None`` if no run has a transition).
        verdicts: the table of ``diffs`` with the control's change at matched steps.
        coverage, coverage_plain: the reference subsample's coverage, stratified and (for comparison) a plain
            seeded subsample of the same size.
        fullset_table: top-k on the subsample against the full training set at the dense picks.
        spike, spike_records: the resolved spike (``None`` and ``[]`` if none) and its per-step sharpness records.
        workers: the process (``host:pid``) that ran each task; timings: wall seconds per phase.
    """

    config: Config
    main_label: str
    n_params: int
    recipes: pd.DataFrame
    recipe_curves: list
    runs: list
    checkpoints: np.ndarray
    window: dict
    picks: dict
    dense_picked: dict
    memorised_checkpoint: int
    phases: dict
    extremes: np.ndarray
    subsample_loss: np.ndarray
    lanczos_hvps: np.ndarray
    densities: list
    slq: pd.DataFrame
    full: dict
    full_stats: dict
    shape: dict
    by_phase: dict
    phase_table: pd.DataFrame
    full_table: pd.DataFrame
    lanczos_error: float
    slq_error: dict
    lanczos_dir: str
    replication: pd.DataFrame
    diffs: dict
    matched: dict
    control: dict
    matched_steps: dict | None
    verdicts: pd.DataFrame
    coverage: dict
    coverage_plain: dict
    fullset_table: pd.DataFrame
    spike: Spike | None
    spike_records: list
    workers: list
    timings: dict

    @property
    def main(self) -> RecipeCurves:
        """The reference run's curves and grokking events."""
        return self.recipe_curves[-1]

    @property
    def reference(self) -> RunAnalysis:
        return self.runs[0]

    @property
    def grok_runs(self) -> list[RunAnalysis]:
        """The runs of the recipe (the reference run and the replicates; not the control)."""
        return [r for r in self.runs if r.spec.role == "grok"]

    @property
    def replicates(self) -> list[RunAnalysis]:
        """The independent replicates (:attr:`Config.n_replicates`; not the reference run, which chose the
        recipe)."""
        return self.grok_runs[1:]

    @property
    def control_run(self) -> RunAnalysis:
        return self.runs[-1]

    @property
    def grokking(self) -> list[RunAnalysis]:
        """The replicates that grok (the phase comparisons use these)."""
        return [r for r in self.replicates if r.groks and r.boundaries is not None]

    @property
    def curves(self) -> pd.DataFrame:
        return self.reference.curves

    @property
    def tops(self) -> np.ndarray:
        """``ndarray[T, k]``: the k largest eigenvalues at each checkpoint, ascending."""
        return self.extremes[:, self.config.lanczos_k:]

    @property
    def dense_steps(self) -> list[int]:
        return sorted(set(self.dense_picked.values()))

    @property
    def dense_sorted_finite(self) -> bool:
        return all(bool(np.all(np.diff(lam) >= 0) and np.isfinite(lam).all()) for lam in self.full.values())

    @property
    def shape_titles(self) -> dict[str, str]:
        return _shape_titles(self.config.lanczos_k)

    def curve_at_checkpoints(self, name: str) -> np.ndarray:
        """``ndarray[T]`` of a logged quantity at the reference run's checkpoints."""
        return self.curves.set_index("step").loc[self.checkpoints, name].to_numpy()

    def glued(self) -> dict[str, Any]:
        """Every number and word the chapter's prose glues, by glue name."""
        c, k = self.config, self.config.lanczos_k
        out: dict[str, Any] = {}
        steps_of = [c.recipe_steps] * (len(self.recipe_curves) - 1) + [c.n_steps]
        for i, (r, budget) in enumerate(zip(self.recipe_curves, steps_of)):  # the candidates, then the main run
            out.update({f"recipe{i}_train": 100 * r.train_acc[-1], f"recipe{i}_test": 100 * r.test_acc[-1],
                        f"recipe{i}_memorised": _nan(r.memorised), f"recipe{i}_generalised": _nan(r.generalised),
                        f"recipe{i}_ratio": _nan(r.ratio), f"recipe{i}_test2x": _nan(r.test2x),
                        f"recipe{i}_groks": _groks_within(r.groks, budget),
                        f"recipe{i}_label": r.label})
        out["recipe_sentences"] = " ".join(recipe_sentence(r, n) for r, n in zip(self.recipe_curves, steps_of))
        main = self.main
        out.update(memorised=_nan(main.memorised), generalised=_nan(main.generalised), ratio=_nan(main.ratio),
                   window_start=_nan(self.window["start"]), window_end=_nan(self.window["end"]))
        test_at = dict(zip(self.curves["step"].tolist(), self.curves["test_acc"]))
        for key in ("before", "during", "after"):
            out[f"pick_{key}"] = self.picks[key]
            out[f"pick_{key}_test"] = 100 * test_at[self.picks[key]]
        out.update(final_test_acc=100 * main.test_acc[-1], final_train_acc=100 * main.train_acc[-1],
                   n_steps=c.n_steps, recipe_steps=c.recipe_steps, n_params=self.n_params,
                   n_checkpoints=len(self.checkpoints), main_label=self.main_label,
                   n_schedule=len(checkpoint_steps(c)), n_refined=len(self.reference.refined),
                   refine_every=c.refine_every, n_log_checkpoints=c.n_log_checkpoints, sparse_every=c.sparse_every,
                   grokked=_groks_within(main.groks, c.n_steps), transition_low=100 * c.transition_low,
                   main_end_step=int(main.steps[-1]), log_grid_end=c.log_grid_end,
                   main_stopped=("stopped by the rule" if int(main.steps[-1]) < c.n_steps else
                                 "trained to the cap"),
                   transition_high=100 * c.transition_high, n_recipes=len(self.recipe_curves) - 1,
                   n_recipes_grokking=sum(r.groks for r in self.recipe_curves[:-1]), pick_final=self.picks["final"],
                   dense_list=", ".join(f"step {step} ({key})" for key, step in self.dense_picked.items()),
                   lanczos_error=self.lanczos_error, slq_trace_error=100 * self.slq_error["trace"],
                   slq_entropy_error=100 * self.slq_error["spectral_entropy"],
                   hessian_samples=c.hessian_samples, lanczos_k=k, lanczos_tol=c.lanczos_tol,
                   slq_probes=c.slq_probes, slq_steps=c.slq_steps, p=c.p)
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
        lmax = self.extremes[:, -1]
        ok = (lmax > 0) & (self.subsample_loss > 0)
        out["corr_lmax_loss"] = np.corrcoef(np.log(lmax[ok]), np.log(self.subsample_loss[ok]))[0, 1]
        corr = np.array([_log_correlation(r.extremes[:, -1], r.subsample_loss) for r in self.replicates])
        corr = corr[np.isfinite(corr)]
        out["corr_runs_text"] = (f"median {np.median(corr):.2f}, range {corr.min():.2f} to {corr.max():.2f} over "
                                 f"{len(corr)} replicate{'s' * (len(corr) != 1)}" if len(corr)
                                 else "not defined in any replicate")
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
        out["full_picks_text"] = "; ".join(
            f"at step {step} ({label}) the fourth-largest eigenvalue is {out[f'full_{label}_l4']:.2f} λ_max, the "
            f"effective rank exp(S) of the whole spectrum is {out[f'full_{label}_effrank']:.0f} and the ten largest "
            f"|λ| carry {out[f'full_{label}_top10']:.0f} % of the total |λ|" for label, step in self.dense_picked.items())
        out["full_small_list"] = ", ".join(f"{out[f'full_{label}_small']:.0f} % ({label}, step {step})"
                                           for label, step in self.dense_picked.items())
        out.update(self._glued_replication())
        out.update(self._glued_verdicts())
        out.update(self._glued_subsample())
        out.update(self._glued_spikes())
        out.update(self._glued_timings())
        out.update(self._glued_explorer())
        return out

    def _glued_replication(self) -> dict[str, Any]:
        c, runs = self.config, self.replicates
        out: dict[str, Any] = dict(n_runs=len(runs), n_grok=len(self.grokking), seed=c.seed,
                                   split_seed=c.split_seed, n_replicates=c.n_replicates,
                                   replicates_list=", ".join(r.label for r in runs),
                                   k_of_n=f"{len(self.grokking)} of {len(runs)}")
        m, n = len(PRIMARY), c.n_replicates
        fewest = next((k for k in range(1, 64) if smallest_p(k, m) <= ALPHA), None)
        if n < fewest:
            why = (f"with {n} replicate{'s' * (n != 1)} the smallest Holm-adjusted p-value is "
                   f"{smallest_p(n, m):.2g} > {ALPHA}, so "
                   f"no verdict is possible at this setting ({fewest} replicates would be needed).")
        else:
            spare = n - fewest
            why = (f"with {n} replicates that grok it is {smallest_p(n, m):.2g} ≤ {ALPHA}, with {fewest - 1} it "
                   "would "
                   f"be {smallest_p(fewest - 1, m):.2g} > {ALPHA}; so {fewest} is the fewest replicates with which a "
                   "verdict is possible, and " + ("a verdict needs every replicate to grok." if not spare else
                                                  f"up to {spare} replicate(s) may fail to grok."))
        out["replicates_why"] = why[0].upper() + why[1:]
        for name, values in (("memorised", [r.memorised for r in runs]), ("generalised", [r.generalised for r in runs]),
                             ("delay", [r.ratio for r in runs]),
                             ("plateau", [100 * r.plateau_level for r in runs]),
                             ("final", [100 * r.curves["test_acc"].iloc[-1] for r in runs])):
            x = np.array([np.nan if v is None else v for v in values], dtype=float)
            x = x[np.isfinite(x)]
            out[f"{name}_n"] = len(x)
            for stat, f in (("median", np.median), ("min", np.min), ("max", np.max)):
                out[f"{name}_{stat}"] = float(f(x)) if len(x) else float("nan")
        if out["memorised_n"] == 0:
            out["replication_sentence"] = (f"No replicate reaches 99 % train accuracy within {c.n_steps:,} steps, "
                                           "so no "
                                           "memorisation or generalisation step, delay ratio or plateau is defined.")
        else:
            sentence = (f"Across the replicates, train accuracy first reaches 99 % at a median step "
                        f"{out['memorised_median']:.0f} (range {out['memorised_min']:.0f}–{out['memorised_max']:.0f}, "
                        f"in {out['memorised_n']} of {len(runs)} runs)")
            if out["generalised_n"]:
                sentence += (f", test accuracy holds >= 95 % from a median step {out['generalised_median']:.0f} "
                             f"({out['generalised_min']:.0f}–{out['generalised_max']:.0f}, in "
                             f"{out['generalised_n']} runs)")
            else:
                sentence += f", and none generalises (test accuracy held >= 95 %) within {c.n_steps:,} steps"
            if out["delay_n"]:
                sentence += (f", and the delay ratio has median {out['delay_median']:.1f} "
                             f"({out['delay_min']:.1f}–{out['delay_max']:.1f})")
            sentence += "."
            word = plateau_word([r.plateau_level for r in runs], p=c.p,
                                n_test=c.p * c.p - round(c.train_fraction * c.p * c.p))
            if out["plateau_n"]:
                sentence += (f" The median test accuracy on the memorisation plateau is {out['plateau_median']:.1f} % "
                             f"({out['plateau_min']:.1f}–{out['plateau_max']:.1f} %): {word} (1/p = "
                             f"{100 / c.p:.2f} %, by more than three binomial standard errors on the test pairs).")
            out["replication_sentence"] = sentence
        missing = [r for r in runs if not r.groks]
        out["not_grokking"] = ("Every replicate groks." if not missing else
                               "Not grokking by the definition: " + "; ".join(
                                   f"{r.label} ({_why_not(r, c.n_steps)})" for r in missing) + ".")
        ctrl = self.control_run
        control_budget = int(ctrl.curves["step"].iloc[-1])  # matched: the longest run of the recipe
        ends = [int(r.curves["step"].iloc[-1]) for r in self.grok_runs]
        out.update(control_n_steps=control_budget, stop_min_margin=c.stop_min_margin,
                   stop_fraction_pct=100 * c.stop_fraction, n_stopped_by_rule=sum(e < c.n_steps for e in ends),
                   n_grok_runs=len(ends), end_step_min=min(ends), end_step_max=max(ends))
        out.update(control_wd=ctrl.spec.weight_decay, control_groks=_groks_within(ctrl.groks, control_budget),
                   control_final_test=100 * ctrl.curves["test_acc"].iloc[-1],
                   control_final_train=100 * ctrl.curves["train_acc"].iloc[-1],
                   control_memorised=_nan(ctrl.memorised), control_plateau=100 * ctrl.plateau_level,
                   control_max_test=100 * ctrl.curves["test_acc"].max())
        out["control_note"] = (
            "so it is not a non-grokking control: changes at the transition cannot be told from it"
            if ctrl.groks else "so it is the non-grokking control the comparison needs")
        return out

    def _glued_verdicts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        n = len(self.grokking)
        m = self.matched_steps
        out["matched_steps"] = ("no run has a complete transition, so there are no matched steps" if m is None else
                                f"memorised at step {m['memorised']:.0f}, transition from step {m['start']:.0f} "
                                f"to {m['end']:.0f}")
        floor = smallest_p(n, len(PRIMARY))
        judged = n >= 2 and floor <= ALPHA
        out.update(n_primary=len(PRIMARY), alpha=ALPHA, p_floor=floor,
                   primary_list="; ".join(f"{QUANTITIES[q][0]} from the {a} to the {b}" for q, a, b in PRIMARY))
        if n < 2:
            why = "no replicate groks" if n == 0 else "only one replicate groks"
            smoke = " at the smoke preset" if self.config.preset == "smoke" else ""
            out["verdict_note"] = (f"{why.capitalize()}{smoke}, so there is no interval over runs and no verdict "
                                   "below.")
        elif not judged:
            out["verdict_note"] = (f"{n} of the {len(self.replicates)} replicates grok; with {n} runs the smallest "
                                   f"Holm-adjusted sign-flip p-value over the family of {len(PRIMARY)} is "
                                   f"{floor:.2g} > {ALPHA}, so no verdict is possible: every comparison below is "
                                   "shown with its estimate and interval only.")
        else:
            out["verdict_note"] = (f"Each statement below is computed from the {n} replicates that grok, each in its "
                                   f"own phases (the smallest Holm-adjusted p-value {n} runs can give is "
                                   f"{floor:.2g}).")
        clear = outside = 0
        for q, (title, log) in QUANTITIES.items():
            diffs = self.diffs[q] if judged else {k: replace(d, family_size=0) for k, d in self.diffs[q].items()}
            out[f"verdict_{q}"] = (verdict_sentence(title, diffs, log) + "." if n >= 2 else
                                   f"{title}: no verdict (fewer than two replicates grok).")
            for (a, b), d in diffs.items():
                est, low, high = _change(d, log)
                key = f"{q}_{a}_{b}"
                word = d.direction() if n >= 2 else "has no verdict"
                out.update({f"{key}_word": word, f"{key}_est": est, f"{key}_low": low, f"{key}_high": high,
                            f"{key}_p": d.p_value, f"{key}_padj": d.p_adjusted})
                if d.primary and word in ("rises", "falls"):
                    clear += 1
                    ctrl = self.control[q][(a, b)]
                    if not d.low <= ctrl.estimate <= d.high:
                        outside += 1
        out.update(n_clear=clear, n_clear_outside=outside, n_comparisons=len(QUANTITIES) * len(COMPARISONS))
        n_sim_runs = n if n >= 2 else max(2, self.config.n_replicates)  # the runs used, or those planned
        rates = _phase_rates(n_sim_runs, len(PRIMARY))
        out.update({f"sim_{key}": 100 * value if key not in ("effect", "n_sim") else value
                    for key, value in rates.items()})  # rates in %
        out["sim_runs"] = n_sim_runs
        out["control_sentence"] = (
            "No primary comparison has a verdict, so none is set against the control." if not clear else
            f"Of the {clear} primary comparisons with a verdict, the control's change between the matched steps lies "
            f"outside the replicates' 95 % interval for {outside} and inside it for {clear - outside} (the control "
            "is one run: its change has no interval of its own).")
        return out

    def _glued_subsample(self) -> dict[str, Any]:
        s, plain = self.coverage, self.coverage_plain
        out = dict(cov_tokens=s["tokens"], cov_classes=s["classes"], cov_min_class=s["min_per_class"],
                   cov_min_token=s["min_per_token"], plain_tokens=plain["tokens"], plain_classes=plain["classes"],
                   plain_missing_tokens=", ".join(map(str, plain["missing_tokens"])) or "none",
                   n_train_pairs=round(self.config.train_fraction * self.config.p ** 2),
                   n_fullset=len(self.fullset_table))
        t = self.fullset_table
        if len(t):
            out.update(fullset_lmax_min=t["λ_max ratio"].min(), fullset_lmax_max=t["λ_max ratio"].max(),
                       fullset_ratio_min=t["top-k ratio min"].min(), fullset_ratio_max=t["top-k ratio max"].max())
        freqs = self.reference.key_frequencies
        out.update(key_freqs=", ".join(map(str, freqs)) or "none", n_key_freqs=len(freqs),
                   key_freq_counts=", ".join(str(len(r.key_frequencies)) for r in self.grok_runs))
        return out

    def _glued_spikes(self) -> dict[str, Any]:
        c = self.config
        stats = [spike_statistics(r.spikes) for r in self.grok_runs]
        periods = np.array([s["period_median"] for s in stats], dtype=float)
        rises = np.array([s["rise_median"] for s in stats], dtype=float)
        out: dict[str, Any] = dict(spikes_total=sum(s["count"] for s in stats),
                                   spikes_ref=stats[0]["count"], spikes_control=len(self.control_run.spikes),
                                   log_every=c.log_every)
        for name, x in (("spike_period", periods), ("spike_rise", rises)):
            x = x[np.isfinite(x)]
            out[f"{name}_median"] = float(np.median(x)) if len(x) else float("nan")
            out[f"{name}_min"] = float(x.min()) if len(x) else float("nan")
            out[f"{name}_max"] = float(x.max()) if len(x) else float("nan")
        threshold = adam_stability_threshold(c.lr, c.betas[0])
        out["adam_threshold"] = threshold
        if self.spike is None:
            out["spike_note"] = ("The reference run has no loss spike after it memorises (with room for the dense "
                                 "re-run), so none is resolved.")
            return out
        rec = pd.DataFrame(self.spike_records)
        pre = rec["preconditioned_lambda_max"].to_numpy()
        peak = int(rec["step"].iloc[int(np.argmax(rec["train_loss"].to_numpy()))])
        out.update(spike_start=self.spike.start, spike_rise=self.spike.rise, spike_n=len(rec),
                   spike_every=c.spike_every, spike_span=c.spike_span, spike_peak_step=peak,
                   spike_loss_min=rec["train_loss"].min(), spike_loss_max=rec["train_loss"].max(),
                   spike_lmax_min=rec["lambda_max"].min(), spike_lmax_max=rec["lambda_max"].max(),
                   spike_pre_min=np.nanmin(pre), spike_pre_max=np.nanmax(pre),
                   spike_pre_at_peak=float(pre[int(np.nanargmax(pre))]),
                   spike_pre_peak_step=int(rec["step"].iloc[int(np.nanargmax(pre))]),
                   spike_above=int(np.sum(pre > threshold)),
                   spike_relation=("exceeds" if np.nanmax(pre) > threshold else "stays below"))
        out["spike_note"] = (f"The resolved spike starts at step {self.spike.start} of the reference run; "
                             f"{len(rec)} checkpoints, every {c.spike_every} steps, cover it.")
        return out

    def _glued_timings(self) -> dict[str, Any]:
        t = self.timings
        stored = {key: value for key, value in t.items() if key not in ("this_run", "tasks")}
        out = {f"seconds_{key}": value for key, value in stored.items()}
        out["minutes_total"] = sum(stored.values()) / 60
        out["lanczos_hvps"] = float(np.mean(np.concatenate([r.lanczos_hvps for r in self.runs])))
        out["slq_hvps"] = float(np.mean(np.concatenate([r.slq_hvps for r in self.runs])))
        out["n_checkpoints_all"] = int(sum(len(r.checkpoints) for r in self.runs))
        out["seconds_this_run"] = t["this_run"]
        out["seconds_tasks"] = t["tasks"]
        out["threads"] = 1
        out["n_workers"] = len(set(self.workers))
        out["scheduler_name"] = {None: "local worker processes", "": "local worker processes",
                                 "serial": "the calling process"}.get(self.config.scheduler,
                                                                      f"a Dask cluster ({self.config.scheduler})")
        return out

    def _glued_explorer(self) -> dict[str, Any]:
        """The reference run's first and last checkpoint as the explorer shows them (from the very arrays it is
        given), for the page check that moves its slider (:data:`hessian_book.explorer.FIRST_AND_LAST`)."""
        from ..explorer import explorer_glue

        return explorer_glue(explorer_runs(self)[0])


@functools.lru_cache(maxsize=8)
def _phase_rates(n_runs: int, family_size: int) -> dict[str, float]:
    """:func:`hessian_book.stats.phase_error_rates` at :data:`ALPHA` (deterministic, so cached)."""
    return phase_error_rates(n_runs, family_size, alpha=ALPHA)


def _log_correlation(lam_max: np.ndarray, loss: np.ndarray) -> float:
    """Pearson correlation of log λ_max and log loss over the checkpoints where both are positive (NaN with
    fewer than three)."""
    ok = (lam_max > 0) & (loss > 0)
    if ok.sum() < 3:
        return float("nan")
    return float(np.corrcoef(np.log(lam_max[ok]), np.log(loss[ok]))[0, 1])


def _why_not(r: RunAnalysis, n_steps: int) -> str:
    """Why a run does not grok within its budget ``n_steps`` (:mod:`hessian_book.outcomes`)."""
    if r.memorised is None:
        return f"does not reach 99 % train accuracy within {n_steps:,} steps"
    if r.generalised is None:
        return (f"does not generalise (test accuracy held >= 95 %) within {n_steps:,} steps (final "
                f"{100 * r.curves['test_acc'].iloc[-1]:.1f} %)")
    if r.ratio is not None and r.ratio < GROKS_RATIO:
        return f"generalises only {r.ratio:.1f}× after memorising"
    return f"memorised at step {r.memorised}, so no delay ratio"


def _groks_within(groks: bool, n_steps: int) -> str:
    """``"groks within 40,000 steps"`` / ``"does not grok within 40,000 steps"``: every outcome names its budget."""
    return f"{'groks' if groks else 'does not grok'} within {n_steps:,} steps"


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _replication_table(runs: Sequence[RunAnalysis]) -> pd.DataFrame:
    rows = []
    for r in runs:
        stats = spike_statistics(r.spikes)
        rows.append({"run": r.label, "train ≥ 99 % at": r.memorised, "test ≥ 95 % at": r.generalised,
                     "delay (×)": _nan(r.ratio), "transition": (f"{r.window['start']}–{r.window['end']}"
                                                                if r.boundaries else "—"),
                     "plateau test acc. (%)": 100 * r.plateau_level,
                     "final test acc. (%)": 100 * float(r.curves["test_acc"].iloc[-1]),
                     "groks": "yes" if r.groks else "no", "loss spikes": stats["count"],
                     "spike period (median)": stats["period_median"], "checkpoints": len(r.checkpoints),
                     "key frequencies": ", ".join(map(str, r.key_frequencies)) or "—"})
    table = pd.DataFrame(rows).set_index("run")
    for column in ("train ≥ 99 % at", "test ≥ 95 % at"):
        table[column] = table[column].astype("Int64")
    return table


def _verdict_table(diffs: Mapping, control: Mapping, n_grokking: int) -> pd.DataFrame:
    """One row per quantity and comparison: runs, estimate and 95 % t-interval (a factor for log quantities),
    sign-flip p-value, Holm-adjusted p-value (primary comparisons), role (primary or exploratory), the verdict
    word (primary only, when a verdict is possible with ``n_grokking`` runs) and the control's change at the
    matched steps."""
    judged = n_grokking >= 2 and smallest_p(n_grokking, len(PRIMARY)) <= ALPHA
    rows = []
    for q, (title, log) in QUANTITIES.items():
        for (a, b), d in diffs[q].items():
            est, low, high = _change(d, log)
            ctrl = _change(control[q][(a, b)], log)[0]
            rows.append({"quantity": title, "change": f"{a} → {b}", "runs": d.n_runs,
                         "estimate": est, "95 % low": low, "95 % high": high, "p (sign-flip)": d.p_value,
                         "p (Holm, family)": d.p_adjusted, "role": "primary" if d.primary else "exploratory",
                         "verdict": d.direction(exploratory="–") if judged else "no verdict",
                         "control at matched steps": ctrl, "scale": "factor" if log else "difference"})
    return pd.DataFrame(rows).set_index(["quantity", "change"])


def _fullset_table(config: Config, reference: RunAnalysis, fullset: Mapping[str, tuple[int, dict]]) -> pd.DataFrame:
    rows = []
    k = config.lanczos_k
    for pick, (step, rec) in fullset.items():
        sub = reference.extremes[list(reference.checkpoints).index(step), k:]
        full = np.asarray(rec["top"])
        ratio = full / sub
        rows.append({"checkpoint": pick, "step": step, "λ_max subsample": sub[-1], "λ_max full set": full[-1],
                     "λ_max ratio": full[-1] / sub[-1], f"λ_{k} subsample": sub[0], f"λ_{k} full set": full[0],
                     "top-k ratio min": ratio.min(), "top-k ratio max": ratio.max(),
                     "HVPs (full set)": rec["hvps"]})
    return pd.DataFrame(rows).set_index("checkpoint") if rows else pd.DataFrame(
        columns=["step", "λ_max ratio", "top-k ratio min", "top-k ratio max"])


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Compute the chapter (every step is stored as it completes, so an interrupted run resumes).

    The runs of the replication and the control and the recipe candidates are independent tasks (:func:`task`)
    on ``config.scheduler`` (the long runs first, so that two workers stay busy to the end); then the reference
    run's dense spectra, full-set top-k and resolved spike are a second round of tasks. Afterwards everything is
    read back from the stores here, on one torch thread like the tasks (so that anything recomputed here is
    computed the same way).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(config, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: Config, *, progress: bool | None) -> Result:
    started = time.perf_counter()
    show = show_progress(progress)
    c, k = config, config.lanczos_k
    serial = c.scheduler == "serial"
    specs = c.runs()
    # The control trains exactly as long as the longest run of the recipe (run_cap), known once those have
    # trained: it is a task of the second round, beside the reference run's dense work.
    grok_specs = [s for s in specs if s.role == "grok"]
    later_specs = [s for s in specs if s.role != "grok"]
    workers: list[str] = []
    tasks_started = time.perf_counter()
    first_tasks = [dict(config=c, kind="run", spec=vars(s).copy(), progress=progress if serial else False)
                   for s in grok_specs]
    recipe_tasks = [dict(config=c, kind="recipe", entry=list(entry), progress=False)
                    for entry in recipe_candidates(c)]
    first_tasks += recipe_tasks
    first = run_tasks(task, first_tasks, scheduler=c.scheduler, desc="runs", progress=show)
    workers += [r.worker for r in first]
    recipe_runs = [_recipe_run(c, *entry, progress=False) for entry in recipe_candidates(c)]  # read back
    main = main_run(c, progress=False)
    grok_analyses = [analyse_run(c, s, progress=False) for s in grok_specs]
    reference = grok_analyses[0]
    win = window(main, c)
    picks = transition_picks(main, c)
    dense_picked = {key: picks[key] for key in c.dense_picks}
    dense_steps = sorted(set(dense_picked.values()))
    spike = spike_to_resolve(reference, c)
    second = [dict(config=c, kind="run", spec=vars(s).copy(), progress=progress if serial else False)
              for s in later_specs]
    second += [dict(config=c, kind="dense", step=s) for s in dense_steps]
    second += [dict(config=c, kind="fullset", step=s) for s in dense_steps]
    if spike is not None:
        second.append(dict(config=c, kind="spike", start=spike.start))
    workers += [r.worker for r in run_tasks(task, second, scheduler=c.scheduler, desc="reference run",
                                            progress=show)]
    tasks_seconds = time.perf_counter() - tasks_started
    runs = grok_analyses + [analyse_run(c, s, progress=False) for s in later_specs]  # specs' order
    dense = {s: _dense(c, main, s) for s in dense_steps}
    fullset = {pick: (step, _fullset(c, main, step)) for pick, step in dense_picked.items()}
    spike_records = _spike(c, main, spike.start) if spike is not None else []

    main_label = recipe_label(c.d_model, c.n_heads, c.d_mlp, c.weight_decay)
    chosen = recipe_candidates(c).index(_chosen(c))
    labels = [recipe_label(*entry) + (" (chosen)" if i == chosen else "")
              for i, entry in enumerate(recipe_candidates(c))] + [main_label + " (reference run)"]
    recipe_curves = [RecipeCurves.of(label, r) for label, r in zip(labels, recipe_runs + [main])]

    checkpoints = list(reference.checkpoints)
    steps, ext = reference.checkpoints, reference.extremes
    tops = ext[:, k:]
    full = {s: dense[s].eigenvalues for s in dense_steps}
    full_stats = {s: spectrum_stats(full[s]) for s in dense_steps}
    lanczos_error = max(float(np.abs(ext[checkpoints.index(s)] - np.concatenate([full[s][:k], full[s][-k:]])).max()
                              / np.abs(full[s]).max()) for s in dense_steps)
    slq = reference.slq
    slq_error = {key: max(abs(slq.loc[s, key] - full_stats[s][key]) / abs(full_stats[s][key])
                          for s in dense_steps) for key in ("trace", "spectral_entropy")}
    memorised_checkpoint, phases = plateau_phases(checkpoints, recipe_curves[-1].memorised, win, picks)
    subsample_loss = reference.subsample_loss
    with np.errstate(divide="ignore", invalid="ignore"):
        shape = {"entropy": slq["spectral_entropy"].to_numpy(), "spread": tops[:, -1] / tops[:, 0],
                 "n_quarter": np.sum(tops >= tops[:, -1:] / 4, axis=1).astype(float),
                 "negratio": -ext[:, 0] / ext[:, -1], "negfrac": slq["negative_mass_fraction"].to_numpy(),
                 "lmax_loss": ext[:, -1] / subsample_loss}
    by_phase = {name: phase_statistics(steps, values, phases) for name, values in shape.items()}
    titles = _shape_titles(k)
    first_q = next(iter(by_phase))
    phase_table = pd.DataFrame(
        {(f"{label} (steps {a}–{b}, {by_phase[first_q][label]['n']} checkpoints)", stat): {
            titles[name]: by_phase[name][label][stat] for name in shape}
         for label, (a, b) in phases.items() for stat in ("median", "min", "max")})
    phase_table.index.name = "quantity"
    test_at = dict(zip(reference.curves["step"].tolist(), reference.curves["test_acc"]))
    keys = ("lambda_max", "lambda_min", "trace", "spectral_entropy", "effective_rank", "n_negative_tol",
            "n_near_zero", "negative_mass_fraction")
    full_table = pd.DataFrame([{"full spectrum at": key, "step": step, "test acc. (%)": 100 * test_at[step],
                                **{name: full_stats[step][name] for name in keys}}
                               for key, step in dense_picked.items()]).set_index("full spectrum at")

    # phase comparisons: the replicates that grok (runs[0] is the reference run, which chose the recipe, and
    # runs[-1] the control), in their own phases, and at the matched (median) boundaries with the control
    grok = [r for r in runs[1:-1] if r.spec.role == "grok" and r.groks and r.boundaries is not None]
    matched_steps = matched_boundaries([r.boundaries for r in grok])
    control_run = runs[-1]
    diffs, matched, control = {}, {}, {}
    for q, (_, log) in QUANTITIES.items():
        values = [r.quantities()[q] for r in grok]
        steps_of = [r.checkpoints for r in grok]
        diffs[q] = compare_phases(values, steps_of, [r.boundaries for r in grok], log=log)
        matched[q] = compare_phases(values, steps_of, [matched_steps] * len(grok), log=log)
        control[q] = compare_phases([control_run.quantities()[q]], [control_run.checkpoints], [matched_steps],
                                    log=log)
    diffs = declare_primary(diffs)  # the declared family; everything else (and the matched runs) exploratory
    train_x, train_y = modular_addition_split(c.p, c.train_fraction, c.split_seed)["train"]
    plain = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(c.seed + 1))[:c.hessian_samples]

    timings = dict(
        recipe=sum(float(r.log[-1]["train_seconds"]) for r in recipe_runs),
        **{key: sum(r.seconds[key] for r in runs) for key in ("train", "refine", "lanczos", "slq", "progress")},
        dense_hessian=sum(dense[s].seconds_hessian for s in dense_steps),
        dense_eig=sum(dense[s].seconds_eig for s in dense_steps),
        fullset=sum(rec["seconds"] for _, rec in fullset.values()),
        spike=sum(r["seconds"] for r in spike_records),
    )
    timings["tasks"] = tasks_seconds
    timings["this_run"] = time.perf_counter() - started
    return Result(config=c, main_label=main_label,
                  n_params=n_parameters(ModAddTransformer(c.p, c.d_model, c.n_heads, c.d_mlp, c.seed)),
                  recipes=_recipe_table(recipe_curves[:-1], recipe_runs), recipe_curves=recipe_curves,
                  runs=runs, checkpoints=steps, window=win, picks=picks, dense_picked=dense_picked,
                  memorised_checkpoint=memorised_checkpoint, phases=phases, extremes=ext,
                  subsample_loss=subsample_loss, lanczos_hvps=reference.lanczos_hvps,
                  densities=reference.densities, slq=slq, full=full, full_stats=full_stats, shape=shape,
                  by_phase=by_phase, phase_table=phase_table, full_table=full_table, lanczos_error=lanczos_error,
                  slq_error=slq_error, lanczos_dir=str(analysis_stores(c, main)["lanczos"].directory),
                  replication=_replication_table(runs), diffs=diffs, matched=matched, control=control,
                  matched_steps=matched_steps, verdicts=_verdict_table(diffs, control, len(grok)),
                  coverage=reference.coverage, coverage_plain=coverage(train_x[plain], train_y[plain], c.p),
                  fullset_table=_fullset_table(c, reference, fullset), spike=spike, spike_records=spike_records,
                  workers=workers, timings=timings)


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


def plot_replication(result: Result):
    """Train and test accuracy of every run of the recipe and of the control (dashed), on one log step axis."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    for i, r in enumerate(result.runs):
        control = r.spec.role == "control"
        style = dict(color="k" if control else f"C{i}", ls="--" if control else "-", lw=1.2)
        steps = np.maximum(r.curves["step"].to_numpy(), 1)
        for ax, name in zip(axes, ("train_acc", "test_acc")):
            ax.plot(steps, 100 * r.curves[name].to_numpy(), label=r.label + ("" if r.groks else " (no grok)"),
                    **style)
    for ax, title in zip(axes, ("train accuracy (%)", "test accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_progress_measures(result: Result):
    """Nanda et al.'s progress measures at every checkpoint of every run (control dashed): restricted and
    excluded loss, train loss, and the Ginis of W_E and W_U; each run's transition marked by dots."""
    import matplotlib.pyplot as plt

    names = {"train_loss": "train loss", "restricted_loss": "restricted loss (train)",
             "excluded_loss": "excluded loss (train)", "gini_embedding": "Gini of W_E (Fourier)",
             "gini_unembedding": "Gini of W_U (Fourier)"}
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4))
    for i, r in enumerate(result.runs):
        control = r.spec.role == "control"
        steps = np.maximum(r.progress.index.to_numpy(), 1)
        for ax, name in zip(axes, names):
            values = r.progress[name].to_numpy()
            ax.plot(steps, values, color="k" if control else f"C{i}", ls="--" if control else "-", lw=1)
            if r.boundaries is not None:
                for b in ("start", "end"):
                    ax.plot(max(r.boundaries[b], 1), np.interp(r.boundaries[b], steps, values), "o",
                            color=f"C{i}", ms=3)
    for ax, (name, title) in zip(axes, names.items()):
        ax.set_xscale("log")
        if "loss" in name:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def plot_spike(result: Result):
    """The resolved loss spike: training loss, λ_max and Adam's preconditioned λ_max against its stability
    threshold, at every dense checkpoint (an empty note if no spike was resolved)."""
    import matplotlib.pyplot as plt

    if not result.spike_records:
        fig, ax = plt.subplots(figsize=(6, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no loss spike resolved", ha="center", va="center")
        return fig
    rec = pd.DataFrame(result.spike_records)
    c = result.config
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), sharex=True)
    axes[0].semilogy(rec["step"], rec["train_loss"], marker="o", ms=3)
    axes[0].set_title("training loss")
    axes[1].semilogy(rec["step"], rec["lambda_max"], marker="o", ms=3, color="C1")
    axes[1].set_title("λ_max (full training set)")
    axes[2].semilogy(rec["step"], rec["preconditioned_lambda_max"], marker="o", ms=3, color="C2",
                     label="λ_max(P⁻¹H)")
    axes[2].axhline(adam_stability_threshold(c.lr, c.betas[0]), color="k", ls="--", lw=1,
                    label="(2 + 2β₁) / ((1 − β₁) lr)")
    axes[2].set_title("Adam-preconditioned sharpness")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# The checkpoint explorer (an interactive figure for the book page: hessian_book.explorer)

#: The explorer's curves: name in the legend -> (table of :class:`RunAnalysis`, column). The losses are logged
#: every ``log_every`` steps; the progress measures exist at every checkpoint.
EXPLORER_CURVES = {"train loss": ("curves", "train_loss"), "test loss": ("curves", "test_loss"),
                   "restricted loss (train)": ("progress", "restricted_loss"),
                   "excluded loss (train)": ("progress", "excluded_loss"),
                   "Gini of W_E (Fourier)": ("progress", "gini_embedding"),
                   "Gini of W_U (Fourier)": ("progress", "gini_unembedding")}
EXPLORER_GAPS = 3  # widest gaps marked among the 2k values at a checkpoint


def explorer_runs(result: Result) -> list:
    """One :class:`hessian_book.explorer.ExplorerRun` per run of ``result.runs`` (the reference run first, the
    control last): its checkpoints, the ``2k`` Lanczos extremes at each (``ndarray[2k]``, the k smallest and the
    k largest eigenvalues; not the whole spectrum) and the curves of :data:`EXPLORER_CURVES`. What
    :func:`explorer` draws and the ``explorer_*`` glued values read."""
    from ..explorer import ExplorerRun

    runs = []
    for r in result.runs:
        tables = {"curves": r.curves.set_index("step"), "progress": r.progress}
        curves = {name: (tables[table].index.to_numpy(dtype=float), tables[table][column].to_numpy(dtype=float))
                  for name, (table, column) in EXPLORER_CURVES.items()}
        runs.append(ExplorerRun(name=r.label, steps=np.asarray(r.checkpoints, dtype=float),
                                spectra=tuple(np.asarray(e, dtype=float) for e in r.extremes), curves=curves))
    return runs


def explorer_spec(result: Result) -> dict:
    """The plotly figure (a ``dict``) that :func:`explorer` shows (:func:`hessian_book.explorer.explorer_figure`;
    a dropdown selects the run, a slider its checkpoint): the Lanczos extremes at the checkpoint on a signed-log
    axis, n(ε) of those ``2k`` values, and the run's losses and progress measures (log y) with a line at the
    checkpoint's step."""
    from ..explorer import explorer_figure

    k = result.config.lanczos_k
    return explorer_figure(
        explorer_runs(result), n_gaps=EXPLORER_GAPS, curves_log_y=True,
        # short: two titles of ~40 characters fit side by side (longer ones ran into each other)
        spectrum_title=f"the {k} smallest and {k} largest λ (Lanczos)",
        counts_title=f"n(ε) of these {2 * k} λ; the bulk is one gap")


def explorer(result: Result):
    """The checkpoint explorer of the page (``IPython.display.HTML``, as :func:`mnist_lenet.explorer
    <hessian_book.chapters.mnist_lenet.explorer>`) of :func:`explorer_spec`; the page check moves the slider to
    the first and last checkpoints (:data:`hessian_book.explorer.FIRST_AND_LAST`)."""
    from ..explorer import FIRST_AND_LAST, display_explorer

    return display_explorer(explorer_spec(result), checks=FIRST_AND_LAST)
