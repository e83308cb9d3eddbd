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
    assert table.loc[2, "memorised at"] == "100, 50" and table.loc[2, "test ≥ 95 % (held) from"] == "150, 100"
    assert table.loc[2, "trained steps"] == "200, 200"  # no run of this fake stops by the rule
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
        grok_step_d1="never", grok_step_d2=125, memorised_d1="never", memorised_d2=75, lam_final_min_depth=1,
        lam_final_max_depth=2, lam_first_lo_depth=1, lam_first_hi_depth=2,
        precond_max_depth=1, first_hessian_step=100, top_k=2, n_hvp_total=45, n_steps_text="200", goal_text="met",
        seed_fraction_depths="1", test_range_deep_underfit="–", train_range_deep_underfit="–")
    for name, value in expected.items():
        assert glued[name] == value, name
    approx = dict(
        eos_adam=1900, eos_gd=100, best_test_acc=100, precond_peak_max=1900, lam_first_d1=8, lam_first_d2=200,
        lam_first_lo=8, lam_first_hi=200, lam_final_d1=4, lam_final_d2=20, lam_final_lo=4,
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


def test_depth_outcome_definition():
    assert chapter.depth_outcome(3, 3) == "generalises"
    assert chapter.depth_outcome(0, 3) == "does not generalise"
    assert chapter.depth_outcome(2, 3) == "generalises in 2 of 3 seeds"
    with pytest.raises(ValueError):
        chapter.depth_outcome(4, 3)


def test_certified_interval_and_word_on_a_dense_reference():
    """A planted symmetric matrix: Lanczos at a loose tolerance, its λ_min against numpy's, inside the certified
    interval; a λ_min smaller than the resolution is 'not resolved', a clearly negative one 'negative'."""
    from hessian_core import lanczos

    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((80, 80)))
    # a positive λ_min is never certified: the residual bound locates *some* eigenvalue near the Ritz value
    for planted, word in ((-5.0, "negative"), (-1e-3, "not resolved"), (2.0, "not resolved")):
        lam = np.concatenate([[planted], np.linspace(3.0, 100.0, 79)])
        A = (Q * lam) @ Q.T
        tol = 1e-2

        class Op:
            shape = (80, 80)
            dtype = np.float64

            def matvec(self, x):
                return A @ x

            def matmat(self, X):
                return A @ X

        ends = np.asarray(lanczos(Op(), 1, which="both", tol=tol, seed=0))
        low, high, r = chapter.certified_interval(ends.min(), ends.max(), tol)
        reference = np.linalg.eigvalsh(A)
        assert r == pytest.approx(tol * max(abs(ends.min()), abs(ends.max())))
        assert reference[0] <= high  # the upper bound on λ_min holds; nothing bounds it from below
        assert np.min(np.abs(reference - ends.min())) <= r  # an eigenvalue within r of the Ritz value
        assert chapter.certified_word(low, high) == word
    assert chapter.certified_interval(-0.5, 10.0, 0.1) == (-1.5, 0.5, 1.0)
    # a Ritz value far above the true λ_min (a missed eigenvalue) still yields no positive claim
    assert chapter.certified_word(1.0, 3.0) == "not resolved" and chapter.certified_word(-3.0, -1.0) == "negative"
    assert chapter.lam_min_bound_text(-0.1, 0.02) == "≤ -0.08 (negative)"
    assert chapter.lam_min_bound_text(0.5, 0.02) == "≤ 0.52 (not resolved)"


def test_resolution_rounding_by_hand():
    assert chapter.round_up_1sig(0.24) == pytest.approx(0.3) and chapter.round_up_1sig(0.2) == pytest.approx(0.2)
    assert chapter.round_up_1sig(37.0) == pytest.approx(40.0)
    assert chapter.resolved_text(0.00147, 0.24) == "|λ| ≤ 0.3"  # the case: no digits inside the resolution
    assert chapter.resolved_text(-1.2345, 0.24) == "-1.2 ± 0.3"
    assert chapter.resolved_text(-123.4, 37.0) == "-123 ± 40"
    assert chapter.resolved_text(float("nan"), 1.0) == "–"


def test_depth_slopes_over_all_runs_by_hand():
    # 3 depths × 2 seeds, λ_max ×10 per layer in both seeds, seed 1 twice seed 0: slope 1 decade per layer
    per_run = pd.DataFrame({"depth": [1, 2, 3, 1, 2, 3], "seed": [0, 0, 0, 1, 1, 1],
                            "lam_max_first": [1.0, 10.0, 100.0, 2.0, 20.0, 200.0],
                            "lam_max_final": [5.0, 1.0, 5.0, 1.0, 5.0, 1.0]})
    tests = chapter.depth_slopes(per_run, n_permutations=999)
    first = tests["lam_max_first"]
    assert first.estimate == pytest.approx(1.0) and first.primary and first.family_size == 2
    # 6 runs allow 36 within-seed arrangements; 2 are as extreme as the observed one: p near 2/36 > 5 %
    assert first.p_value == pytest.approx(2 / 36, abs=0.03) and first.direction() == "shows no clear trend"
    assert "×10 per added layer" in chapter.slope_sentence(first)
    assert tests["lam_max_final"].estimate == pytest.approx(0.0, abs=1e-12)
    # seven depths × three seeds with a clear trend: a verdict
    rng = np.random.default_rng(0)
    depth, seed = np.tile(np.arange(1, 8), 3), np.repeat(np.arange(3), 7)
    big = pd.DataFrame({"depth": depth, "seed": seed, "lam_max_first": 10 ** (0.3 * depth + rng.normal(0, 0.1, 21)),
                        "lam_max_final": 10 ** rng.normal(0, 0.1, 21)})
    tests = chapter.depth_slopes(big, n_permutations=999)
    assert tests["lam_max_first"].direction() == "increases" and tests["lam_max_first"].low > 0
    assert tests["lam_max_final"].direction() == "shows no clear trend"
    median, spread = chapter.ratio_summary([1.5, np.nan, 3.0, 2.0])
    assert median == 2.0 and spread == "1.5–3.0"
    assert math.isnan(chapter.ratio_summary([np.nan])[0]) and chapter.ratio_summary([])[1] == "–"


def test_verdicts_computed_from_the_runs_and_withheld_at_the_smoke_preset():
    result = _fake_result()
    row = result.per_run.set_index(["depth", "seed"])
    # delay ratios: depth 2 seed 0 memorised at 100, generalised at 150; seed 1: 50 and 100
    assert row.loc[(2, 0), "delay_ratio"] == 1.5 and row.loc[(2, 1), "delay_ratio"] == 2.0
    assert math.isnan(row.loc[(1, 0), "delay_ratio"]) and not row.groks.any()
    # λ_min = -0.1 at the last checkpoint; resolution = lanczos_tol (0.01) × λ_max
    assert row.loc[(2, 0), "lam_min_resolution"] == pytest.approx(0.1)
    assert row.loc[(2, 0), "lam_min_word"] == "not resolved"  # -0.1 ± 0.1 touches 0
    assert row.loc[(2, 1), "lam_min_word"] == "not resolved"  # resolution 0.01 × 40 = 0.4
    assert row.loc[(1, 0), "lam_min_word"] == "negative"  # resolution 0.01 × 2 = 0.02
    glued = result.glued()
    assert glued["delay_ratio_d2"] == pytest.approx(1.75) and glued["delay_ratio_range_d2"] == "1.5–2.0"
    assert glued["n_groks_d2"] == 0 and glued["outcome_d2"] == "generalises within 200 steps"
    assert glued["outcome_d1"] == "does not generalise within 200 steps"
    assert "delay ratio of 1.8" in glued["grokking_sentence"] and "0 of its 2 runs grok" in glued["grokking_sentence"]
    assert glued["claim_depth2_text"] == ("none of the 2 runs at depth 2 groks within 200 steps by this book's "
                                         "definition")
    assert glued["claim_deep_text"].startswith("no depth of 4 or more was run")
    assert "depths 1 did not generalise" in glued["claim_deep_text"]
    assert glued["claim_increase_text"].startswith("at step 100, λ_max shows no clear trend with depth: ×25 per "
                                                   "added layer")  # two depths × two seeds cannot give a verdict
    assert "at the end of each run, it shows no clear trend with depth" in glued["claim_increase_text"]
    assert glued["lam_first_factor"] == pytest.approx(25) and glued["slope_sim_fwer"] <= 6.4
    assert glued["seed_fraction_text"] == ("no run at depths 1 generalised (test accuracy held >= 95 %) within 200 "
                                      "steps")
    assert glued["depths_eos_memorised"] == "none" and glued["depths_eos_fitting"] == "1"
    assert glued["decay_steps"] == pytest.approx(1 / (0.02 * 3.0))
    assert (glued["n_lam_min_negative"], glued["n_lam_min_unresolved"]) == (2, 2)
    assert glued["lam_min_resolution_max"] == pytest.approx(0.4)
    assert "≤ -0.08 (negative)" in result.table.loc[1, "λ_min final: certified bound"]
    assert result.table.loc[2, "delay ratio"] == "1.5, 2.0" and result.table.loc[2, "groks"] == "0/2"
    smoke = chapter.Result(**{**result.__dict__, "config": chapter.Config(**{**result.config.__dict__,
                                                                              "preset": "smoke"})})
    for name in ("grokking_sentence", "claim_increase_text", "claim_depth2_text", "claim_deep_text",
                 "seed_fraction_text"):
        assert smoke.glued()[name].startswith("a smoke run (200 steps) renders no verdict"), name
    assert smoke.glued()["grokking_sentence"].endswith("grokking.")
