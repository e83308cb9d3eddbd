"""What a chapter will cost before it runs: an estimate of its wall time from its parameters.

``estimate(name, config)`` counts the unit operations a chapter's ``run`` performs at ``config`` (training steps,
checkpoints analysed, exact Hessians, dense eigendecompositions, Fiedler trees, each training call's fixed cost of
compiling its step, ...) and prices each with the unit costs that ``benchmarks/bench_cost_units.py`` measured
once (``benchmarks/cost_units.json``), in seconds at the *reference speed* (:mod:`hessian_book.calibration`:
12 ms per step of the grokking transformer). Work a chapter fans out over worker processes
(:mod:`hessian_book.fanout`, two on this machine) is scheduled as a pool does: each task, in the chapter's order,
goes to the first free worker; the estimate is that schedule's length.

How each unit's cost grows with size (its *work*) is written beside it in the JSON; a unit measured at two sizes
is the line through them, one measured at one size is proportional to its work. What is *not* modelled: notebook
start-up, figures and statistics (seconds to a minute per chapter; the mechanistic test's nulls and simulated
error rates are priced), the spread of Lanczos iteration counts over training (a unit was measured at one
checkpoint, of a model trained briefly: a trained model's solves can take far longer), and anything a chapter
reads from another's stores (a dependency is assumed recorded first, as ``book/build.py`` orders them).

Training that stops early (:class:`hessian_book.outcomes.StopRule`: a run stops ``max(2,000, g/4)`` steps after
it generalises at step ``g``, capped at ``n_steps``) needs its end step before the run: it is read from the run's
stored log when that log already reaches the stop or the cap (:func:`_stored_end`), else the grokking runs take
``g`` from a stated prior (:data:`GROKKING_PRIOR`, the recorded runs' range) and the depth runs their cap;
:attr:`Estimate.steps_source` says which.

Budgets (issue 18; wall time on 2 cores at the reference speed): :data:`record.GOAL_MINUTES`.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import BOOK_GOAL_MINUTES, GOAL_MINUTES, ROOT  # noqa: E402

UNITS_FILE = ROOT / "benchmarks" / "cost_units.json"
WORKERS = 2  # local worker processes of hessian_book.fanout on this machine (one per core)
# The grokking recipe's generalisation steps when no run log exists yet; runs are placed evenly over the range.
# Measured: the eight runs of the default recipe in the records of 1 and 2 December (bitwise equal) generalised at
# 4,900-17,200 steps (median 9,400). (Issue 18 stated 4,500-21,500 for the runs made before the recipe was fixed.)
GROKKING_PRIOR = (4900, 17200)

__all__ = ["Units", "load_units", "Estimate", "estimate", "ESTIMATORS", "makespan", "UNITS_FILE", "WORKERS",
           "GROKKING_PRIOR", "chapter_config", "book_budget_minutes"]


@dataclass(frozen=True)
class Units:
    """Unit costs at the reference speed: ``units[name] = [{"work": w, "seconds": s, ...}, ...]``."""

    points: dict[str, list[dict[str, Any]]]

    def line(self, name: str) -> tuple[float, float]:
        """``(a, b)`` of ``seconds = a + b * work``: least squares through two or more points, proportional
        through one."""
        if name not in self.points:
            raise KeyError(f"no unit {name!r} in the cost units (rerun benchmarks/bench_cost_units.py)")
        pts = self.points[name]
        if len(pts) == 1:
            return 0.0, pts[0]["seconds"] / pts[0]["work"]
        n = len(pts)
        mx = sum(p["work"] for p in pts) / n
        my = sum(p["seconds"] for p in pts) / n
        sxx = sum((p["work"] - mx) ** 2 for p in pts)
        b = sum((p["work"] - mx) * (p["seconds"] - my) for p in pts) / sxx if sxx else 0.0
        return my - b * mx, b

    def __call__(self, name: str, work: float = 1.0) -> float:
        """Seconds at the reference speed of one ``name`` operation of size ``work`` (never negative)."""
        a, b = self.line(name)
        return max(a + b * work, 0.0)

    def optional(self, name: str, work: float = 1.0) -> float:
        """As calling it, but 0 for a unit the cost file does not have (an older file)."""
        return self(name, work) if name in self.points else 0.0


def load_units(path: Path | None = None) -> Units:
    """The unit costs in ``path`` (default :data:`UNITS_FILE`)."""
    return Units(json.loads(Path(path or UNITS_FILE).read_text())["units"])


def makespan(tasks: Sequence[float], workers: int) -> float:
    """The wall time of ``tasks`` (seconds each, in submission order) on ``workers`` processes that each take the
    next task when free."""
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    free = [0.0] * workers
    for t in tasks:
        i = min(range(workers), key=free.__getitem__)
        free[i] += t
    return max(free) if tasks else 0.0


@dataclass(frozen=True)
class Estimate:
    """A chapter's estimated wall time at the reference speed.

    Attributes:
        name: the chapter.
        seconds: the estimate (wall time, at the reference speed, with the chapter's worker processes).
        parts: wall seconds per phase (they add up to ``seconds``).
        steps_source: where expected training lengths came from (``""`` when the chapter trains fixed lengths).
        budget_minutes: the chapter's budget (None: none stated).
    """

    name: str
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    steps_source: str = ""
    budget_minutes: float | None = None

    @property
    def within_budget(self) -> bool | None:
        return None if self.budget_minutes is None else self.seconds <= 60 * self.budget_minutes

    def text(self, speed_factor: float | None = None) -> str:
        """``"est. 12.3 min (ref.; 20.1 min at the measured speed), budget 15: within"``."""
        now = f"; {_clock(self.seconds * speed_factor)} at the measured speed" if speed_factor else ""
        budget = ("no budget" if self.budget_minutes is None else
                  f"budget {self.budget_minutes:g} min: {'within' if self.within_budget else 'OVER'}")
        source = f" [{self.steps_source}]" if self.steps_source else ""
        return f"est. {_clock(self.seconds)} at the reference speed{now}, {budget}{source}"


def _clock(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def chapter_config(name: str, parameters: dict[str, Any] | None = None):
    """The chapter's ``Config`` at its notebook's parameters cell plus ``parameters`` (as the notebook builds
    it); ``results_dir`` is resolved against ``notebooks/`` and never made a temporary folder here."""
    import importlib

    import record as rec

    module = importlib.import_module(f"hessian_book.chapters.{name}")
    values = {**rec.parameter_defaults(rec.read_source(name)), **(parameters or {})}
    results_dir = values.get("results_dir", "../results")
    values["results_dir"] = str((rec.NOTEBOOKS / results_dir).resolve()) if results_dir else "/nonexistent"
    return module.Config.from_parameters(values)


def estimate(name: str, config=None, *, units: Units | None = None, parameters: dict[str, Any] | None = None
             ) -> Estimate:
    """The estimate of chapter ``name`` at ``config`` (default: :func:`chapter_config` with ``parameters``)."""
    if name not in ESTIMATORS:
        raise KeyError(f"no cost model for {name!r}; chapters: {sorted(ESTIMATORS)}")
    config = chapter_config(name, parameters) if config is None else config
    units = load_units() if units is None else units
    parts, source = ESTIMATORS[name](config, units)
    return Estimate(name=name, seconds=float(sum(parts.values())), parts={k: float(v) for k, v in parts.items()},
                    steps_source=source, budget_minutes=GOAL_MINUTES.get(name))


def book_budget_minutes() -> float:
    return BOOK_GOAL_MINUTES


# ---------------------------------------------------------------------------------------------------------------
# LeNet-tiny on MNIST

_LENET_P = 5994
_MNIST_TRAIN, _MNIST_TEST = 60000, 10000


def _workers(config) -> int:
    return 1 if getattr(config, "scheduler", None) == "serial" else WORKERS


def _lenet_hessian(u: Units, n: int) -> float:
    return u("lenet_hessian", n)


def _core_checks(c, u: Units) -> tuple[dict[str, float], str]:
    P3 = _LENET_P ** 3
    return {"train": c.train_steps * u("lenet_sgd_step"),
            "hessian": _lenet_hessian(u, c.n_images),
            "rows": c.n_check_rows / 100 * u("lenet_top_eigenvalue") * c.n_images / 50,
            # the chapter's eigendecomposition and numpy's eigvalsh, its independent reference
            "eig": u("eigendecomposition", P3) + u("numpy_eigvalsh", P3),
            "lanczos": c.lanczos_k / 20 * u("lenet_lanczos_k20") * c.n_images / 50}, ""


def _mnist_tasks(c, u: Units) -> tuple[float, list[float]]:
    """(training seconds, the Hessian tasks' seconds in the chapter's order)."""
    from hessian_book.chapters.mnist_lenet import _CHUNK, _DRAWS_PER_TASK, plan
    from hessian_book.training import mnist_checkpoint_steps

    n_images = c.n_train or _MNIST_TRAIN
    per_epoch = -(-n_images // c.batch_size)
    checkpoints = mnist_checkpoint_steps(per_epoch, c.epochs)
    train = (c.epochs * per_epoch * u("lenet_sgd_step")
             + len(checkpoints) * (n_images + (c.n_test or _MNIST_TEST)) * u("lenet_forward"))
    P3 = _LENET_P ** 3
    where = plan(c, checkpoints)
    final = checkpoints[-1]
    spectrum = _lenet_hessian(u, c.hessian_samples) + u("eigendecomposition", P3)
    top = u("lenet_top_eigenvalue") * c.hessian_samples / 50
    dense_draw = _lenet_hessian(u, c.hessian_samples) + u("eigvalsh", P3) + top
    sizes = sum(_lenet_hessian(u, min(_CHUNK, c.subsample_sizes[-1] - s))
                + u("lenet_gauss_newton", min(_CHUNK, c.subsample_sizes[-1] - s))
                for s in range(0, c.subsample_sizes[-1], _CHUNK)) + 2 * len(c.subsample_sizes) * u("eigvalsh", P3)
    n_dense = min(c.n_dense_draws, c.n_draws)
    tasks = [sizes]
    tasks += [dense_draw * len(range(i, min(i + _DRAWS_PER_TASK, n_dense))) for i in range(0, n_dense, _DRAWS_PER_TASK)]
    from_sizes = c.compare_samples in c.subsample_sizes
    tasks += [_lenet_hessian(u, c.compare_samples) + u("eigendecomposition", P3)
              for s in where["compare"] if not (s == final and from_sizes)]
    tasks += [spectrum] * len(checkpoints)
    for s in where["draws"]:
        n = c.n_draws - (n_dense if s == final else 0)
        if n:
            tasks.append(n * top)
    return train, tasks


def _mnist_lenet(c, u: Units) -> tuple[dict[str, float], str]:
    train, tasks = _mnist_tasks(c, u)
    return {"train": train, "hessian tasks": makespan(tasks, _workers(c))}, ""


def _fiedler_lenet(c, u: Units) -> tuple[dict[str, float], str]:
    from hessian_book.models import ModAddTransformer, n_parameters

    m, g = c.mnist, c.grokking
    n_lenet = len(set(c.checkpoint_indices))
    draws = len(set(c.stability_indices)) * c.stability_draws
    P = n_parameters(ModAddTransformer(g.p, g.d_model, g.n_heads, g.d_mlp, g.seed))
    # the LeNet tree units include a 50-image Hessian: swap it for one on hessian_samples images
    hessian = _lenet_hessian(u, m.hessian_samples) - _lenet_hessian(u, 50)
    transformer = 2 * (u("transformer_hessian", g.hessian_samples * P * P) + u("transformer_tree", P * P))
    return {"lenet trees": n_lenet * max(u("lenet_trees") + hessian, 0.0),
            "subsample draws": draws * max(u("lenet_draw_tree") + hessian, 0.0),
            "transformer trees": transformer}, ""


# ---------------------------------------------------------------------------------------------------------------
# The grokking transformer


def _transformer_size(g, d_model=None, n_heads=None, d_mlp=None) -> tuple[int, int]:
    """(P, training pairs) of the grokking transformer of config ``g`` (or of a recipe candidate)."""
    from hessian_book.models import ModAddTransformer, n_parameters

    model = ModAddTransformer(g.p, d_model or g.d_model, n_heads or g.n_heads,
                              g.d_mlp if d_mlp is None and d_model is None else d_mlp, g.seed)
    return n_parameters(model), round(g.train_fraction * g.p * g.p)


def _stop_rule(config):
    """The stop rule the chapter's runs train with (the chapter's own ``stop_rule``), or None when every run
    trains to ``n_steps``."""
    import importlib

    module = importlib.import_module(type(config).__module__)
    if hasattr(config, "stop_rule") and callable(config.stop_rule):
        return config.stop_rule()
    if callable(getattr(module, "stop_rule", None)):
        return module.stop_rule(config)
    return None


def _stored_end(root: str, experiment: str, fields: dict[str, Any], rule, cap: int) -> int | None:
    """Where a run stops (the rule's stop step, else the cap), read from its stored log when that log already
    reaches the stop or the cap; ``None`` without such a log (the run has not been trained that far)."""
    from hessian_book.store import ResultStore

    try:
        found = ResultStore.find(root, experiment, **fields)
    except OSError:
        return None
    for store in found:
        names = [n for n in store.names() if n.startswith("checkpoint_")]
        if not names:
            continue
        try:
            log = store.load(names[-1])["log"]
        except Exception:  # noqa: BLE001 - an unreadable store is simply no evidence
            continue
        steps, test = [int(r["step"]) for r in log], [float(r["test_acc"]) for r in log]
        stop = rule.stop_step(steps, test) if rule is not None else None
        if stop is not None and stop <= cap:
            return stop
        if steps[-1] >= cap:
            return cap
    return None


def _expected_steps(config, specs, rule) -> tuple[list[int], list[int | None], str]:
    """Training steps of each grokking run of ``specs`` (the control matched to the longest run of the recipe),
    their generalisation steps where assumed (None where read from a log or not needed), and where they came
    from: the runs' stored logs, else :data:`GROKKING_PRIOR` (run ``i`` of ``n`` generalises at the
    ``(i + 1/2)/n`` point of the range) with the rule's margin."""
    grok = [s for s in specs if s.role == "grok"]
    if rule is None:
        return [config.n_steps] * len(specs), [None] * len(specs), "every run trains n_steps (no stop rule)"
    low, high = GROKKING_PRIOR
    steps, gs, sources = [], [], set()
    for i, spec in enumerate(grok):
        fields = dict(p=config.p, seed=spec.seed, split_seed=spec.split_seed, weight_decay=spec.weight_decay,
                      d_model=config.d_model, n_heads=config.n_heads, d_mlp=config.d_mlp, lr=config.lr)
        end = _stored_end(config.results_dir, "grokking_modadd", fields, rule, config.n_steps)
        if end is not None:
            steps.append(end)
            gs.append(None)
            sources.add("run logs")
        else:
            g = round(low + (high - low) * (i + 0.5) / len(grok))
            steps.append(min(config.n_steps, g + rule.margin(g)))
            gs.append(g)
            sources.add(f"prior: generalised at {low:,}–{high:,}")
    longest = -(-max(steps) // config.log_every) * config.log_every if steps else config.n_steps
    out = [steps[grok.index(s)] if s.role == "grok" else longest for s in specs]
    g_out = [gs[grok.index(s)] if s.role == "grok" else None for s in specs]
    return out, g_out, "steps from " + " + ".join(sorted(sources))


def _run_checkpoints(config, n_steps: int, g: int | None, *, generalises: bool = True) -> tuple[int, int]:
    """(checkpoints analysed, steps re-run for the dense transition) of one run that ends at ``n_steps`` and
    generalises at ``g`` (None: at ``n_steps`` minus the rule's smallest margin when it stopped before its cap;
    never when ``generalises`` is False, e.g. the control without weight decay). The transition window is taken
    as the ``refine_every`` steps before ``g``."""
    import importlib

    module = importlib.import_module(type(config).__module__)
    try:
        schedule = module.checkpoint_steps(config, n_steps)
    except TypeError:  # a schedule without an end step
        schedule = sorted({s for s in module.checkpoint_steps(config) if s <= n_steps} | {n_steps})
    if not generalises:
        return len(schedule), 0
    if g is None:
        margin = getattr(config, "stop_min_margin", None)
        g = n_steps - margin if margin and n_steps < config.n_steps else None
    if g is None or g <= 0:
        return len(schedule), 0
    where = module.refinement_steps(schedule, {"start": max(g - config.refine_every, 0), "end": g},
                                    config.refine_every)
    if where is None:
        return len(schedule), 0
    resume, steps = where
    return len(set(schedule) | set(steps)), steps[-1] - resume


def _tol_factor(tol: float) -> float:
    """Lanczos cost at relative residual tolerance ``tol`` against the unit's 1e-6: HVPs grow about linearly in
    log(1/tol) (measured on the grokking transformer at steps 200-2,000: 1e-4 took 0.55x the HVPs of 1e-6)."""
    return min(1.5, max(0.3, 1.0 - 0.225 * (math.log10(tol) + 6.0)))


def _grokking_parts(c, u: Units) -> tuple[dict[str, float], str, dict[str, float]]:
    from hessian_book.chapters import grokking_modadd as chapter

    P, n_train = _transformer_size(c)
    step = u("transformer_step", n_train * P)
    per_checkpoint = (u("transformer_lanczos", c.hessian_samples * P * c.lanczos_k) * _tol_factor(c.lanczos_tol)
                      + u("transformer_slq", c.hessian_samples * P * c.slq_probes * c.slq_steps)
                      + u("transformer_progress", c.p * c.p * P))
    specs = c.runs()
    steps, gs, source = _expected_steps(c, specs, _stop_rule(c))
    tasks = {"grok": [], "control": []}
    details = {"train": 0.0, "analysis": 0.0}
    for spec, n, g in zip(specs, steps, gs):
        # the control (without weight decay) is assumed not to generalise: no transition to re-run
        n_ckpt, refine = _run_checkpoints(c, n, g, generalises=spec.role != "control")
        tasks["control" if spec.role == "control" else "grok"].append((n + refine) * step + n_ckpt * per_checkpoint)
        details["train"] += (n + refine) * step
        details["analysis"] += n_ckpt * per_checkpoint
    candidates = chapter.recipe_candidates(c) if hasattr(chapter, "recipe_candidates") else c.recipe_configs
    # a candidate trains recipe_steps (its stop rule, if any, fires only after it generalises: not assumed)
    recipe_tasks = [c.recipe_steps * u("transformer_step", n_train * _transformer_size(c, d, h, m)[0])
                    for d, h, m, _ in candidates]
    workers = _workers(c)
    # compiling a training step: once per architecture in each worker process (torch caches it in the process)
    architectures = {(c.d_model, c.n_heads, c.d_mlp)} | {(d, h, m) for d, h, m, _ in candidates}
    compiling = sum(u.optional("transformer_first_call", n_train * _transformer_size(c, d, h, m)[0])
                    for d, h, m in architectures)
    details["train"] += workers * compiling
    dense = len(set(c.dense_picks))  # picks may coincide; at most this many
    dense_task = u("transformer_hessian", c.hessian_samples * P * P) + u("eigendecomposition", P ** 3)
    fullset_task = u("transformer_lanczos", n_train * P * c.lanczos_k) * _tol_factor(c.lanczos_tol)
    # three eigenvalues (λ_max, λ_min, preconditioned λ_max) on the training set, one Lanczos unit of k = 3 each
    spike_task = (c.spike_span * step
                  + (c.spike_span // c.spike_every + 1) * u("transformer_lanczos", n_train * P * 3)
                  * _tol_factor(c.spike_tol))
    # the control's cap is known once the recipe's runs have ended: it runs in the second round (as the chapter
    # does; a chapter that runs it in the first round is estimated the same way when its runs end first)
    first = makespan(tasks["grok"] + recipe_tasks, workers)
    second = makespan(tasks["control"] + [dense_task] * dense + [fullset_task] * dense + [spike_task], workers)
    return ({"compiling the training steps": compiling, "runs of the recipe and the candidates": first,
             "control and the reference run's extras": second},
            source, {**details, "recipes": sum(recipe_tasks), "dense": dense * dense_task})


def _grokking_modadd(c, u: Units) -> tuple[dict[str, float], str]:
    parts, source, _ = _grokking_parts(c, u)
    return parts, source


def _mechanistic_modadd(c, u: Units) -> tuple[dict[str, float], str]:
    from hessian_book.chapters.mechanistic_modadd import TEST_PICKS
    from hessian_book.models import ModAddMLP, n_parameters

    g, d = c.grokking, c.depth
    P, n_train = _transformer_size(g)
    k = c.n_eigenvectors
    # a forward pass over all p² pairs: a third of a training step's forward, backward and update on them
    forward = u("transformer_step", g.p * g.p * P) / 3
    # curvature eigenpairs, each as the chapter calls it (bench_cost_units.py: mechanistic_<matrix>); the Hessian at
    # a pick the grokking chapter computed densely is read from its store. The units were measured on a model
    # trained 300 steps: at a model that fits its training set (train loss ~1e-7) the Hessian's Lanczos can reach its
    # cap and fall back to a dense solve (measured at the smoke preset's final state: 10,888 products, ~140 s at the
    # reference speed, against 1.4 s here), which this does not foresee
    work = g.hessian_samples * P * k
    curvature = sum(u(f"mechanistic_{m}", work) for pick in c.picks for m in c.matrices
                    if not (m == "hessian" and pick in g.dense_picks))
    n_grok = sum(s.role == "grok" for s in g.runs())
    # the mechanistic test: the top eigenpairs of every run of the recipe at each test pick, of the control at those
    # picks and of the untrained model, and on the whole training set at "after" (the reference run's "after" on
    # its subsample is one of the first); each read by circuit_tests (one test per ε), as are the two planted
    # controls (one Lanczos each); then the decision's error rates, four simulated tests per simulation (the null
    # and three strengths)
    n_top = (n_grok + 1) * len(TEST_PICKS) + 1
    test_calls = (n_top + 4) * len(c.eps_grid)  # and the two planted controls, the whole set and its subsample
    test = (n_top * u("mechanistic_top", work) + u("mechanistic_top", n_train * P * k)
            + 2 * u("mechanistic_planted", P) + test_calls * u("mechanistic_circuit_test")
            + 4 * c.n_error_sims * u("mechanistic_error_sim", c.n_test_draws))
    # ablations: per pick and matrix the cluster's (and its random nulls' where the chapter has them), the key and
    # random frequency sets of W_E and W_U, and W_E's in every run of the recipe
    forwards = (len(c.picks) * len(c.matrices) * (getattr(c, "n_ablation_null", 0) + 2)
                + (2 + n_grok) * (c.n_ablation_draws + 2))
    mlp_tasks, sources = [], set()
    n_mlp = round(d.train_fraction * d.p * d.p)
    recipe, rule = c.probe_recipe(), _stop_rule(d)
    for w in sorted(c.probe_widths, reverse=True):
        for s in c.probe_seeds:
            if c.probe_depth in d.depths and w == d.width and s in d.seeds:
                continue  # the depth chapter's run, read from its store
            # a run stops by the depth chapter's rule: its end from its stored log, else the cap
            fields = {name: recipe[name] for name in ("p", "depth", "train_fraction", "split_seed", "lr",
                                                       "weight_decay")} | dict(width=w, seed=s)
            end = _stored_end(c.results_dir, "mechanistic_modadd_mlp", fields, rule, d.n_steps)
            sources.add("run logs" if end is not None else "the cap n_steps")
            P_w = n_parameters(ModAddMLP(d.p, c.probe_depth, w, d.input_encoding, s))
            mlp_tasks.append((d.n_steps if end is None else end) * u("mlp_step", n_mlp * P_w))
    compiling = sum(u.optional("mlp_first_call", n_mlp * n_parameters(ModAddMLP(d.p, c.probe_depth, w,
                                                                                 d.input_encoding, 0)))
                    for w in set(c.probe_widths))  # once per architecture (in each worker; the pool's length)
    source = ("MLP runs: steps from " + " + ".join(sorted(sources))) if sources else ""
    return {"circuit and causal checks": forwards * forward, "curvature eigenpairs": curvature,
            "mechanistic test": test, "MLP runs": makespan(mlp_tasks, _workers(c)) + compiling}, source


def _mlp_depth_modadd(c, u: Units) -> tuple[dict[str, float], str]:
    from hessian_book.models import ModAddMLP, n_parameters

    rule = _stop_rule(c)
    tasks, sources = [], set()
    for t in c.tasks():
        P = n_parameters(ModAddMLP(c.p, t["depth"], c.width, c.input_encoding, t["seed"]))
        n = round(t["train_fraction"] * c.p * c.p)
        fields = dict(p=c.p, depth=t["depth"], width=c.width, seed=t["seed"], train_fraction=t["train_fraction"],
                      lr=c.lr, weight_decay=c.weight_decay)
        end = _stored_end(c.results_dir, "mlp_depth_modadd", fields, rule, c.n_steps)
        sources.add("run logs" if end is not None else "the cap n_steps (no prior for when the depth runs "
                    "generalise)" if rule is not None else "n_steps (no stop rule)")
        end = c.n_steps if end is None else end
        hessians = (end // t["hessian_every"] + 1) if t["hessian_every"] else 1
        extremes = u("mlp_hessian_extremes", n * P)
        # the top-k Lanczos at the end: about k/3 extremes calls (each finds three eigenvalues)
        tasks.append(end * u("mlp_step", n * P) + hessians * extremes + t["top_k"] / 3 * extremes)
    # compiling the training step: once per architecture (depth) in each worker process
    compiling = sum(u.optional("mlp_first_call", round(c.train_fraction * c.p * c.p)
                               * n_parameters(ModAddMLP(c.p, d, c.width, c.input_encoding, 0)))
                    for d in set(c.depths))
    return ({"compiling the training steps": compiling, "runs": makespan(tasks, _workers(c))},
            "steps from " + " + ".join(sorted(sources)))


ESTIMATORS = {"core_checks": _core_checks, "mnist_lenet": _mnist_lenet, "fiedler_lenet": _fiedler_lenet,
              "grokking_modadd": _grokking_modadd, "mechanistic_modadd": _mechanistic_modadd,
              "mlp_depth_modadd": _mlp_depth_modadd}


if __name__ == "__main__":  # every chapter's estimate at its notebook's defaults, by phase
    import record as rec

    total = 0.0
    for chapter in rec.book_chapters():
        e = estimate(chapter)
        total += e.seconds
        print(f"{chapter:<20} {e.text()}; " + ", ".join(f"{k} {_clock(v)}" for k, v in e.parts.items()))
    print(f"{'whole book':<20} est. {_clock(total)} at the reference speed, budget {BOOK_GOAL_MINUTES} min: "
          f"{'within' if total <= 60 * BOOK_GOAL_MINUTES else 'OVER'}")
