"""The depth chapter: its Config matches the notebook, bad parameters are named before any work, the summaries and
glued numbers (moved out of the notebook) are right on hand-made runs, and the executor does not change the
numbers."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import jupytext
import numpy as np
import pandas as pd
import pytest

from hessian_book.chapters import mlp_depth_modadd as chapter
from hessian_book.config import ConfigError

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "mlp_depth_modadd.md"


def _notebook_cells(tag: str | None = None) -> list:
    cells = [c for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
    return cells if tag is None else [c for c in cells if tag in c.metadata.get("tags", [])]


def test_defaults_equal_the_notebook_parameters_cell():
    (cell,) = _notebook_cells("parameters")
    parameters: dict = {}
    exec(cell.source, {}, parameters)
    defaults = chapter.Config.defaults()
    assert set(parameters) == set(defaults)
    for name, value in defaults.items():
        assert parameters[name] == value, name


def test_notebook_defines_no_functions():
    for cell in _notebook_cells():
        tree = ast.parse(cell.source)
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], cell.source
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))], cell.source


@pytest.mark.parametrize("parameters, name", [
    ({"p": 1}, "p="), ({"p": 9.5}, "p="), ({"width": 0}, "width="), ({"n_steps": 0}, "n_steps="),
    ({"depths": []}, "depths="), ({"depths": [0, 1]}, "depths="), ({"depths": [2, 2]}, "depths="),
    ({"depths": [1.5]}, "depths="), ({"seeds": [-1]}, "seeds="), ({"seeds": [1, 1]}, "seeds="),
    ({"seed_fraction_depths": [0]}, "seed_fraction_depths="), ({"split_seed": -1}, "split_seed="),
    ({"input_encoding": "raw"}, "input_encoding="), ({"train_fraction": 1.0}, "train_fraction="),
    ({"seed_fraction": 0}, "seed_fraction="), ({"lr": 0}, "lr="), ({"weight_decay": -1.0}, "weight_decay="),
    ({"beta1": 1.0}, "beta1="), ({"beta2": -0.1}, "beta2="), ({"log_every": 300}, "log_every="),
    ({"log_every": 20_000}, "log_every="), ({"hessian_every": 150}, "hessian_every="),
    ({"hessian_every": 3000}, "hessian_every="), ({"lanczos_tol": 0.0}, "lanczos_tol="),
    ({"hessian_dtype": "half"}, "hessian_dtype="), ({"top_k": -1}, "top_k="), ({"top_k": True}, "top_k="),
    ({"threads": -1}, "threads="), ({"scheduler": "localhost:8786"}, "scheduler="), ({"scheduler": 3}, "scheduler="),
    ({"preset": "fast"}, "preset="),
])
def test_bad_parameters_are_named_before_any_work(monkeypatch, tmp_path, parameters, name):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the parameters were checked")

    monkeypatch.setattr(chapter, "run_tasks", no_work)
    monkeypatch.setattr(chapter, "modadd_mlp_run", no_work)
    results = tmp_path / "results"
    with pytest.raises(ConfigError, match=name):
        chapter.run(chapter.Config.from_parameters({"results_dir": str(results), **parameters}))
    assert not results.exists()


def test_presets_build_and_explicit_values_override_them():
    smoke = chapter.Config.from_parameters({"preset": "smoke"})
    assert (smoke.depths, smoke.seeds, smoke.n_steps, smoke.top_k, smoke.scheduler) == ([1, 2], [0], 200, 3, "serial")
    assert Path(smoke.results_dir).is_dir()  # a fresh temporary directory
    assert chapter.Config.from_parameters({"preset": "full"}) == chapter.Config()
    assert chapter.Config.from_parameters({"preset": "smoke", "depths": [3]}).depths == [3]
    assert chapter.Config.from_parameters({"preset": "smoke", "scheduler": ""}).scheduler == ""
    assert chapter.Config.from_parameters({"preset": "smoke", "results_dir": "x"}).results_dir == "x"


def test_tasks_are_seed_major_with_top_k_for_the_first_seed_then_the_seed_fraction_runs():
    config = chapter.Config(depths=[1, 2], seeds=[5, 6], seed_fraction_depths=[2], results_dir="r")
    tasks = config.tasks()
    assert [(t["seed"], t["depth"], t["top_k"], t["train_fraction"], t["hessian_every"]) for t in tasks] == [
        (5, 1, 10, 0.3, 1000), (5, 2, 10, 0.3, 1000), (6, 1, 0, 0.3, 1000), (6, 2, 0, 0.3, 1000),
        (5, 2, 0, 0.1, 0)]
    assert all(t["betas"] == (0.9, 0.98) and t["results_dir"] == "r" and t["threads"] == 1 for t in tasks)


def test_text_helpers_by_hand():
    assert chapter.spread_text([1.0, 2.0, 6.0]) == "3 [1, 6]"
    assert chapter.spread_text([np.nan, 2.0]) == "2"
    assert chapter.spread_text([np.nan]) == "–"
    assert chapter.spread_text([10.0, 20.0], "{:.1f}") == "15.0 [10.0, 20.0]"
    assert chapter.steps_text([100, None, pd.NA]) == "100, –, –"
    assert chapter.depth_list([3, 4]) == "3, 4" and chapter.depth_list([]) == "none"
    assert chapter.range_text([0.5, 0.91, 0.7]) == "0.50–0.91"
    assert chapter.range_text([0.5]) == "0.50" and chapter.range_text([]) == "–"


# Hand-made runs: 2 depths x 2 seeds, logs at 0, 50, ..., 200, Hessians at 0, 100, 200. lr = 0.02, so 2/lr = 100
# and Adam's threshold 38/lr = 1900.
_LOG_STEPS = [0, 50, 100, 150, 200]
_HESSIAN_STEPS = [0, 100, 200]
_RUNS = {  # (depth, seed): train_acc, test_acc, final train loss, lambda_max, preconditioned lambda_max
    (1, 0): ([0, .2, .5, .55, .6], [0, 0, .1, .1, .2], 0.5, [1, 4, 2], [np.nan, 950, 1900]),
    (1, 1): ([0, .2, .5, .6, .7], [0, 0, .1, .2, .3], 2.0, [1, 16, 8], [np.nan, 1900, 1520]),
    (2, 0): ([0, .5, 1, 1, 1], [0, .1, .5, .96, .97], 0.01, [2, 100, 10], [np.nan, 1900, 190]),
    (2, 1): ([0, 1, 1, 1, 1], [0, .1, .96, .99, 1.0], 0.04, [2, 400, 40], [np.nan, 1710, 380]),
}


def _fake_result() -> chapter.Result:
    from hessian_book.curves import grokking_delay

    config = chapter.Config(depths=[1, 2], seeds=[0, 1], n_steps=200, log_every=50, hessian_every=100, lr=0.02,
                            top_k=2, seed_fraction_depths=[1], results_dir="unused")
    runs = {}
    for (d, s), (train, test, loss, lam_max, pre) in _RUNS.items():
        log = [dict(step=t, train_acc=a, test_acc=b, train_loss=loss if t == 200 else 5.0, test_loss=5.0,
                    grad_norm=1.0, train_seconds=1.0, eval_seconds=0.5) for t, a, b in zip(_LOG_STEPS, train, test)]
        hessian = [dict(step=t, lambda_max=float(m), lambda_min=-0.1, preconditioned_lambda_max=float(q), n_hvp=3,
                        seconds=0.25) for t, m, q in zip(_HESSIAN_STEPS, lam_max, pre)]
        runs[d, s] = dict(log=log, hessian=hessian, n_params=100 * d, top=None,
                          **grokking_delay(_LOG_STEPS, train, test))
    small = {1: dict(runs[1, 0], log=[dict(r, test_acc=0.04) for r in runs[1, 0]["log"]])}
    per_run = chapter.per_run_summary(runs, config)
    return chapter.Result(config=config, runs=runs, seed_fraction_runs=small, per_run=per_run,
                          table=chapter.depth_table(per_run, 2), computed_seconds=dict(train=6.0, evaluation=4.0,
                                                                                       hessians=2.0),
                          n_hvp=45, first_seconds=120.0, timings=dict(runs=1.0, summaries=0.0, total=1.0))


def test_per_run_summary_by_hand():
    result = _fake_result()
    row = result.per_run.set_index(["depth", "seed"])
    assert row.loc[(2, 0), "memorised"] == 100 and row.loc[(2, 0), "generalised"] == 150
    assert row.loc[(2, 1), "memorised"] == 50 and row.loc[(2, 1), "generalised"] == 100
    assert pd.isna(row.loc[(1, 0), "generalised"]) and pd.isna(row.loc[(1, 1), "memorised"])
    # λ_max at grokking: geometric interpolation between the Hessian checkpoints 100 (100) and 200 (10) at 150
    assert row.loc[(2, 0), "lam_max_at_grok"] == pytest.approx(math.sqrt(1000))
    assert row.loc[(2, 1), "lam_max_at_grok"] == pytest.approx(400)
    assert math.isnan(row.loc[(1, 0), "lam_max_at_grok"])
    assert row.loc[(1, 1), "lam_max_first"] == 16 and row.loc[(1, 1), "lam_max_peak"] == 16
    assert row.loc[(1, 1), "lam_max_final"] == 8 and row.loc[(2, 0), "best_test"] == 0.97
    # second half of training: checkpoints 100 and 200; ratios to 38/lr = 1900
    assert row.loc[(1, 0), "precond_late"] == pytest.approx(1425 / 1900)
    assert row.loc[(1, 0), "precond_late_max"] == pytest.approx(1.0)
    assert row.loc[(2, 1), "precond_late"] == pytest.approx(1045 / 1900)
    assert row.loc[(2, 1), "precond_late_max"] == pytest.approx(0.9)
    assert row.loc[(1, 1), "precond_peak"] == 1900


def test_depth_table_by_hand():
    table = _fake_result().table
    assert list(table.index) == [1, 2]
    assert table.loc[2, "generalised"] == "2/2" and table.loc[1, "generalised"] == "0/2"
    assert table.loc[2, "memorised at"] == "100, 50" and table.loc[2, "test ≥ 95 % at"] == "150, 100"
    assert table.loc[1, "memorised at"] == "–, –" and table.loc[1, "λ_max at grokking"] == "–"
    assert table.loc[1, "final train acc %"] == "65.0 [60.0, 70.0]"
    assert table.loc[1, "λ_max(P⁻¹H) · lr/38: max"] == "1.00 [1.00, 1.00]"


def test_glued_numbers_by_hand_and_every_role_of_the_prose():
    result = _fake_result()
    glued = result.glued()
    roles = set(re.findall(r"\{glue:text\}`([A-Za-z_]\w*)", NOTEBOOK.read_text()))
    assert roles <= set(glued), roles - set(glued)
    expected = dict(
        depths_all_generalised="2", depths_never_generalised="1", depths_stuck="none", depths_underfit="1",
        depths_deep_underfit="none", depths_above_gd="2", depths_at_eos="1", precond_range_at_eos="0.90",
        precond_range_generalised="0.55", n_generalised_at_eos=0, n_seeds=2, n_grok_d1=0, n_grok_d2=2,
        grok_step_d1="never", grok_step_d2=125, memorised_d1="never", memorised_d2=75, lam_first_increasing="yes",
        lam_first_monotone_text="larger at every added layer", lam_final_increasing="yes", lam_peak_increasing="yes",
        lam_final_min_depth=1, lam_final_max_depth=2, lam_first_lo_depth=1, lam_first_hi_depth=2,
        precond_max_depth=1, first_hessian_step=100, top_k=2, n_hvp_total=45, n_steps_text="200", goal_text="met",
        seed_fraction_depths="1", test_range_deep_underfit="–", train_range_deep_underfit="–")
    for name, value in expected.items():
        assert glued[name] == value, name
    approx = dict(
        eos_adam=1900, eos_gd=100, best_test_acc=100, precond_peak_max=1900, lam_first_d1=8, lam_first_d2=200,
        lam_first_factor=25, lam_first_lo=8, lam_first_hi=200, lam_final_d1=4, lam_final_d2=20, lam_final_lo=4,
        lam_final_hi=20, lam_peak_d1=8, lam_peak_d2=200, lam_peak_lo=8, lam_peak_hi=200, lam_max_overall=400,
        lam_grok_d2=1000 ** 0.25 * 20, precond_ratio_d1=0.9, precond_ratio_d2=0.55, precond_max_overall=1.0,
        final_train_d1=65, final_loss_d1=1.0, final_loss_d2=0.02, final_test_d2=98.5, final_test_d1=25,
        seed_fraction_best_test=4, seed_fraction_pct=10, n_train=round(0.3 * 97 ** 2), minutes_total=0.2,
        seconds_train=6, first_minutes=2, page_seconds=1)
    for name, value in approx.items():
        assert glued[name] == pytest.approx(value), name
    assert math.isnan(glued["lam_grok_d1"])


def test_tiny_chapter_gives_the_same_numbers_serially_and_on_worker_processes(tmp_path):
    tiny = dict(p=7, depths=[1, 2], seeds=[0], width=8, train_fraction=0.5, n_steps=20, lr=1e-2, weight_decay=0.1,
                log_every=5, hessian_every=10, lanczos_tol=1e-6, hessian_dtype="float64", top_k=2,
                seed_fraction=0.4, seed_fraction_depths=[1])
    serial = chapter.run(chapter.Config(results_dir=str(tmp_path / "a"), scheduler="serial", **tiny),
                         progress=False)
    pooled = chapter.run(chapter.Config(results_dir=str(tmp_path / "b"), scheduler=None, **tiny), progress=False)
    assert serial.check_text() == pooled.check_text()
    assert serial.check_text().splitlines()[:3] == ["runs: 2", "log records per run: [5]",
                                                     "Hessian records per run: [3]"]
    for key in serial.runs:
        for name in ("log", "hessian"):
            drop = ("train_seconds", "eval_seconds", "seconds")
            a = [{k: v for k, v in r.items() if k not in drop} for r in serial.runs[key][name]]
            b = [{k: v for k, v in r.items() if k not in drop} for r in pooled.runs[key][name]]
            np.testing.assert_equal(a, b)
    np.testing.assert_array_equal(serial.runs[1, 0]["top"], pooled.runs[1, 0]["top"])
    pd.testing.assert_frame_equal(serial.per_run, pooled.per_run, check_exact=True)
    timing = ("seconds", "minutes", "goal_text")
    a = {k: v for k, v in serial.glued().items() if not any(t in k for t in timing)}
    b = {k: v for k, v in pooled.glued().items() if not any(t in k for t in timing)}
    np.testing.assert_equal(a, b)
