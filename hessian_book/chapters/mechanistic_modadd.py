"""What the grokked models compute: the Fourier circuit of the grokking chapter's transformer, causal checks of it
against controls, whether curvature eigenvectors (and clusters of eigenvalues) line up with it, and the depth
chapter's MLPs: the same Fourier analysis and linear probes with controls.

The chapter reads other chapters' runs through *their* configurations (``Config.grokking``, ``Config.depth``), as
the Fiedler chapter does. The transformer is the grokking chapter's reference run (:func:`grokking_modadd.main_run`,
trained only if missing), analysed at its transition picks (:func:`grokking_modadd.transition_picks`) on its
Hessian subsample (:func:`grokking_modadd.hessian_batch`). The curvature eigenpairs are stored in a child store
keyed by that run's key, the subsample, the matrix and the solver settings; a stored full spectrum of the grokking
chapter is read instead of Lanczos where it exists. The MLPs are new runs of the depth chapter's recipe at depth
``probe_depth`` over ``probe_widths`` and ``probe_seeds`` (no Hessians; step 0 kept for the control), fanned out
with :func:`hessian_book.fanout.run_tasks`; a run the depth chapter already trained with the same parameters is read
from its store. All logic is in :mod:`hessian_book.mechanism`; this module wires it and words the verdicts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from hessian_core import cluster_labels, lanczos

from .. import config as checks
from ..circuit import (all_pairs, excluded_loss_from_logits, logit_components, logits_table, mlp_activations,
                       progress_measures, restricted_loss_from_logits)
from ..config import ChapterConfig, nested
from ..data import modular_addition_split
from ..fanout import run_tasks
from ..fourier import (fourier_basis, fourier_norms, gini, key_frequencies, key_frequency_threshold,
                       neuron_frequencies)
from ..mechanism import (CIRCUIT_TESTS, COMPONENT_BLOCKS, CONCEPTS, CURVATURES, EPS_GRID, CircuitTest,
                         CurvatureEigenpairs, EXACT_SETS, block_masses, block_of_top_vectors, circuit_tests, component_effects,
                         concept_labels, curvature_eigenpairs, decision_error_rates, dominant_frequencies,
                         frequency_ablation, frequency_rows, frequency_set_draws, hessian_top_eigenpairs,
                         mlp_first_layer, mlp_layer_features, null_quantile, planted_curvature_operator,
                         principal_cosines, probe_with_controls, token_masses, transformer_components)
from ..models import ModAddMLP
from ..outcomes import GENERALISED_AT, StopRule
from ..progress import show_progress
from ..store import ResultStore
from ..training import (checkpoint_name, completed_log, full_batch_evaluator, resolve_step_backend,
                        train_full_batch_adamw)
from . import grokking_modadd, mlp_depth_modadd

__all__ = ["Config", "Result", "run", "probe_task", "probe_run", "pooled_share",
           "stand_in_frequencies", "TEST_PICKS",
           "concentration_word", "ablation_word", "circle_ratio", "plot_fourier_norms", "plot_key_planes",
           "plot_logit_dependence", "plot_frequency_ablation", "plot_component_effects", "plot_concentration",
           "plot_top_clusters", "plot_mlp_fourier", "plot_probes"]

_PICKS = ("before", "during", "after", "final")
#: The picks at which the mechanistic test is read in every run of the recipe.
TEST_PICKS = ("before", "during", "after")
N_STAND_IN = 3  # frequencies analysed when no neuron has a key frequency (the embedding's strongest)
_DPI = 80
SMOKE_WORDS = "smoke run: no verdict"


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The mechanistic chapter's parameters.

    Attributes:
        grokking: the grokking chapter's configuration (its reference run, picks and Hessian subsample are read).
        depth: the depth chapter's configuration (its recipe is rerun over widths and seeds for the probes).
        picks: the grokking run's checkpoints (of before, during, after, final) where curvature is examined.
        matrices: curvature matrices examined (of hessian, gauss_newton, block_hessian, gradient_covariance).
        n_eigenvectors: eigenpairs at each end (the top only for the positive semidefinite matrices).
        lanczos_tol: relative residual tolerance of the Lanczos eigenpairs.
        cluster_eps: the primary ε of the top eigenvalues' clusters, relative to the largest eigenvalue (one of
            ``eps_grid``; the headline answer is read there).
        eps_grid: every ε the mechanistic test is run at (the answer is reported at each).
        n_test_draws: frequency sets of the mechanistic test's permutation null (all of them when there are at most
            :data:`hessian_book.mechanism.EXACT_SETS`).
        n_error_sims: simulated nulls (and planted cases per strength) measuring the decision's error rates.
        n_null: random frequency sets per exploratory concentration comparison (its 95th percentile is shown).
        n_ablation_draws: random sets of non-key frequencies ablated as the control (at least 20).
        n_boot: bootstrap replicates over input pairs.
        probe_widths, probe_seeds, probe_depth: the MLP runs for the probes (the depth chapter's recipe).
        probe_fraction: share of the ``p²`` pairs the probes train on (the rest is held out).
        probe_ridge: ridge of the probes, relative to the mean feature variance.
        probe_shuffles: shuffled-label probes per concept and layer (their mean is reported).
        scheduler: where the MLP runs execute (``None``/``""`` local processes, ``"serial"``, or a Dask address).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # the grokking and depth chapters' smoke runs in a fresh temporary directory, in this process
        "smoke": dict(n_eigenvectors=13, n_null=50, n_test_draws=200, n_error_sims=50, n_ablation_draws=20, n_boot=200,
                      probe_widths=[16, 32], probe_seeds=[0], probe_shuffles=1, results_dir="",
                      scheduler="serial"),
    }

    grokking: grokking_modadd.Config = nested(grokking_modadd.Config)
    depth: mlp_depth_modadd.Config = nested(mlp_depth_modadd.Config)
    picks: list = field(default_factory=lambda: ["before", "after", "final"])
    matrices: list = field(default_factory=lambda: list(CURVATURES))
    n_eigenvectors: int = 20
    lanczos_tol: float = 1e-5
    cluster_eps: float = 0.02
    eps_grid: list = field(default_factory=lambda: list(EPS_GRID))
    n_test_draws: int = 1000
    n_error_sims: int = 200
    n_null: int = 200
    n_ablation_draws: int = 50
    n_boot: int = 1000
    probe_widths: list = field(default_factory=lambda: [16, 32, 64, 128, 256])
    probe_seeds: list = field(default_factory=lambda: [0, 1, 2])
    probe_depth: int = 2
    probe_fraction: float = 0.5
    probe_ridge: float = 1e-3
    probe_shuffles: int = 3
    scheduler: str | None = None

    def validate(self) -> None:
        checks.prime("depth.p", self.depth.p)
        if self.depth.p < 5:
            raise checks.ConfigError(f"depth.p={self.depth.p} must be >= 5 (a Fourier analysis needs frequencies)")
        if (not isinstance(self.picks, (list, tuple)) or not self.picks
                or not all(isinstance(x, str) for x in self.picks) or not set(self.picks) <= set(_PICKS)
                or len(set(self.picks)) != len(self.picks)):
            raise checks.ConfigError(f"picks={self.picks!r} must be a non-empty list of distinct picks of "
                                     f"{list(_PICKS)}")
        if (not isinstance(self.matrices, (list, tuple)) or not self.matrices
                or not set(self.matrices) <= set(CURVATURES) or len(set(self.matrices)) != len(self.matrices)):
            raise checks.ConfigError(f"matrices={self.matrices!r} must be a non-empty list of distinct matrices "
                                     f"of {list(CURVATURES)}")
        for name in ("n_eigenvectors", "n_null", "n_test_draws", "n_error_sims", "n_boot", "probe_depth",
                     "probe_shuffles"):
            checks.positive_int(name, getattr(self, name))
        checks.positive_int("n_ablation_draws", self.n_ablation_draws)
        if self.n_ablation_draws < 20:
            raise checks.ConfigError(f"n_ablation_draws={self.n_ablation_draws} must be >= 20 (the control's "
                                     "distribution is shown)")
        if self.n_null < 20:
            raise checks.ConfigError(f"n_null={self.n_null} must be >= 20 (its 95th percentile is the bar)")
        checks.positive_float("lanczos_tol", self.lanczos_tol)
        checks.positive_float("cluster_eps", self.cluster_eps)
        if (not isinstance(self.eps_grid, (list, tuple)) or not self.eps_grid
                or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0 for e in self.eps_grid)
                or len(set(self.eps_grid)) != len(self.eps_grid)):
            raise checks.ConfigError(f"eps_grid={self.eps_grid!r} must be a non-empty list of distinct positive "
                                     "numbers")
        if self.cluster_eps not in self.eps_grid:
            raise checks.ConfigError(f"cluster_eps={self.cluster_eps!r} must be one of eps_grid={self.eps_grid!r} "
                                     "(the headline is one of the declared ε)")
        if self.n_test_draws < 100:
            raise checks.ConfigError(f"n_test_draws={self.n_test_draws} must be >= 100 (with Holm over three tests "
                                     "a p-value must reach 0.05/3)")
        if self.n_error_sims < 20:
            raise checks.ConfigError(f"n_error_sims={self.n_error_sims} must be >= 20")
        if self.n_eigenvectors < 2 * N_STAND_IN + 1:
            raise checks.ConfigError(f"n_eigenvectors={self.n_eigenvectors} must be >= {2 * N_STAND_IN + 1} (a run "
                                     f"without key frequencies is tested on {N_STAND_IN} stand-ins: a plane of two "
                                     "eigenvectors each and one eigenvalue past the last; a run with more key "
                                     "frequencies is checked once they are known)")
        checks.positive_float("probe_ridge", self.probe_ridge)
        checks.fraction("probe_fraction", self.probe_fraction)
        checks.int_list("probe_widths", self.probe_widths, minimum=1)
        checks.int_list("probe_seeds", self.probe_seeds)
        for name in ("probe_widths", "probe_seeds"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise checks.ConfigError(f"{name}={getattr(self, name)!r} has repeated entries")
        checks.scheduler("scheduler", self.scheduler)

    @property
    def smoke(self) -> bool:
        """A smoke run: numbers are computed and glued, but no sentence renders a verdict."""
        return self.preset == "smoke"

    def probe_recipe(self) -> dict[str, Any]:
        """The depth chapter's training recipe (everything but width and seed) at ``probe_depth``."""
        d = self.depth
        return dict(p=d.p, depth=self.probe_depth, input_encoding=d.input_encoding, train_fraction=d.train_fraction,
                    split_seed=d.split_seed, n_steps=d.n_steps, lr=d.lr, weight_decay=d.weight_decay,
                    betas=list(d.betas), log_every=d.log_every, stop=d.stop_rule().as_dict())

    def probe_settings(self) -> dict[str, Any]:
        return dict(probe_fraction=self.probe_fraction, probe_ridge=self.probe_ridge,
                    probe_shuffles=self.probe_shuffles)


# ---------------------------------------------------------------------------------------------------------------
# Words and small statistics (tested)


def pooled_share(vectors: np.ndarray, model, block: str, rows: torch.Tensor) -> float:
    """Share of the pooled ``block`` weight of ``vectors`` (``[P, m]``) that lies in the token subspace of
    ``rows``: ``Σ_i ||Π v_i,block||² / Σ_i ||v_i,block||²`` (NaN when the vectors have no weight in the block)."""
    shares = token_masses(vectors, model, block, rows)
    weights = block_masses(vectors, model)[block]
    ok = np.isfinite(shares)
    return float(np.sum(shares[ok] * weights[ok]) / np.sum(weights[ok])) if ok.any() and np.sum(weights[ok]) > 0 \
        else float("nan")


def concentration_word(value: float, null_q95: float, *, smoke: bool, null_q05: float = float("nan")) -> str:
    """Where an exploratory share lies against its null, in words that are positions, not verdicts: ``"lies above
    the null's 95th percentile"``, ``"lies below the null's 5th percentile"`` or ``"lies inside the null"``; a smoke
    run renders nothing."""
    if smoke:
        return SMOKE_WORDS
    if not np.isfinite(value):
        return "has no weight in this block"
    if value > null_q95:
        return "lies above the null's 95th percentile"
    if value < null_q05:
        return "lies below the null's 5th percentile"
    return "lies inside the null (between its 5th and 95th percentiles)"


def ablation_word(key_accuracy: float, clean_accuracy: float, random_accuracy: np.ndarray, *, smoke: bool) -> str:
    """How the key-frequency ablation compares with its control draws."""
    if smoke:
        return SMOKE_WORDS
    random_accuracy = np.asarray(random_accuracy, dtype=float)
    if key_accuracy < random_accuracy.min():
        return (f"hurts more than every one of the {len(random_accuracy)} random draws (accuracy "
                f"{100 * key_accuracy:.1f} % against at least {100 * random_accuracy.min():.1f} %)")
    return (f"does not hurt more than every random draw ({int((random_accuracy <= key_accuracy).sum())} of "
            f"{len(random_accuracy)} draws leave accuracy at or below its {100 * key_accuracy:.1f} %)")


def stand_in_frequencies(norms: np.ndarray, n: int) -> list[int]:
    """The ``n`` frequencies with the largest norms (``norms[k]`` for frequency ``k``; index 0, the constant, is
    skipped), ascending: what the chapter analyses in place of key frequencies when no neuron has one."""
    norms = np.asarray(norms, dtype=float)
    order = np.argsort(norms[1:])[::-1][:n] + 1
    return sorted(int(k) for k in order)


def circle_ratio(embedding: torch.Tensor, p: int, k: int) -> float:
    """How circular the tokens' embedding is in the plane of frequency ``k``: the ratio of the smaller to the larger
    singular value of ``F_k W`` (``[2, d]``, ``W = W_E[:p]``); 1 is a circle, 0 a line."""
    S = torch.linalg.svdvals(frequency_rows(p, [k]) @ torch.as_tensor(embedding, dtype=torch.float64))
    return float(S[-1] / S[0]) if S[0] > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# The MLP runs and their probes (tasks)


def probe_run(results_dir: str, *, width: int, seed: int, p: int, depth: int, input_encoding: str,
              train_fraction: float, split_seed: int, n_steps: int, lr: float, weight_decay: float, betas,
              log_every: int, stop: dict | None = None, depth_chapter_hessian_every: int | None = None,
              progress: bool | None = False) -> tuple[ResultStore, list[dict]]:
    """Train (or read) one MLP of the depth chapter's recipe, saving step 0 (the control) and the end step.

    Training ends at the cap ``n_steps`` or where the depth chapter's stop rule ``stop`` (the parameters of a
    :class:`hessian_book.outcomes.StopRule`) fires; the store is keyed without either (they do not change the
    trajectory, only its end: :func:`hessian_book.training.train_full_batch_adamw`). If the depth chapter trained
    the same run (same training parameters, its ``hessian_every`` given) up to that end, its store is read instead.
    Returns ``(store, log)``; the store holds ``checkpoint_0000000`` and the end step ``log[-1]["step"]``. The
    training step's backend (:func:`hessian_book.training.resolve_step_backend` of ``"auto"``) keys the store and
    the depth chapter's store it may read (the two backends agree only to float32 rounding).
    """
    params = dict(p=p, depth=depth, width=width, input_encoding=input_encoding, train_fraction=train_fraction,
                  split_seed=split_seed, seed=seed, lr=lr, weight_decay=weight_decay, betas=list(betas),
                  log_every=log_every, step_backend=resolve_step_backend("auto"))
    rule = StopRule(**stop) if stop else None
    if depth_chapter_hessian_every is not None:
        for store in ResultStore.find(results_dir, "mlp_depth_modadd",
                                      **params, hessian_every=depth_chapter_hessian_every):
            log = completed_log(store, n_steps=n_steps, stop=rule)
            if log is not None and store.verified(checkpoint_name(0)):
                return store, log
    store = ResultStore(results_dir, "mechanistic_modadd_mlp", params)
    split = modular_addition_split(p, train_fraction, split_seed, with_equals=False)
    model = ModAddMLP(p, depth, width, input_encoding, seed)
    log = train_full_batch_adamw(model, *split["train"], store=store, n_steps=n_steps, checkpoint_steps=[0],
                                 lr=lr, weight_decay=weight_decay, betas=tuple(betas),
                                 log_steps=range(0, n_steps + 1, log_every),
                                 evaluate=full_batch_evaluator(split["train"], split["test"]), progress=progress,
                                 desc=f"width {width} seed {seed}", stop=rule, step_backend=params["step_backend"])
    return store, log


def _mlp_at(store: ResultStore, step: int, p: int, depth: int, width: int, input_encoding: str, seed: int):
    model = ModAddMLP(p, depth, width, input_encoding, seed)
    model.load_state_dict(store.load(checkpoint_name(step))["model"])
    return model.eval()


def probe_task(*, results_dir: str, width: int, seed: int, recipe: dict, settings: dict,
               depth_chapter_hessian_every: int | None, threads: int = 1, progress: bool | None = False) -> dict:
    """One MLP run (:func:`probe_run`) and its analysis: the first layer's Fourier norms, the key frequencies of each
    hidden layer, restricted and excluded loss of its logits, and the probes of every concept at every layer with
    their controls. Stored in a child store keyed by the run's key and the probe settings; returns the record."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        store, log = probe_run(results_dir, width=width, seed=seed, **recipe,
                               depth_chapter_hessian_every=depth_chapter_hessian_every, progress=progress)
        # the run's store is keyed without its cap and stop rule: its end step keys the analysis too
        analysis = ResultStore(results_dir, "mechanistic_modadd_probes",
                               dict(run=store.key, end=int(log[-1]["step"]), **settings))
        return analysis.cached("analysis", lambda: _analyse_mlp(store, log, width, seed, recipe, settings))
    finally:
        torch.set_num_threads(previous)


def _analyse_mlp(store: ResultStore, log: list[dict], width: int, seed: int, recipe: dict, settings: dict) -> dict:
    started = time.perf_counter()
    p, depth, end = recipe["p"], recipe["depth"], int(log[-1]["step"])
    trained = _mlp_at(store, end, p, depth, width, recipe["input_encoding"], seed)
    initial = _mlp_at(store, 0, p, depth, width, recipe["input_encoding"], seed)
    pairs = all_pairs(p)[:, :2]
    features, init_features = mlp_layer_features(trained, pairs), mlp_layer_features(initial, pairs)
    out: dict[str, Any] = dict(width=width, seed=seed, final_train=log[-1]["train_acc"],
                               final_test=log[-1]["test_acc"], train_seconds=log[-1]["train_seconds"])
    if recipe["input_encoding"] == "onehot":
        E_a, E_b = mlp_first_layer(trained)
        I_a, _ = mlp_first_layer(initial)
        out["norms_a"], out["norms_b"] = fourier_norms(E_a, p).numpy(), fourier_norms(E_b, p).numpy()
        out["gini_a"], out["gini_b"] = gini(out["norms_a"][1:]), gini(out["norms_b"][1:])
        out["gini_a_init"] = gini(fourier_norms(I_a, p)[1:])
    keys = {}
    for name, acts in features.items():
        if name.startswith("hidden"):
            keys[name] = key_frequencies(acts.reshape(p, p, -1))
    out["key_frequencies"] = keys
    first = keys.get("hidden 1", [])
    logits = features["logits"].reshape(p, p, p)
    target = (pairs[:, 0] + pairs[:, 1]) % p
    out["loss_all"] = float(torch.nn.functional.cross_entropy(features["logits"], target))
    if first:
        restricted, _ = logit_components(logits, first)
        centred = logits - logits.mean(2, keepdim=True)
        out["restricted_share"] = float((restricted ** 2).sum() / (centred ** 2).sum())
        out["restricted_loss"] = restricted_loss_from_logits(logits, first)
        out["excluded_loss"] = excluded_loss_from_logits(logits, first)
    else:
        out["restricted_share"] = out["restricted_loss"] = out["excluded_loss"] = float("nan")
    rows = []
    for concept in CONCEPTS:
        labels = concept_labels(concept, pairs, p)
        for layer in features:
            s = probe_with_controls(features[layer], init_features[layer], labels,
                                    probe_fraction=settings["probe_fraction"], ridge=settings["probe_ridge"],
                                    n_shuffles=settings["probe_shuffles"], seed=seed)
            rows.append(dict(concept=concept, layer=layer, trained=s.trained, at_init=s.at_init, shuffled=s.shuffled,
                             chance=s.chance, trained_train=s.trained_train))
    out["probes"] = rows
    out["seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class Result:
    """What the chapter computed (tables are DataFrames; ``glued()`` gives every number and word of the prose)."""

    config: Config
    grokked: bool
    final_step: int
    final_train_acc: float
    final_test_acc: float
    picks: dict
    key_frequencies: list
    analysed_frequencies: list
    norms_embed: np.ndarray
    norms_unembed: np.ndarray
    gini_embed: float
    gini_unembed: float
    gini_embed_init: float
    planes: dict
    circle_ratios: dict
    residue_means: np.ndarray
    residue_fit: np.ndarray
    restricted_share: float
    progress: dict
    ablations: dict
    effects: pd.DataFrame
    replicates: pd.DataFrame
    neuron_groups: dict
    concentration: pd.DataFrame
    circuit: pd.DataFrame
    controls: pd.DataFrame
    error_rates: dict
    subsample: dict
    cluster_values: dict
    eigen_sources: dict
    mlp_runs: list
    probes: pd.DataFrame
    mlp_reference: dict
    timings: dict

    # --- verdict words -------------------------------------------------------------------------------------------

    def _row(self, pick: str, matrix: str, block: str, end: str = "top") -> pd.Series | None:
        c = self.concentration
        rows = c[(c.pick == pick) & (c.matrix == matrix) & (c.block == block) & (c.end == end)]
        return rows.iloc[0] if len(rows) else None

    def main_block(self, matrix: str, pick: str) -> str:
        """W_E or W_U, whichever holds more of the matrix's top eigenvectors' weight at ``pick``."""
        rows = [self._row(pick, matrix, b) for b in ("W_E", "W_U")]
        weights = [r.block_weight if r is not None else -1.0 for r in rows]
        return "W_E" if weights[0] >= weights[1] else "W_U"

    def sees_circuit(self, matrix: str, pick: str) -> bool:
        """The matrix's top eigenvectors concentrate on the key frequencies (above the null's 95th percentile) in
        their main per-token block (:meth:`main_block`): one test, not the better of two."""
        r = self._row(pick, matrix, self.main_block(matrix, pick))
        return bool(r is not None and r.above)

    def circuit_answers(self, frame: pd.DataFrame | None = None, *, eps: float | None = None) -> pd.DataFrame:
        """The mechanistic test's answers at one ε (default ``cluster_eps``) of ``frame`` (default the runs)."""
        frame = self.circuit if frame is None else frame
        eps = self.config.cluster_eps if eps is None else eps
        return frame[np.isclose(frame.eps, eps)] if len(frame) else frame

    def counted_runs(self) -> pd.DataFrame:
        """The runs the answer is counted over: those that generalised and have key frequencies."""
        cr = self.circuit
        return cr[cr.generalised & cr.has_key] if len(cr) else cr

    def answer_pick(self) -> str:
        """The pick the chapter's answer is read at: ``after`` if examined, else the last examined."""
        return "after" if "after" in self.config.picks else self.config.picks[-1]

    def glued(self) -> dict[str, Any]:
        c, smoke = self.config, self.config.smoke
        g = c.grokking
        out: dict[str, Any] = {
            "p": g.p, "final_step": self.final_step, "final_train_pct": 100 * self.final_train_acc,
            "final_test_pct": 100 * self.final_test_acc,
            "grokked_word": ("smoke run: the run is not judged" if smoke else
                             ("reached" if self.grokked else "did not reach")),
            "transition_high_pct": 100 * g.transition_high, "generalised_pct": 100 * GENERALISED_AT,
            "key_frequencies": ", ".join(map(str, self.key_frequencies)) or "none",
            "n_key": len(self.key_frequencies),
            "analysed_frequencies": ", ".join(map(str, self.analysed_frequencies)),
            "frequency_note": ("the key frequencies of the MLP neurons" if self.key_frequencies else
                               f"no neuron has a key frequency, so the {len(self.analysed_frequencies)} frequencies "
                               f"with the largest W_E norms stand in for them; nothing below is a circuit"),
            "gini_embed": self.gini_embed, "gini_unembed": self.gini_unembed, "gini_embed_init": self.gini_embed_init,
            "restricted_share_pct": 100 * self.restricted_share,
            "restricted_loss": self.progress["restricted_loss"], "excluded_loss": self.progress["excluded_loss"],
            "train_loss": self.progress["train_loss"],
            "circle_min": min(self.circle_ratios.values()) if self.circle_ratios else float("nan"),
            "circle_max": max(self.circle_ratios.values()) if self.circle_ratios else float("nan"),
            "n_eigenvectors": c.n_eigenvectors, "n_null": c.n_null,
            "n_boot": c.n_boot, "cluster_eps": c.cluster_eps, "n_probe_runs": len(self.mlp_runs),
            "probe_widths": ", ".join(map(str, c.probe_widths)), "n_probe_seeds": len(c.probe_seeds),
            "probe_fraction_pct": 100 * c.probe_fraction,
            "picks": ", ".join(f"{name} (step {step})" for name, step in self.picks.items()),
            "eigen_sources": "; ".join(f"{m} at {pk}: {s}" for (pk, m), s in self.eigen_sources.items()),
            "total_minutes": self.timings.get("total", float("nan")) / 60,
        }
        if not self.key_frequencies:
            out["circuit_claim"] = "No neuron has a key frequency, so no circuit is claimed."
        elif not self.grokked and not smoke:
            out["circuit_claim"] = ("The run did not generalise, so no circuit is claimed; the analyses below run "
                                    "on it all the same.")
        elif smoke:
            out["circuit_claim"] = "Smoke run: no circuit is claimed."
        else:
            out["circuit_claim"] = (f"The run generalised and its neurons use the key frequencies "
                                    f"{out['key_frequencies']}.")
        for block, a in self.ablations.items():
            out[f"ablate_{block}_clean_pct"] = 100 * a.clean["accuracy"]
            out[f"ablate_{block}_key_pct"] = 100 * a.key["accuracy"]
            out[f"ablate_{block}_random_min_pct"] = 100 * a.random_accuracy.min()
            out[f"ablate_{block}_random_median_pct"] = 100 * np.median(a.random_accuracy)
            out[f"ablate_{block}_n_draws"] = len(a.random_accuracy)
            out[f"ablate_{block}_word"] = ablation_word(a.key["accuracy"], a.clean["accuracy"], a.random_accuracy,
                                                        smoke=smoke)
        rp = self.replicates
        out["rep_n"] = len(rp)
        out["rep_n_generalised"] = int(rp["generalised"].sum())
        generalised = rp[rp["generalised"]]
        out["rep_below_every"] = int(generalised["below every draw"].sum())
        out["rep_key_range"] = _range(generalised["key ablated acc %"])
        out["rep_random_range"] = _range(generalised["random median acc %"])
        if smoke:
            out["rep_sentence"] = f"Smoke run: no verdict over the {len(rp)} runs."
        elif not len(generalised):
            out["rep_sentence"] = (f"None of the {len(rp)} runs of the recipe generalised, so there is no "
                                   f"statement over runs.")
        else:
            out["rep_sentence"] = (f"Over the {len(generalised)} runs of the recipe that generalised (of {len(rp)}), "
                                   f"ablating their own key frequencies in W_E hurts more than every random draw in "
                                   f"{out['rep_below_every']} of {len(generalised)}: accuracy {out['rep_key_range']} % "
                                   f"with the key frequencies ablated, against medians of {out['rep_random_range']} % "
                                   f"over the random draws.")
        e = self.effects
        for mode in ("mean", "patch"):
            rows = e[e["mode"] == mode]
            if len(rows):
                top = rows.sort_values("accuracy drop", ascending=False).iloc[0]
                out[f"{mode}_top_component"] = top["component"]
                out[f"{mode}_top_drop_pct"] = 100 * top["accuracy drop"]
                out[f"{mode}_top_low_pct"] = 100 * top["accuracy low"]
                out[f"{mode}_top_high_pct"] = 100 * top["accuracy high"]
        pick = self.answer_pick()
        out["answer_pick"] = f"{pick} (step {self.picks[pick]})"
        seers = [m for m in c.matrices if self.sees_circuit(m, pick)]
        for m in c.matrices:
            for block in ("W_E", "W_U"):
                r = self._row(pick, m, block)
                if r is not None:
                    out[f"conc_{m}_{block}_pct"] = 100 * r.share
                    out[f"conc_{m}_{block}_q95_pct"] = 100 * r.null_q95
                    out[f"conc_{m}_{block}_expected_pct"] = 100 * r.expected
                    out[f"conc_{m}_{block}_word"] = concentration_word(r.share, r.null_q95, smoke=smoke,
                                                                        null_q05=r.null_q05)
                    out[f"conc_{m}_{block}_weight_pct"] = 100 * r.block_weight
        for pk in c.picks:
            for m in c.matrices:
                for block in ("W_E", "W_U"):
                    r = self._row(pk, m, block)
                    if r is not None:
                        out[f"conc_{m}_{block}_{pk}_pct"] = 100 * r.share
                        out[f"conc_{m}_{block}_{pk}_q95_pct"] = 100 * r.null_q95
        first = c.picks[0]
        r0 = self._row(first, "hessian", "W_E") if "hessian" in c.matrices else None
        out["first_pick"] = f"{first} (step {self.picks[first]})"
        if r0 is not None:
            out["conc_first_sentence"] = (
                f"At {first} (step {self.picks[first]}) the Hessian's top eigenvectors hold {100 * r0.share:.1f} % of "
                f"their W_E weight there (null 95th percentile {100 * r0.null_q95:.1f} %): the Hessian "
                f"{concentration_word(r0.share, r0.null_q95, smoke=smoke, null_q05=r0.null_q05)} in W_E.")
        else:
            out["conc_first_sentence"] = ""
        n_matrices = len(c.matrices)
        names = ", ".join(m.replace("_", " ") for m in seers) or "none of them"
        out["seers"] = (f"{len(seers)} of the {n_matrices} matrices ({names}) have pooled top eigenvectors above the "
                        f"null's 95th percentile in their main per-token block at {pick}")
        # the mechanistic test
        out["eps_grid"] = ", ".join(f"{e:g}" for e in c.eps_grid)
        out["n_test_draws"] = c.n_test_draws
        cr = self.circuit
        n_sets = math.comb((g.p - 1) // 2, len(self.analysed_frequencies))
        out["test_null_note"] = (f"all {n_sets} sets: an exact permutation test" if n_sets <= max(c.n_test_draws,
                                                                                                       EXACT_SETS)
                                 else f"{c.n_test_draws} random sets of the {n_sets}")
        counted = self.circuit_answers(self.counted_runs())
        runs_counted = list(dict.fromkeys(counted.run)) if len(counted) else []
        out["circuit_n_runs"] = len(runs_counted)
        out["circuit_n_all"] = int(cr.run.nunique()) if len(cr) else 0
        for pk in TEST_PICKS:
            at = counted[counted.pick == pk] if len(counted) else counted
            out[f"circuit_yes_{pk}"] = int((at.answer == "yes").sum()) if len(at) else 0
        per_eps = []
        for e in c.eps_grid:
            at = self.circuit_answers(self.counted_runs(), eps=e)
            at = at[at.pick == "after"] if len(at) else at
            per_eps.append(f"{int((at.answer == 'yes').sum()) if len(at) else 0} at ε = {e:g}")
        out["circuit_per_eps"] = ", ".join(per_eps)
        ref = self.circuit_answers()
        ref = ref[ref.reference & (ref.pick == "after")] if len(ref) else ref
        if len(ref):
            r = ref.iloc[0]
            out["ref_block"] = r.block
            out["ref_clusters"] = int(r.clusters)
            out["ref_pairs"] = int(r.pairs)
            out["ref_pairs_key"] = int(r["same-key pairs"])
            out["ref_concentration_pct"] = 100 * r["concentration"]
            out["ref_alignment"] = r["clusters are key frequencies"]
            for name, short in zip(CIRCUIT_TESTS, ("concentration", "clusters", "pairs")):
                out[f"ref_p_{short}"] = r[f"p Holm {name}"]
            out["ref_answer"] = r.answer
        ctl = self.controls
        expected = dict(zip(ctl.control, ctl.must))
        words = {}
        for name in expected:
            rows = ctl[ctl.control == name]
            parts = []
            for pk, sub in rows.groupby("pick", sort=False):
                answers = list(sub.answer)
                parts.append(f"{'no' if set(answers) == {'no'} else 'yes' if set(answers) == {'yes'} else 'mixed'}"
                             f" at {pk}" + ("" if len(set(answers)) == 1 else
                                            " (" + ", ".join(f"{a} at ε = {e:g}" for a, e in
                                                             zip(answers, sub.eps)) + ")"))
            words[name] = "; ".join(parts)
        out["control_wd_value"] = f"{g.control_weight_decay:g}"
        out["control_wd0"] = next((w for n, w in words.items() if n.startswith("weight decay")), "not run")
        out["control_untrained"] = words.get("untrained (negative)", "not run")
        out["control_planted"] = words.get("planted key planes (positive)", "not run")
        out["control_planted_random"] = words.get("planted random planes (negative)", "not run")
        wrong = sorted({r.control for r in ctl.itertuples() if r.answer != r.must})
        out["controls_ok"] = ("every control answers as it must, at every pick and every ε" if not wrong else
                              f"the test does not answer as it must on {', '.join(wrong)}: its answers on the runs "
                              f"cannot be trusted")
        er = self.error_rates
        out["fpr_pct"] = 100 * er["false_positive"]
        out["fpr_each_max_pct"] = 100 * max(er[f"fp_{name}"] for name in CIRCUIT_TESTS)
        out["fpr_n_sims"] = er["n_sims"]
        out["power_full_pct"] = 100 * er["power_1"]
        out["power_07_pct"] = 100 * er["power_0.7"]
        out["power_05_pct"] = 100 * er["power_0.5"]
        out["fpr_mc_pct"] = 100 * 2 * math.sqrt(0.05 * 0.95 / er["n_sims"])
        sub = self.subsample
        out["sub_step"] = sub["step"]
        out["sub_n_train"] = sub["n_train"]
        out["sub_n_hessian"] = g.hessian_samples
        out["sub_cos_min"] = float(np.min(sub["cosines"]))
        out["sub_cos_median"] = float(np.median(sub["cosines"]))
        out["sub_top_ratio"] = sub["top_ratio"]
        out["sub_same"] = (f"the same at {sum(sub['same'])} of {len(sub['same'])} ε "
                           f"(whole set: {', '.join(sub['full_answers'])}; subsample: "
                           f"{', '.join(sub['sub_answers'])})")
        if smoke:
            out["answer"] = ("Smoke run: no verdict on whether an eigenvalue cluster is a circuit (the numbers above "
                             "come from a few hundred steps of a tiny model).")
        elif wrong:
            out["answer"] = f"No answer: {out['controls_ok']}."
        elif not runs_counted:
            out["answer"] = (f"None of the {out['circuit_n_all']} runs of the recipe generalised with key frequencies "
                             f"within {g.n_steps} steps, so the claim that an eigenvalue cluster is a circuit is not "
                             f"tested.")
        else:
            n = len(runs_counted)
            out["answer"] = (f"At ε = {c.cluster_eps:g}, the Hessian's top clusters pass all three tests (a circuit) "
                             f"in {out['circuit_yes_after']} of {n} runs after the transition, "
                             f"{out['circuit_yes_during']} of {n} during it and {out['circuit_yes_before']} of {n} "
                             f"before it; after it, at every ε of the grid: {out['circuit_per_eps']} of {n}.")
        # MLPs
        ref = self.mlp_reference
        out["mlp_width"], out["mlp_seed"], out["mlp_depth"] = ref.get("width"), ref.get("seed"), c.probe_depth
        out["mlp_test_pct"] = 100 * ref.get("final_test", float("nan"))
        out["mlp_gini_a"] = ref.get("gini_a", float("nan"))
        out["mlp_gini_a_init"] = ref.get("gini_a_init", float("nan"))
        out["mlp_keys_1"] = ", ".join(map(str, ref.get("key_frequencies", {}).get("hidden 1", []))) or "none"
        out["mlp_restricted_share_pct"] = 100 * ref.get("restricted_share", float("nan"))
        out["mlp_restricted_loss"] = ref.get("restricted_loss", float("nan"))
        out["mlp_loss_all"] = ref.get("loss_all", float("nan"))
        out["mlp_generalised"] = int(sum(r["final_test"] >= g.transition_high for r in self.mlp_runs))
        pr = self.probes
        for concept in CONCEPTS:
            key = _concept_key(concept)
            rows = pr[(pr.concept == concept)]
            beats = rows[(rows.trained > rows.at_init_max) & (rows.trained > rows.shuffled_max)]
            out[f"probe_{key}_beats"] = len(beats)
            out[f"probe_{key}_cells"] = len(rows)
            last = rows[rows.layer == "hidden 1"]
            if len(last):
                out[f"probe_{key}_h1_trained_pct"] = 100 * last.trained.mean()
                out[f"probe_{key}_h1_init_pct"] = 100 * last.at_init.mean()
                out[f"probe_{key}_h1_shuffled_pct"] = 100 * last.shuffled.mean()
                out[f"probe_{key}_chance_pct"] = 100 * last.chance.mean()
        return out

    # --- tables ---------------------------------------------------------------------------------------------------

    def ablation_table(self) -> pd.DataFrame:
        rows = []
        for block, a in self.ablations.items():
            rows.append({"block": block, "ablated": f"key frequencies {a.frequencies}", "dimension":
                         2 * len(a.frequencies) * self.config.grokking.d_model,
                         "accuracy %": 100 * a.key["accuracy"], "loss": a.key["loss"]})
            rows.append({"block": block, "ablated": f"{len(a.random_accuracy)} random non-key sets (median)",
                         "dimension": 2 * len(a.frequencies) * self.config.grokking.d_model,
                         "accuracy %": 100 * np.median(a.random_accuracy), "loss": float(np.median(a.random_loss))})
        return pd.DataFrame(rows)

    def check_text(self) -> str:
        """Deterministic facts for the page's checked output."""
        return "\n".join([
            f"key frequencies: {self.key_frequencies}",
            f"picks: {sorted(self.picks)}",
            f"matrices: {list(self.config.matrices)}",
            f"concentration rows: {len(self.concentration)}",
            f"mechanistic test rows: {len(self.circuit)}",
            f"control rows: {len(self.controls)}",
            f"MLP runs: {len(self.mlp_runs)}",
            f"probe cells: {len(self.probes)}",
            f"every share in [0, 1]: {bool(((self.concentration.share.dropna() >= 0) & (self.concentration.share.dropna() <= 1 + 1e-9)).all())}",
        ])


def _range(values) -> str:
    values = np.asarray(values, dtype=float)
    if not values.size:
        return "–"
    return f"{values.min():.1f}" if values.size == 1 or values.min() == values.max() else \
        f"{values.min():.1f}–{values.max():.1f}"


def _concept_key(concept: str) -> str:
    return {"a mod 2": "a_parity", "(a + b) mod 2": "sum_parity", "answer (a + b mod p)": "answer"}[concept]


# ---------------------------------------------------------------------------------------------------------------
# The computation


def _eigenpairs(config: Config, run, step: int, matrix: str, batch) -> CurvatureEigenpairs:
    g, k = config.grokking, config.n_eigenvectors
    if matrix == "hessian":
        for dense_store in ResultStore.find(g.results_dir, "grokking_modadd_dense", run=run.store.key,
                                            hessian_samples=g.hessian_samples, subsample="stratified"):
            name = f"dense_{step:07d}"
            if dense_store.params.get("n_vectors", 0) >= k and dense_store.verified(name):
                d = dense_store.load(name)
                values = np.asarray(d.eigenvalues)
                return CurvatureEigenpairs(matrix, values[::-1][:k].copy(), np.asarray(d.top_vectors)[:, :k],
                                           values[:k].copy(), np.asarray(d.bottom_vectors)[:, :k], 0,
                                           d.seconds_hessian + d.seconds_eig, "dense")
    store = ResultStore(config.results_dir, "mechanistic_modadd_eigen",
                        dict(run=run.store.key, hessian_samples=g.hessian_samples, subsample="stratified",
                             matrix=matrix, k=k, tol=config.lanczos_tol))
    return store.cached(f"eigen_{step:07d}", lambda: curvature_eigenpairs(
        run.model_at(step), batch, matrix, k=k, tol=config.lanczos_tol, seed=g.seed))


def _neuron_groups(model, p: int, key: list[int]) -> dict[str, list[int]]:
    acts = mlp_activations(model, p)
    freq, share = neuron_frequencies(acts)
    threshold = key_frequency_threshold(p, acts.shape[2])
    groups: dict[str, list[int]] = {}
    for k in key:
        members = [int(i) for i in torch.nonzero((freq == k) & (share >= threshold - 1e-12)).flatten()]
        if members:
            groups[f"MLP neurons, frequency {k}"] = members
    assigned = {i for v in groups.values() for i in v}
    rest = [i for i in range(acts.shape[2]) if i not in assigned]
    if rest:
        groups["MLP neurons, no key frequency"] = rest
    return groups


def run(config: Config, *, progress: bool | None = None) -> Result:
    """Read (or train) the runs, compute every analysis (curvature eigenpairs and MLP analyses stored as they
    complete), and return the :class:`Result`. Computes on one torch thread, like the grokking chapter."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(config, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _run(config: Config, *, progress: bool | None) -> Result:
    from tqdm.std import tqdm

    started = time.perf_counter()
    timings: dict[str, float] = {}
    show = show_progress(progress)
    c, g = config, config.grokking
    rng = np.random.default_rng(g.seed)

    # 1. the circuit of the grokked transformer
    t0 = time.perf_counter()
    main = grokking_modadd.main_run(g, progress=progress)
    picks = grokking_modadd.transition_picks(main, g)
    picks = {name: picks[name] for name in c.picks}
    final_step = main.checkpoint_steps[-1]
    model = main.model_at(final_step)
    p = g.p
    last = main.log[-1]
    grokked = grokking_modadd.run_outcome(main).generalised is not None  # hessian_book.outcomes: held >= 95 %
    key = key_frequencies(mlp_activations(model, p))
    W_E = model.W_E.detach().double()[:p]
    norms_embed = fourier_norms(W_E, p).numpy()
    # without key frequencies the tests still run, on the embedding's strongest frequencies (and say so)
    analysed = list(key) or stand_in_frequencies(norms_embed, N_STAND_IN)
    if c.n_eigenvectors < 2 * len(analysed) + 1:  # known only now; before any curvature is computed
        raise checks.ConfigError(
            f"n_eigenvectors={c.n_eigenvectors} must be >= {2 * len(analysed) + 1} for this run: it has "
            f"{len(analysed)} frequencies to test ({', '.join(map(str, analysed))}), each a plane of two "
            "eigenvectors, and the test needs one eigenvalue past the last plane")
    norms_unembed = fourier_norms(model.W_U.detach().double().T, p).numpy()
    init = main.model_at(0)
    planes, ratios = {}, {}
    for k in analysed:
        C = frequency_rows(p, [k]) @ W_E                                        # [2, d]
        _, _, Vh = torch.linalg.svd(C, full_matrices=False)
        part = fourier_basis(p)[[2 * k - 1, 2 * k]].T @ C                      # [p, d]: W_E's frequency-k part
        planes[k] = (part @ Vh.T).numpy()                                      # [p, 2]
        ratios[k] = circle_ratio(W_E, p, k)
    table = logits_table(model, p)
    restricted, _ = logit_components(table, analysed)
    centred = table - table.mean(2, keepdim=True)
    idx = torch.arange(p)
    residue = (idx[:, None, None] + idx[None, :, None] - idx[None, None, :]) % p
    counts = torch.bincount(residue.reshape(-1), minlength=p).double()
    residue_means = (torch.zeros(p, dtype=torch.float64).index_add_(0, residue.reshape(-1), centred.reshape(-1))
                     / counts).numpy()
    residue_fit = (torch.zeros(p, dtype=torch.float64).index_add_(0, residue.reshape(-1), restricted.reshape(-1))
                   / counts).numpy()
    restricted_share = float((restricted ** 2).sum() / (centred ** 2).sum())
    split = modular_addition_split(p, g.train_fraction, g.split_seed)
    progress_values = progress_measures(model, p, train=split["train"], frequencies=analysed)
    timings["circuit"] = time.perf_counter() - t0

    # 2. causal checks
    t0 = time.perf_counter()
    every = (all_pairs(p), (all_pairs(p)[:, 0] + all_pairs(p)[:, 1]) % p)
    ablations = {block: frequency_ablation(model, analysed, every, block=block, n_draws=c.n_ablation_draws,
                                           seed=g.seed) for block in ("W_E", "W_U")}
    groups = _neuron_groups(model, p, key)
    components = transformer_components(model, groups, analysed)
    rows = []
    for mode in ("mean", "patch"):
        for e in component_effects(model, components, mode=mode, n_boot=c.n_boot, seed=g.seed):
            rows.append({"mode": mode, "component": e.component, "accuracy drop": e.accuracy_drop,
                         "accuracy low": e.accuracy_low, "accuracy high": e.accuracy_high,
                         "correct-logit drop": e.logit_drop, "logit low": e.logit_low, "logit high": e.logit_high,
                         "accuracy after": e.accuracy_after})
    effects = pd.DataFrame(rows)
    replicates = _replicates(c, every, progress=progress)
    timings["causal"] = time.perf_counter() - t0

    # 3. the curvature matrices' view (exploratory: every matrix, pooled top vectors, shown without family control)
    t0 = time.perf_counter()
    batch = grokking_modadd.hessian_batch(g)
    key_rows = frequency_rows(p, analysed)
    sets, _ = frequency_set_draws(p, len(analysed), c.n_null, rng)
    conc_rows, cluster_values, sources = [], {}, {}
    jobs = [(pick, m) for pick in c.picks for m in c.matrices]
    for pick, m in tqdm(jobs, desc="curvature eigenvectors", disable=not show):
        step = picks[pick]
        pairs = _eigenpairs(c, main, step, m, batch)
        sources[pick, m] = pairs.source
        at = main.model_at(step)
        for end, vectors in (("top", pairs.top_vectors), ("bottom", pairs.bottom_vectors)):
            if vectors.shape[1] == 0:
                continue
            shares = block_masses(vectors, at, {g_: [t for t in ts if t in dict(at.named_parameters())]
                                                for g_, ts in COMPONENT_BLOCKS.items()})
            for block in ("W_E", "W_U"):
                row = dict(pick=pick, step=step, matrix=m, end=end, block=block,
                           **{f"mass {name}": float(v.mean()) for name, v in shares.items()})
                share = pooled_share(vectors, at, block, key_rows)
                # the null: the same share for random frequency sets of the same size (a permutation of labels)
                null = np.array([pooled_share(vectors, at, block, frequency_rows(p, s_)) for s_ in sets])
                q95, above = null_quantile(null, share) if np.isfinite(share) else (float("nan"), False)
                conc_rows.append(dict(row, block_weight=float(block_masses(vectors, at)[block].mean()), share=share,
                                      null_q95=q95, null_q05=float(np.quantile(null, 0.05)),
                                      null_median=float(np.median(null)), expected=len(key_rows) / (p - 1),
                                      above=above))
        values, vectors = pairs.top_values, pairs.top_vectors
        frequency_block = block_of_top_vectors(vectors, at)
        dominant, _ = dominant_frequencies(vectors, at, frequency_block)
        cluster_values[pick, m] = dict(values=values, dominant=dominant,
                                       labels=cluster_labels(values, c.cluster_eps * abs(values[0])))
    concentration = pd.DataFrame(conc_rows)
    timings["curvature"] = time.perf_counter() - t0

    # 3b. the mechanistic test (Hessian): every run of the recipe at each pick, its controls, its error rates
    t0 = time.perf_counter()
    circuit, controls, error_rates, subsample = _mechanistic_test(c, main, picks, analysed, batch, progress=progress)
    timings["mechanistic test"] = time.perf_counter() - t0

    # 4. the MLPs
    t0 = time.perf_counter()
    d = c.depth
    reuse = d.hessian_every if c.probe_depth in d.depths else None
    tasks = [dict(results_dir=c.results_dir, width=w, seed=s, recipe=c.probe_recipe(), settings=c.probe_settings(),
                  depth_chapter_hessian_every=reuse, progress=progress if c.scheduler == "serial" else False)
             for w in sorted(c.probe_widths, reverse=True) for s in c.probe_seeds]  # the longest runs first
    mlp_runs = [r.value for r in run_tasks(probe_task, tasks, scheduler=c.scheduler, desc="MLP runs", progress=show)]
    mlp_runs = sorted(mlp_runs, key=lambda r: (c.probe_widths.index(r["width"]), c.probe_seeds.index(r["seed"])))
    probe_rows = [dict(width=r["width"], seed=r["seed"], **row) for r in mlp_runs for row in r["probes"]]
    per_seed = pd.DataFrame(probe_rows)
    probes = (per_seed.groupby(["concept", "layer", "width"], sort=False)
              .agg(trained=("trained", "mean"), trained_min=("trained", "min"), at_init=("at_init", "mean"),
                   at_init_max=("at_init", "max"), shuffled=("shuffled", "mean"), shuffled_max=("shuffled", "max"),
                   chance=("chance", "mean"), n_seeds=("seed", "count")).reset_index())
    reference_width = d.width if d.width in c.probe_widths else c.probe_widths[-1]
    mlp_reference = next(r for r in mlp_runs if r["width"] == reference_width and r["seed"] == c.probe_seeds[0])
    timings["mlp"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started

    return Result(config=c, grokked=grokked, final_step=final_step, final_train_acc=float(last["train_acc"]),
                  final_test_acc=float(last["test_acc"]), picks=picks, key_frequencies=list(key),
                  analysed_frequencies=analysed,
                  norms_embed=norms_embed, norms_unembed=norms_unembed, gini_embed=gini(norms_embed[1:]),
                  gini_unembed=gini(norms_unembed[1:]),
                  gini_embed_init=gini(fourier_norms(init.W_E.detach().double()[:p], p)[1:]), planes=planes,
                  circle_ratios=ratios, residue_means=residue_means, residue_fit=residue_fit,
                  restricted_share=restricted_share, progress=progress_values, ablations=ablations, effects=effects,
                  replicates=replicates,
                  neuron_groups={k_: len(v) for k_, v in groups.items()}, concentration=concentration,
                  circuit=circuit, controls=controls, error_rates=error_rates, subsample=subsample,
                  cluster_values=cluster_values, eigen_sources=sources, mlp_runs=mlp_runs,
                  probes=probes, mlp_reference=mlp_reference, timings=timings)


def _generalised(run_, g: grokking_modadd.Config) -> bool:
    """A run generalised (within its step budget): the shared definition (:mod:`hessian_book.outcomes`, read
    through :func:`grokking_modadd.run_outcome`), as for the reference run."""
    return grokking_modadd.run_outcome(run_).generalised is not None


def _top_hessian(config: Config, run_, step: int, batch, batch_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The Hessian's top ``n_eigenvectors`` eigenpairs of ``run_`` at ``step`` on ``batch`` (stored, keyed by the
    run, the batch's name — its subsample's size and seed, or all training pairs — and the solver settings)."""
    g = config.grokking
    store = ResultStore(config.results_dir, "mechanistic_modadd_top",
                        dict(run=run_.store.key, batch=batch_name, k=config.n_eigenvectors, tol=config.lanczos_tol))
    return store.cached(f"top_{step:07d}", lambda: hessian_top_eigenpairs(
        run_.model_at(step), batch, config.n_eigenvectors, tol=config.lanczos_tol, seed=g.seed))


def _batch_name(g: grokking_modadd.Config, seed: int) -> str:
    """The name (store key) of a run's Hessian subsample (:func:`grokking_modadd.run_hessian_batch`)."""
    return f"stratified {g.hessian_samples} pairs, seed {seed + 1}"


def _test_rows(config: Config, tests: list[CircuitTest], **labels) -> list[dict]:
    rows = []
    for t in tests:
        row = dict(labels, eps=t.eps, block=t.block, key=", ".join(map(str, t.key)), clusters=t.n_clusters,
                   pairs=t.n_pairs, answer=t.answer, exact=t.exact, null_sets=t.n_draws)
        for name in CIRCUIT_TESTS:
            row[name] = t.statistic[name]
            row[f"p {name}"] = t.p_value[name]
            row[f"p Holm {name}"] = t.p_holm[name]
        rows.append(row)
    return rows


def _run_tests(config: Config, model, values, vectors, key) -> list[CircuitTest]:
    return circuit_tests(values, vectors, model, key, block=block_of_top_vectors(vectors, model),
                         eps_grid=config.eps_grid, n_draws=config.n_test_draws, seed=config.grokking.seed)


def _mechanistic_test(config: Config, main, picks: dict, analysed: list[int], batch, *,
                      progress: bool | None) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """The mechanistic test of the Hessian's top clusters (:func:`hessian_book.mechanism.circuit_tests`).

    ``circuit``: one row per (run of the recipe, pick of :data:`TEST_PICKS`, ε), each run with its own key
    frequencies (its final model's; runs without any are marked and not counted). ``controls``: the same test on
    the weight-decay-0 control run at the reference run's picks and on the untrained reference model (negative:
    must answer no), and on :func:`~hessian_book.mechanism.planted_curvature_operator` on the reference model's
    parameters at ``after`` (positive: must answer yes; with random planes: must answer no), all with the reference
    run's analysed frequencies. ``error_rates``: :func:`~hessian_book.mechanism.decision_error_rates` on the
    reference model's block. ``subsample``: the principal angles between the top eigenvectors on the Hessian
    subsample and on the whole training set, at ``after``, and the test's answers on the whole set.
    """
    c, g = config, config.grokking
    rows = []
    for spec in g.runs():
        if spec.role != "grok":
            continue
        run_ = grokking_modadd.train_run(g, spec, progress=progress)
        final = run_.model_at(run_.checkpoint_steps[-1])
        key = key_frequencies(mlp_activations(final, g.p))
        run_picks = grokking_modadd.transition_picks(run_, g)
        run_batch = grokking_modadd.run_hessian_batch(g, spec.split_seed, spec.seed)
        for pick in TEST_PICKS:
            step = run_picks[pick]
            values, vectors = _top_hessian(c, run_, step, run_batch, _batch_name(g, spec.seed))
            tests = _run_tests(c, run_.model_at(step), values, vectors, key or analysed)
            rows += _test_rows(c, tests, run=spec.label, reference=spec == g.runs()[0],
                               generalised=_generalised(run_, g), has_key=bool(key), pick=pick, step=step)
    circuit = pd.DataFrame(rows)

    control_rows = []
    ctrl_spec = g.runs()[-1]
    ctrl = grokking_modadd.train_run(g, ctrl_spec, progress=progress)
    ctrl_batch = grokking_modadd.run_hessian_batch(g, ctrl_spec.split_seed, ctrl_spec.seed)
    for pick in TEST_PICKS:
        step = picks.get(pick, grokking_modadd.transition_picks(main, g)[pick])
        values, vectors = _top_hessian(c, ctrl, step, ctrl_batch, _batch_name(g, ctrl_spec.seed))
        control_rows += _test_rows(c, _run_tests(c, ctrl.model_at(step), values, vectors, analysed),
                                   control=f"weight decay {ctrl_spec.weight_decay:g} (negative)", pick=pick,
                                   step=step, must="no")
    values, vectors = _top_hessian(c, main, 0, batch, _batch_name(g, g.seed))
    control_rows += _test_rows(c, _run_tests(c, main.model_at(0), values, vectors, analysed),
                               control="untrained (negative)", pick="init", step=0, must="no")
    after = grokking_modadd.transition_picks(main, g)["after"]
    model_after = main.model_at(after)
    planted_key = analysed[:6]                     # the planted spectrum holds at most six separated pairs
    # The planted planes' eigenpairs and the top two of the dense bulk below them (P values in [0, floor)): the
    # test needs a value past the last plane to see that plane end, but Lanczos cannot separate the bulk's members
    # to 1e-8 (at the default 20 pairs it resolved 16 within its cap), and the controls are not about the bulk.
    k_planted = 2 * len(planted_key) + 2  # whatever n_eigenvectors is: this operator's products are cheap
    for structure, name, must in ((True, "planted key planes (positive)", "yes"),
                                  (False, "planted random planes (negative)", "no")):
        op = planted_curvature_operator(model_after, planted_key, block="W_E", structure=structure, seed=g.seed)
        # max_iter: the planes are exactly two-fold degenerate, and the multiplicity check that certifies them
        # outlasts the default 1,000 products (measured: 12 of 12 pairs converged, check unfinished); with 4,000
        # it finishes (~30 s: this operator's products are cheap). A run that converges sooner is unchanged.
        values, vectors = lanczos(op, k_planted, which="largest", tol=1e-8, seed=g.seed, max_iter=4000,
                                  return_vectors=True, progress=False)
        order = np.argsort(values)[::-1]
        control_rows += _test_rows(c, circuit_tests(np.asarray(values)[order], np.asarray(vectors)[:, order],
                                                    model_after, planted_key, block="W_E", eps_grid=c.eps_grid,
                                                    n_draws=c.n_test_draws, seed=g.seed),
                                   control=name, pick="after", step=after, must=must)
    controls = pd.DataFrame(control_rows)

    values, vectors = _top_hessian(c, main, after, batch, _batch_name(g, g.seed))
    block = block_of_top_vectors(vectors, model_after)
    error_rates = dict(decision_error_rates(model_after, planted_key, block=block, k=c.n_eigenvectors,
                                            n_sims=c.n_error_sims, n_draws=c.n_test_draws, eps=c.cluster_eps,
                                            strengths=(1.0, 0.7, 0.5), seed=g.seed), block=block,
                       n_sims=c.n_error_sims, n_frequencies=len(planted_key))

    split = modular_addition_split(g.p, g.train_fraction, g.split_seed)
    full_values, full_vectors = _top_hessian(c, main, after, split["train"], "all training pairs")
    cosines = principal_cosines(vectors, full_vectors)
    full_tests = _run_tests(c, model_after, full_values, full_vectors, analysed)
    sub_tests = _run_tests(c, model_after, values, vectors, analysed)
    subsample = dict(step=after, cosines=cosines, top_ratio=float(values[0] / full_values[0]),
                     n_train=len(split["train"][1]), full_answers=[t.answer for t in full_tests],
                     sub_answers=[t.answer for t in sub_tests], same=[a.answer == b.answer for a, b in
                                                                      zip(full_tests, sub_tests)])
    return circuit, controls, error_rates, subsample


def _replicates(config: Config, data, *, progress: bool | None) -> pd.DataFrame:
    """The frequency ablation of W_E in every run of the grokking chapter's recipe (initialisations and splits; the
    reference run first), each against its own random non-key draws: one row per run."""
    g, rows = config.grokking, []
    for spec in g.runs():
        if spec.role != "grok":
            continue
        run_ = grokking_modadd.train_run(g, spec, progress=progress)
        model = run_.model_at(run_.checkpoint_steps[-1])
        key = key_frequencies(mlp_activations(model, g.p))
        analysed = list(key) or stand_in_frequencies(fourier_norms(model.W_E.detach().double()[:g.p], g.p).numpy(),
                                                     N_STAND_IN)
        a = frequency_ablation(model, analysed, data, block="W_E", n_draws=config.n_ablation_draws, seed=spec.seed)
        rows.append({"run": spec.label, "test acc %": 100 * run_.log[-1]["test_acc"],
                     "generalised": grokking_modadd.run_outcome(run_).generalised is not None,
                     "key frequencies": ", ".join(map(str, key)) or "none", "clean acc %": 100 * a.clean["accuracy"],
                     "key ablated acc %": 100 * a.key["accuracy"],
                     "random median acc %": 100 * float(np.median(a.random_accuracy)),
                     "random min acc %": 100 * float(a.random_accuracy.min()),
                     "below every draw": a.below_every_draw})
    return pd.DataFrame(rows)


def _slices(model) -> dict[str, slice]:
    from ..mechanism import block_slices

    return block_slices(model)


# ---------------------------------------------------------------------------------------------------------------
# Figures


def plot_fourier_norms(result: Result):
    """Norm of W_E's and W_U's part at each frequency (key frequencies marked), with W_E at initialisation."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), dpi=_DPI)
    k = np.arange(1, len(result.norms_embed))
    for ax, norms, title in ((axes[0], result.norms_embed, "W_E (token embedding)"),
                             (axes[1], result.norms_unembed, "W_U (unembedding)")):
        ax.bar(k, norms[1:], color=["C3" if f in result.key_frequencies else "C0" for f in k])
        ax.set(xlabel="frequency k", ylabel="norm of the frequency-k part", title=title)
    fig.tight_layout()
    return fig


def plot_key_planes(result: Result):
    """Each token's embedding projected onto the plane of each key frequency, coloured by the token."""
    import matplotlib.pyplot as plt

    ks = list(result.planes)
    n = max(len(ks), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), dpi=_DPI, squeeze=False)
    p = result.config.grokking.p
    for ax, k in zip(axes[0], ks):
        xy = result.planes[k]
        ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(p), cmap="twilight", s=12)
        ax.set(title=f"k = {k} (circle ratio {result.circle_ratios[k]:.2f})", aspect="equal")
        ax.set_xticks([]), ax.set_yticks([])
    if not ks:
        axes[0, 0].text(0.5, 0.5, "no key frequency", ha="center")
    fig.tight_layout()
    return fig


def plot_logit_dependence(result: Result):
    """The centred logits averaged over the triples with residue ``r = a + b − c mod p``, and their projection
    on the key frequencies' cos/sin(w_k r)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3), dpi=_DPI)
    r = np.arange(len(result.residue_means))
    ax.plot(r, result.residue_means, "o", ms=3, label="mean centred logit at residue r")
    ax.plot(r, result.residue_fit, "-", label="key-frequency part Σ_k α_k cos(w_k r − φ_k)")
    ax.set(xlabel="r = a + b − c mod p", ylabel="logit", title="logits as a function of a + b − c")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_frequency_ablation(result: Result):
    """Accuracy after ablating the key frequencies' subspace against the distribution over random non-key sets."""
    import matplotlib.pyplot as plt

    blocks = list(result.ablations)
    fig, axes = plt.subplots(1, max(len(blocks), 1), figsize=(5.5 * max(len(blocks), 1), 3), dpi=_DPI,
                             squeeze=False)
    for ax, block in zip(axes[0], blocks):
        a = result.ablations[block]
        ax.hist(100 * a.random_accuracy, bins=20, color="0.6", label=f"{len(a.random_accuracy)} random non-key sets")
        ax.axvline(100 * a.key["accuracy"], color="C3", label="key frequencies")
        ax.axvline(100 * a.clean["accuracy"], color="k", ls="--", label="no ablation")
        ax.set(xlabel="accuracy on all pairs (%)", ylabel="draws", title=f"ablating frequencies of {block}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_component_effects(result: Result):
    """Drop in accuracy and in the centred correct logit for each component, mean-ablated and patched
    (a → a + 1), with bootstrap intervals over input pairs."""
    import matplotlib.pyplot as plt

    e = result.effects
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.35 * len(e) + 1.5), dpi=_DPI, sharey=True)
    for ax, (value, low, high, label) in zip(axes, (("accuracy drop", "accuracy low", "accuracy high",
                                                     "accuracy drop"),
                                                    ("correct-logit drop", "logit low", "logit high",
                                                     "correct-logit drop"))):
        for offset, (mode, color) in enumerate((("mean", "C0"), ("patch", "C1"))):
            rows = e[e["mode"] == mode].reset_index(drop=True)
            y = np.arange(len(rows)) + 0.2 * (offset - 0.5)
            ax.errorbar(rows[value], y, xerr=[rows[value] - rows[low], rows[high] - rows[value]], fmt="o",
                        color=color, label="mean-ablation" if mode == "mean" else "patching a → a + 1")
            ax.set_yticks(np.arange(len(rows)), rows["component"])
        ax.axvline(0, color="k", lw=0.5)
        ax.set(xlabel=label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_concentration(result: Result):
    """Share of the top eigenvectors' W_E / W_U weight in the key frequencies' subspace, per matrix and pick,
    against the random-subspace null (median and 95th percentile)."""
    import matplotlib.pyplot as plt

    c = result.concentration
    c = c[c.end == "top"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), dpi=_DPI, sharey=True)
    picks = list(result.config.picks)
    for ax, block in zip(axes, ("W_E", "W_U")):
        for i, m in enumerate(result.config.matrices):
            rows = c[(c.matrix == m) & (c.block == block)].set_index("pick").reindex(picks)
            x = np.arange(len(picks)) + 0.15 * (i - 1.5)
            ax.plot(x, 100 * rows.share, "o", color=f"C{i}", label=m.replace("_", " "))
            ax.vlines(x, 0, 100 * rows.null_q95, color=f"C{i}", alpha=0.3, lw=4)
        ax.set_xticks(np.arange(len(picks)), [f"{pk}\n(step {result.picks[pk]})" for pk in picks])
        ax.set(ylabel="% of the block's weight in key frequencies", title=f"top eigenvectors in {block} "
               "(bars: null up to its 95th percentile)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_top_clusters(result: Result):
    """The top eigenvalues of each matrix at the answer pick, coloured by their vector's dominant frequency
    (key frequencies in colour, others grey), with the ε-cluster boundaries."""
    import matplotlib.pyplot as plt

    pick = result.answer_pick()
    ms = [m for m in result.config.matrices if (pick, m) in result.cluster_values]
    fig, axes = plt.subplots(1, len(ms), figsize=(3.6 * len(ms), 3.2), dpi=_DPI, squeeze=False)
    palette = {k: f"C{i % 10}" for i, k in enumerate(result.analysed_frequencies)}
    for ax, m in zip(axes[0], ms):
        v = result.cluster_values[pick, m]
        x = np.arange(len(v["values"]))
        colors = [palette.get(int(f), "0.7") for f in v["dominant"]]
        ax.scatter(x, v["values"], c=colors, s=18)
        for i in np.flatnonzero(np.diff(v["labels"]) != 0):
            ax.axvline(i + 0.5, color="k", lw=0.4, ls=":")
        ax.set(yscale="log" if (v["values"] > 0).all() else "linear", xlabel="rank",
               title=f"{m.replace('_', ' ')} at {pick}")
    axes[0, 0].set_ylabel("eigenvalue")
    fig.tight_layout()
    return fig


def plot_mlp_fourier(result: Result):
    """Fourier norms of the reference MLP's first-layer token embedding (of a), key frequencies marked."""
    import matplotlib.pyplot as plt

    ref = result.mlp_reference
    fig, ax = plt.subplots(figsize=(8, 3), dpi=_DPI)
    if "norms_a" in ref:
        norms = ref["norms_a"]
        k = np.arange(1, len(norms))
        keys = set(ref["key_frequencies"].get("hidden 1", []))
        ax.bar(k, norms[1:], color=["C3" if f in keys else "C0" for f in k])
    ax.set(xlabel="frequency k", ylabel="norm", title=f"MLP width {ref.get('width')}, seed {ref.get('seed')}: "
           "first layer's embedding of a by frequency")
    fig.tight_layout()
    return fig


def plot_probes(result: Result):
    """Held-out probe accuracy per concept and layer against width: trained network (mean over seeds, min as the
    lower whisker), at initialisation and with shuffled labels (max over seeds), and chance."""
    import matplotlib.pyplot as plt

    pr = result.probes
    concepts = list(CONCEPTS)
    layers = list(dict.fromkeys(pr.layer))
    fig, axes = plt.subplots(len(concepts), len(layers), figsize=(3 * len(layers), 2.6 * len(concepts)), dpi=_DPI,
                             sharex=True, sharey="row", squeeze=False)
    for i, concept in enumerate(concepts):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            rows = pr[(pr.concept == concept) & (pr.layer == layer)].sort_values("width")
            ax.plot(rows.width, 100 * rows.trained, "o-", label="trained")
            ax.plot(rows.width, 100 * rows.at_init_max, "s--", label="at init (max)")
            ax.plot(rows.width, 100 * rows.shuffled_max, "^:", label="shuffled labels (max)")
            ax.plot(rows.width, 100 * rows.chance, color="0.5", lw=0.8, label="chance")
            ax.set(xscale="log", title=f"{concept}\n{layer}" if i == 0 else layer)
            if j == 0:
                ax.set_ylabel(f"{concept}\nheld-out acc. %")
            if i == len(concepts) - 1:
                ax.set_xlabel("width")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig
