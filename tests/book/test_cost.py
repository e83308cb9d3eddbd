"""book/cost.py: the unit-cost fit, the worker-pool schedule, and that each chapter's estimate follows its parameters
(more work costs more, a stop rule costs less), with the committed unit costs at the defaults."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import cost  # noqa: E402
import record as rec  # noqa: E402

from hessian_book.chapters import grokking_modadd, mechanistic_modadd, mlp_depth_modadd, mnist_lenet  # noqa: E402


def test_a_unit_is_the_line_through_its_points_or_proportional_to_one():
    units = cost.Units({"two": [{"work": 10.0, "seconds": 2.0}, {"work": 30.0, "seconds": 4.0}],
                        "one": [{"work": 4.0, "seconds": 2.0}]})
    assert units.line("two") == pytest.approx((1.0, 0.1))
    assert units("two", 50.0) == pytest.approx(6.0)
    assert units("one", 10.0) == pytest.approx(5.0) and units("one", 0.0) == 0.0
    falling = cost.Units({"u": [{"work": 1.0, "seconds": 5.0}, {"work": 2.0, "seconds": 1.0}]})
    assert falling("u", 100.0) == 0.0  # never negative
    with pytest.raises(KeyError, match="bench_cost_units"):
        units("missing")


def test_a_pool_of_workers_takes_tasks_in_order():
    assert cost.makespan([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 | 3+2
    assert cost.makespan([5, 1, 1, 1], 2) == 5
    assert cost.makespan([1, 2, 3], 1) == 6 and cost.makespan([], 2) == 0
    with pytest.raises(ValueError, match="workers"):
        cost.makespan([1], 0)


@pytest.fixture(scope="module")
def units():
    """Unit costs with every unit the model uses (synthetic: the model's logic, not the machine, is tested)."""
    names = ["transformer_step", "transformer_lanczos", "transformer_slq", "transformer_progress",
             "transformer_hessian", "transformer_tree", "eigendecomposition", "eigvalsh", "lenet_sgd_step",
             "lenet_forward", "lenet_hessian", "lenet_gauss_newton", "lenet_top_eigenvalue", "lenet_lanczos_k20",
             "lenet_trees", "lenet_draw_tree", "mlp_step", "mlp_hessian_extremes", "numpy_eigvalsh",
             "mechanistic_hessian", "mechanistic_gauss_newton", "mechanistic_block_hessian",
             "mechanistic_gradient_covariance", "mechanistic_top", "mechanistic_circuit_test",
             "mechanistic_error_sim", "mechanistic_planted"]
    return cost.Units({n: [{"work": 1e6, "seconds": 1e-3 * (i + 1)}] for i, n in enumerate(names)})


def grok(**kw):
    return grokking_modadd.Config(**{"results_dir": "/nonexistent", **kw})


def test_grokking_estimate_grows_with_runs_steps_and_checkpoints(units, monkeypatch):
    base = cost.estimate("grokking_modadd", grok(), units=units)
    assert base.seconds > 0 and math.isclose(base.seconds, sum(base.parts.values()))
    assert base.budget_minutes == rec.GOAL_MINUTES["grokking_modadd"]
    more_runs = cost.estimate("grokking_modadd", grok(n_replicates=9), units=units)
    assert more_runs.seconds > base.seconds
    serial = cost.estimate("grokking_modadd", grok(scheduler="serial"), units=units)
    assert serial.seconds > base.seconds  # one process instead of two
    _, _, work = cost._grokking_parts(grok(), units)
    _, _, denser = cost._grokking_parts(grok(n_log_checkpoints=80), units)
    assert denser["analysis"] > work["analysis"] and denser["train"] == pytest.approx(work["train"], rel=0.05)
    monkeypatch.setattr(cost, "_stop_rule", lambda config: None)  # every run to its cap
    capped = cost.estimate("grokking_modadd", grok(), units=units)
    assert cost.estimate("grokking_modadd", grok(n_steps=60000, log_grid_end=60000), units=units).seconds \
        > capped.seconds


def test_a_stop_rule_shortens_training_from_the_prior_and_says_so(units, monkeypatch):
    rule = grokking_modadd.stop_rule(grok())
    stopped = cost.estimate("grokking_modadd", grok(), units=units)
    assert "prior" in stopped.steps_source
    specs = grok().runs()
    steps, gs, _ = cost._expected_steps(grok(), specs, rule)
    low, high = cost.GROKKING_PRIOR
    assert all(low <= g <= high for g in gs[:-1]) and gs[-1] is None
    assert steps[:-1] == [min(40000, g + rule.margin(g)) for g in gs[:-1]]
    assert steps[-1] >= max(steps[:-1])  # the control: as long as the longest run of the recipe
    monkeypatch.setattr(cost, "_stop_rule", lambda config: None)
    plain = cost.estimate("grokking_modadd", grok(), units=units)
    assert "no stop rule" in plain.steps_source and plain.seconds > stopped.seconds


def test_a_stored_log_replaces_the_prior(tmp_path, units):
    from hessian_book.store import ResultStore
    from hessian_book.training import checkpoint_name

    c = grok(results_dir=str(tmp_path), n_replicates=1)
    rule = grokking_modadd.stop_rule(c)
    for spec, g in zip(c.runs()[:2], (3000, 9000)):  # both runs of the recipe generalise early
        store = ResultStore(str(tmp_path), "grokking_modadd", dict(
            p=c.p, seed=spec.seed, split_seed=spec.split_seed, weight_decay=spec.weight_decay, d_model=c.d_model,
            n_heads=c.n_heads, d_mlp=c.d_mlp, lr=c.lr))
        log = [{"step": s, "train_acc": 1.0, "test_acc": 1.0 if s >= g else 0.1} for s in range(0, 20001, 100)]
        store.save(checkpoint_name(20000), {"log": log})
    steps, gs, source = cost._expected_steps(c, c.runs(), rule)
    assert source == "steps from run logs" and gs == [None, None, None]
    # the rule stops at the first logged step (every 100) at least the margin after g
    assert steps[:2] == [3000 + 2000, 11300] and steps[2] == steps[1]
def test_mnist_estimate_counts_its_hessian_tasks(units):
    c = mnist_lenet.Config(results_dir="/nonexistent")
    train, tasks = cost._mnist_tasks(c, units)
    # 25 checkpoint spectra, 2 compare (one read from the sizes), 20 dense draws in groups of 4, 3 Lanczos-draw
    # tasks, the sizes
    assert len(tasks) == 25 + 1 + 5 + 3 + 1 and train > 0
    fewer = cost.estimate("mnist_lenet", dataclasses.replace(c, n_draws=10, n_dense_draws=4), units=units)
    assert fewer.seconds < cost.estimate("mnist_lenet", c, units=units).seconds


def test_depth_estimate_grows_with_depths_and_seeds(units):
    c = mlp_depth_modadd.Config(results_dir="/nonexistent")
    base = cost.estimate("mlp_depth_modadd", c, units=units).seconds
    assert cost.estimate("mlp_depth_modadd", dataclasses.replace(c, depths=[1, 2, 3]), units=units).seconds < base
    assert cost.estimate("mlp_depth_modadd", dataclasses.replace(c, seeds=[0, 1, 2, 3]), units=units).seconds > base


def test_every_book_chapter_has_an_estimate_at_its_defaults_from_the_committed_units():
    if not cost.UNITS_FILE.is_file():
        pytest.fail(f"{cost.UNITS_FILE} is missing: python benchmarks/bench_cost_units.py")
    units = cost.load_units()
    for name in rec.book_chapters():
        e = cost.estimate(name, units=units)
        assert e.seconds > 0 and math.isfinite(e.seconds), name
        assert e.budget_minutes == rec.GOAL_MINUTES[name]
        assert "reference speed" in e.text() and "budget" in e.text()


@pytest.mark.smoke  # runs the chapters' smoke presets (about 30 s each on a quiet machine)
@pytest.mark.parametrize("name", ["core_checks", "mlp_depth_modadd", "grokking_modadd"])
def test_the_estimate_of_a_smoke_run_is_within_the_stated_factor_of_its_calibrated_time(name, tmp_path):
    """benchmarks/bench_estimates.py on the cheap smoke presets: the chapter is run between two calibrations and
    its time at the reference speed compared with the model's estimate for that configuration."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_estimates

    result = bench_estimates.compare(name, results_dir=str(tmp_path), quick=True)
    factor = bench_estimates.SMOKE_FACTOR
    assert 1 / factor <= result.ratio <= factor, result.line()


def _mechanistic(tmp, **kw):
    return mechanistic_modadd.Config(**{"results_dir": str(tmp), "grokking": grok(results_dir=str(tmp)),
                                        "depth": mlp_depth_modadd.Config(results_dir=str(tmp)), **kw})


def test_mechanistic_estimate_prices_its_test_solves_and_simulations(tmp_path, units):
    c = _mechanistic(tmp_path)
    base = cost.estimate("mechanistic_modadd", c, units=units)
    assert set(base.parts) == {"circuit and causal checks", "curvature eigenpairs", "mechanistic test", "MLP runs"}
    assert math.isclose(base.seconds, sum(base.parts.values())) and base.parts["mechanistic test"] > 0
    n_grok = sum(s.role == "grok" for s in c.grokking.runs())
    work = c.grokking.hessian_samples * cost._transformer_size(c.grokking)[0] * c.n_eigenvectors
    for name, changed in (("n_test_draws", 2000), ("n_error_sims", 400), ("n_eigenvectors", 30),
                          ("eps_grid", [0.01, 0.02, 0.05, 0.1])):
        more = cost.estimate("mechanistic_modadd", dataclasses.replace(c, **{name: changed}), units=units)
        assert more.parts["mechanistic test"] > base.parts["mechanistic test"], name
    # each run of the recipe left out saves its top eigenpairs and its tests (one per ε) at every test pick
    fewer_runs = _mechanistic(tmp_path, grokking=grok(results_dir=str(tmp_path), n_replicates=2))
    dropped = n_grok - sum(s.role == "grok" for s in fewer_runs.grokking.runs())
    saved = base.parts["mechanistic test"] - cost.estimate("mechanistic_modadd", fewer_runs,
                                                           units=units).parts["mechanistic test"]
    assert dropped > 0 and saved == pytest.approx(dropped * len(mechanistic_modadd.TEST_PICKS) * (
        units("mechanistic_top", work) + len(c.eps_grid) * units("mechanistic_circuit_test")))
    # curvature: one solve per pick and matrix, but the Hessian at the grokking chapter's dense picks is read
    picks = list(c.picks)
    assert base.parts["curvature eigenpairs"] == pytest.approx(sum(
        units(f"mechanistic_{m}", work) for p in picks for m in c.matrices
        if not (m == "hessian" and p in c.grokking.dense_picks)))
    assert "MLP runs: steps from the cap n_steps" in base.steps_source


def test_a_stored_mlp_log_shortens_the_mechanistic_mlp_runs(tmp_path, units):
    from hessian_book.store import ResultStore
    from hessian_book.training import checkpoint_name

    c = _mechanistic(tmp_path, probe_widths=[16], probe_seeds=[0])
    capped = cost.estimate("mechanistic_modadd", c, units=units)
    recipe = c.probe_recipe()
    store = ResultStore(str(tmp_path), "mechanistic_modadd_mlp", dict(
        p=recipe["p"], depth=recipe["depth"], width=16, input_encoding=recipe["input_encoding"],
        train_fraction=recipe["train_fraction"], split_seed=recipe["split_seed"], seed=0, lr=recipe["lr"],
        weight_decay=recipe["weight_decay"], betas=recipe["betas"], log_every=recipe["log_every"],
        step_backend="eager"))
    log = [{"step": s, "train_acc": 1.0, "test_acc": 1.0 if s >= 1000 else 0.1}
           for s in range(0, 20001, c.depth.log_every)]
    store.save(checkpoint_name(20000), {"log": log})
    stopped = cost.estimate("mechanistic_modadd", c, units=units)
    assert "run logs" in stopped.steps_source
    assert stopped.parts["MLP runs"] < capped.parts["MLP runs"]
