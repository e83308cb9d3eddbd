"""The grokking chapter: its configuration (defaults = the notebook's parameters cell, validation naming the bad
parameter, presets), the curve readings it moved out of the notebook, the transition picks the Fiedler chapter
shares, its stores and its result."""

import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import jupytext
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hessian_book.chapters import grokking_modadd  # noqa: E402
from hessian_book.config import ConfigError  # noqa: E402
from hessian_book.store import ResultStore  # noqa: E402
from tests.cases import TINY_TRANSFORMER  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

def _notebook_glue_names() -> set[str]:
    """Every name the notebook's prose glues."""
    import re

    notebook = jupytext.read(ROOT / "notebooks" / "grokking_modadd.md")
    return {name for c in notebook.cells if c.cell_type == "markdown"
            for name in re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)", c.source)}




# ------------------------------------------------------------------------------------------------- configuration



@pytest.mark.parametrize("name, value", [
    ("p", 100), ("p", 1), ("p", 23.0), ("train_fraction", 1.5), ("train_fraction", 0), ("split_seed", -1),
    ("seed", 1.5), ("lr", 0), ("lr", float("inf")), ("betas", [0.9]), ("betas", [0.9, 1.0]), ("betas", 0.9),
    ("n_steps", 0), ("log_every", 0), ("d_model", 0), ("n_heads", 0), ("d_mlp", 0), ("d_mlp", 12.5),
    ("weight_decay", -1.0), ("weight_decay", float("nan")), ("sparse_every", True), ("sparse_every", 0),
    ("n_replicates", 0), ("n_replicates", 1.5), ("n_replicates", [1, 2]), ("control_weight_decay", 0.5),
    ("control_weight_decay", -1.0), ("n_log_checkpoints", 1),
    ("refine_every", 0), ("spike_every", 0), ("spike_every", 1000), ("spike_span", 0), ("spike_tol", 0.0),
    ("scheduler", "localhost"), ("scheduler", 3), ("hessian_samples", 50), ("recipe_configs", [[32, 1, 128]]), ("recipe_configs", [[32, 3, 128, 0.1]]),
    ("recipe_configs", [[32, 1, 0, 0.1]]), ("recipe_configs", [[32, 1, 128, -0.5]]), ("recipe_configs", "wide"),
    ("recipe_steps", 0), ("hessian_samples", 0), ("hessian_samples", 4000), ("lanczos_k", 1),
    ("lanczos_k", 10 ** 6), ("lanczos_tol", 0.0), ("lanczos_block", 0), ("slq_probes", 0), ("slq_steps", -3),
    ("n_vectors", 0), ("n_vectors", 10 ** 6), ("dense_picks", ["middle"]), ("dense_picks", []),
    ("dense_picks", "before"), ("transition_low", -0.1), ("transition_low", 0.97), ("transition_high", 1.5),
    ("preset", "huge"), ("results_dir", None),
])
def test_bad_parameter_raises_naming_it(name, value):
    with pytest.raises(ConfigError, match=rf"\b{name}\b"):
        grokking_modadd.Config.from_parameters({name: value})


def test_model_shape_errors_name_the_parameter():
    with pytest.raises(ConfigError, match=r"d_model=32 must be divisible by n_heads=3"):
        grokking_modadd.Config(n_heads=3, results_dir="x")


def test_validation_comes_before_any_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("reached the training run")

    monkeypatch.setattr(grokking_modadd, "train_modadd", no_work)
    with pytest.raises(ConfigError, match=r"p=100"):
        grokking_modadd.run(grokking_modadd.Config.from_parameters({"preset": "smoke", "p": 100}))


def test_presets_build_and_explicit_values_win():
    assert grokking_modadd.Config.from_parameters({"preset": "full"}) == grokking_modadd.Config()
    smoke = grokking_modadd.Config.from_parameters({"preset": "smoke"})
    assert (smoke.p, smoke.d_model, smoke.d_mlp, smoke.n_steps, smoke.lanczos_k) == (23, 32, 64, 1500, 3)
    assert smoke.scheduler == "serial" and len(smoke.runs()) == 4  # 2 initialisations, 1 more split, the control
    assert smoke.results_dir and Path(smoke.results_dir).is_dir()  # a fresh temporary directory
    overridden = grokking_modadd.Config.from_parameters({"preset": "smoke", "p": 29, "n_steps": 200,
                                                         "results_dir": "elsewhere"})
    assert (overridden.p, overridden.n_steps, overridden.results_dir) == (29, 200, "elsewhere")
    assert overridden.d_mlp == 64 and overridden.recipe_steps == 100  # the rest from the preset


def test_the_smoke_presets_reference_run_groks_and_has_key_frequencies(tmp_path):
    """The smoke preset exercises the positive branches in CI: its reference run (trained here as the smoke
    notebook trains it: eager, on the pinned path of tests/conftest.py) memorises, generalises at least 5x later,
    is stopped by the rule before the cap, and its neurons have key frequencies (the mechanistic smoke's)."""
    from hessian_book.circuit import mlp_activations
    from hessian_book.fourier import key_frequencies

    config = grokking_modadd.Config.from_parameters({"preset": "smoke", "results_dir": str(tmp_path)})
    run = grokking_modadd.main_run(config, progress=False)
    result = grokking_modadd.run_outcome(run)
    assert result.groks and result.ratio >= grokking_modadd.GROKS_RATIO, result
    assert run.stopped == "rule" and run.end_step < config.n_steps
    assert key_frequencies(mlp_activations(run.model_at(run.checkpoint_steps[-1]), config.p))


# ------------------------------------------------------------------------------------------ readings moved here

def test_recipe_label():
    assert grokking_modadd.recipe_label(32, 1, None, 1.0) == "d32 h1 attention only, wd 1"
    assert grokking_modadd.recipe_label(32, 1, 128, 0.5) == "d32 h1 MLP 128, wd 0.5"
    assert grokking_modadd.recipe_label(8, 2, 16, 0.1) == "d8 h2 MLP 16, wd 0.1"


def test_test_at_twice_memorised_hand_computed():
    steps = [0, 100, 150, 250, 400]
    train = [0.1, 0.995, 1.0, 1.0, 1.0]  # memorised at step 100
    test = [0.0, 0.1, 0.2, 0.4, 0.9]     # step 200 lies halfway between 150 (0.2) and 250 (0.4)
    assert grokking_modadd.test_at_twice_memorised(steps, train, test) == pytest.approx(30.0)
    # exactly at a logged step
    assert grokking_modadd.test_at_twice_memorised([0, 50, 100], [0.0, 0.99, 1.0], [0.0, 0.1, 0.7]) == \
        pytest.approx(70.0)


def test_test_at_twice_memorised_undefined():
    assert grokking_modadd.test_at_twice_memorised([0, 100, 200], [0.1, 0.5, 0.9], [0.0, 0.1, 0.2]) is None
    # memorised at 150: the log ends at 200 < 300
    assert grokking_modadd.test_at_twice_memorised([0, 150, 200], [0.1, 1.0, 1.0], [0.0, 0.1, 0.2]) is None


def test_plateau_phases_hand_computed():
    checkpoints = [0, 10, 50, 100, 200, 500, 1000, 1500, 2000, 3000]
    first, phases = grokking_modadd.plateau_phases(checkpoints, 120, {"start": 1200, "end": 1800},
                                                   {"before": 1000, "during": 1500, "after": 2000})
    assert first == 200  # the first checkpoint at or after step 120
    assert phases == {"plateau": (200, 1000), "transition": (1200, 1800), "after": (2000, 3000)}
    first, phases = grokking_modadd.plateau_phases(checkpoints, None, {"start": None, "end": None},
                                                   {"before": 0, "during": 200, "after": 3000})
    assert first == 0 and phases == {"plateau": (0, 0), "transition": (0, 0), "after": (3000, 3000)}
    assert grokking_modadd.plateau_phases(checkpoints, 5000, {"start": None, "end": None},
                                          {"before": 0, "during": 200, "after": 3000})[0] == 0


def _fake_run(steps, test_acc, checkpoint_steps=()):
    log = {"step": np.asarray(steps), "test_acc": np.asarray(test_acc, dtype=float)}
    return SimpleNamespace(curve=lambda name: log[name], checkpoint_steps=list(checkpoint_steps))


def test_checkpoint_steps_hand_computed():
    config = grokking_modadd.Config(n_steps=1000, log_every=100, n_log_checkpoints=4, log_grid_end=1000,
                                    sparse_every=500, results_dir="x")
    # geomspace(10, 1000, 4) = 10, 46.4, 215.4, 1000: above log_every rounded to its multiples
    assert grokking_modadd.checkpoint_steps(config) == [0, 10, 46, 200, 500, 1000]
    # the schedule up to a run's own end step (the stop rule's), which is always saved
    assert grokking_modadd.checkpoint_steps(config, end=700) == [0, 10, 46, 200, 500, 700]


def test_the_checkpoint_grid_does_not_depend_on_the_cap():
    """The store's key holds the grid, so a run's store (and every checkpoint before its end) must not change
    with n_steps: a larger cap continues the same run."""
    short = grokking_modadd.Config(n_steps=1000, log_every=100, results_dir="x")
    long = grokking_modadd.Config(n_steps=40000, log_every=100, results_dir="x")
    assert grokking_modadd.checkpoint_grid(short) == grokking_modadd.checkpoint_grid(long)
    spec = short.runs()[0]
    assert (grokking_modadd._training(short, spec) | {"n_steps": 0}) == (grokking_modadd._training(long, spec)
                                                                       | {"n_steps": 0})
    assert grokking_modadd.checkpoint_steps(long)[:len(grokking_modadd.checkpoint_steps(short)) - 1] == \
        grokking_modadd.checkpoint_steps(short)[:-1]


_SCHEDULE = dict(n_steps=3000, log_every=100, n_log_checkpoints=4, log_grid_end=3000, sparse_every=1000,
                 results_dir="x")


def test_transition_picks_hand_computed():
    config = grokking_modadd.Config(**_SCHEDULE)
    assert grokking_modadd.checkpoint_steps(config) == [0, 10, 67, 400, 1000, 2000, 3000]  # 10, 67, 448, 3000
    steps = np.arange(0, 3001, 100)
    # test accuracy first reaches 0.5 at step 1200 and 0.95 at step 1800
    test = np.interp(steps, [0, 1100, 1200, 1800, 3000], [0.01, 0.4, 0.5, 0.95, 1.0])
    fake = _fake_run(steps, test, grokking_modadd.checkpoint_steps(config))  # the run's own schedule, to its end
    assert grokking_modadd.window(fake, config) == {"start": 1200, "end": 1800}
    assert grokking_modadd.transition_picks(fake, config) == {"before": 1000, "during": 2000, "after": 2000,
                                                              "final": 3000}  # 2000 is nearer sqrt(1200 * 1800)
    later = grokking_modadd.Config(**_SCHEDULE, transition_low=0.85)
    assert grokking_modadd.window(fake, later)["start"] == 1700  # 0.875 at 1700, 0.8 at 1600


def test_transition_picks_without_a_transition():
    config = grokking_modadd.Config(**_SCHEDULE)
    fake = _fake_run(np.arange(0, 3001, 100), np.full(31, 0.05), grokking_modadd.checkpoint_steps(config))
    assert grokking_modadd.transition_picks(fake, config) == {"before": 0, "during": 400, "after": 3000,
                                                              "final": 3000}


def test_refinement_steps_hand_computed():
    checkpoints = [0, 10, 46, 200, 500, 1000]
    resume, steps = grokking_modadd.refinement_steps(checkpoints, {"start": 300, "end": 700}, 100)
    assert resume == 200 and steps == [200, 300, 400, 500, 600, 700, 800, 900, 1000]
    resume, steps = grokking_modadd.refinement_steps(checkpoints, {"start": 220, "end": 480}, 150)
    assert resume == 200 and steps == [200, 300, 450, 500]
    assert grokking_modadd.refinement_steps(checkpoints, {"start": 300, "end": None}, 100) is None


def test_run_specs_reference_first_independent_replicates_control_last():
    config = grokking_modadd.Config(n_replicates=3, results_dir="x")
    specs = config.runs()
    # replicate i: its own initialisation and split, neither the reference run's
    assert [(s.role, s.seed, s.split_seed) for s in specs] == [
        ("grok", 0, 0), ("grok", 1, 1), ("grok", 2, 2), ("grok", 3, 3), ("control", 0, 0)]
    shifted = grokking_modadd.Config(n_replicates=2, seed=5, split_seed=1, results_dir="x").runs()
    assert [(s.seed, s.split_seed) for s in shifted] == [(5, 1), (6, 2), (7, 3), (5, 1)]
    assert specs[-1].weight_decay == 0.0 and specs[0].weight_decay == 0.5
    assert specs[0].label == "init 0 · split 0" and specs[-1].label.startswith("control (wd 0)")


def test_phases_per_run_hand_computed():
    boundaries = grokking_modadd.run_boundaries(150, {"start": 400, "end": 700}, 1000)
    assert boundaries == {"memorised": 150, "start": 400, "end": 700, "stop": 1000}
    masks = grokking_modadd.phase_masks([0, 100, 150, 300, 400, 500, 700, 800, 1000], boundaries)
    assert masks["plateau"].tolist() == [False, False, True, True, False, False, False, False, False]
    assert masks["transition"].tolist() == [False, False, False, False, True, True, True, False, False]
    assert masks["after"].tolist() == [False] * 7 + [True, True]
    assert grokking_modadd.run_boundaries(None, {"start": 400, "end": 700}, 1000) is None
    assert grokking_modadd.run_boundaries(150, {"start": 400, "end": None}, 1000) is None
    assert not any(m.any() for m in grokking_modadd.phase_masks([0, 500], None).values())


def test_control_compared_at_matched_steps_hand_made():
    # two grokking runs with their own boundaries, and a control compared at their median boundaries
    b1 = {"memorised": 100, "start": 400, "end": 600, "stop": 1000}
    b2 = {"memorised": 300, "start": 600, "end": 800, "stop": 1000}
    matched = grokking_modadd.matched_boundaries([b1, None, b2])
    assert matched == {"memorised": 200, "start": 500, "end": 700, "stop": 1000}
    assert grokking_modadd.matched_boundaries([None]) is None
    steps = np.arange(0, 1001, 50)
    # a quantity that is 1 before step 500 and 3 from step 500 on (in every run)
    jump = np.where(steps < 500, 1.0, 3.0)
    own = grokking_modadd.compare_phases([jump, jump], [steps, steps], [b1, b2], log=False)
    # run 1: plateau (100..350) = 1, transition (400..600) median 3 -> +2; run 2: plateau (300..550) median 1,
    # transition (600..800) = 3 -> +2
    assert own[("plateau", "transition")].estimate == pytest.approx(2.0)
    assert own[("transition", "after")].estimate == pytest.approx(0.0)
    control = grokking_modadd.compare_phases([jump], [steps], [matched], log=False)
    # matched plateau 200..450 = 1, transition 500..700 = 3, after 750..1000 = 3
    assert control[("plateau", "transition")].estimate == pytest.approx(2.0)
    assert control[("plateau", "after")].estimate == pytest.approx(2.0)
    assert np.isnan(control[("plateau", "transition")].low)  # one run: no interval
    # log comparison: a factor 3 is log10(3); non-positive values count as missing
    logged = grokking_modadd.compare_phases([np.where(steps == 0, 0.0, jump)] * 2, [steps, steps], [b1, b2],
                                            log=True)
    assert logged[("plateau", "transition")].estimate == pytest.approx(np.log10(3))


def test_verdict_sentence_reads_the_adjusted_p_value_and_the_interval():
    from hessian_book.stats import PhaseDifference

    common = dict(n_runs=7, statistic="median", log=True, family_size=3)
    up = PhaseDifference(estimate=0.3, low=0.1, high=0.5, p_value=0.0156, p_adjusted=0.047, **common)
    flat = PhaseDifference(estimate=0.1, low=0.05, high=0.4, p_value=0.03, p_adjusted=0.06, **common)
    down = PhaseDifference(estimate=-0.3, low=-0.5, high=-0.1, p_value=0.0156, p_adjusted=0.047, **common)
    text = grokking_modadd.verdict_sentence("λ_max", {("plateau", "transition"): up, ("transition", "after"): down,
                                                      ("plateau", "after"): flat}, log=True)
    assert text.startswith("λ_max rises from the plateau to the transition (×2, 95 % interval ×1.26 to ×3.16, "
                           "p = 0.016, Holm-adjusted 0.047, over 7 runs); falls from the transition to after it")
    # the interval excludes zero, but the adjusted p-value is above 5 %: no verdict word
    assert "and shows no clear change from the plateau to after it" in text
    exploratory = grokking_modadd.verdict_sentence(
        "λ_max", {k: PhaseDifference(**{**vars(v), "family_size": 0}) for k, v in
                  {("plateau", "transition"): up, ("transition", "after"): down}.items()}, log=True)
    assert "rises" not in exploratory and "falls" not in exploratory
    assert "changes from the plateau to the transition by ×2, 95 % interval ×1.26 to ×3.16, p = 0.016 " \
           "unadjusted, over 7 runs (exploratory, no verdict)" in exploratory


def test_declared_family_is_primary_and_the_rest_exploratory():
    steps = np.arange(0, 1001, 50)
    rng = np.random.default_rng(0)
    bounds = [{"memorised": 100, "start": 400 + 10 * i, "end": 600, "stop": 1000} for i in range(7)]
    diffs = {q: grokking_modadd.compare_phases([np.where(steps < 400, 1.0, 3.0) + rng.normal(0, 0.1, len(steps))
                                                for _ in bounds], [steps] * 7, bounds, log=log)
             for q, (_, log) in grokking_modadd.QUANTITIES.items()}
    declared = grokking_modadd.declare_primary(diffs)
    for q, by in declared.items():
        for (a, b), d in by.items():
            assert d.primary == ((q, a, b) in grokking_modadd.PRIMARY)
            assert d.primary or d.direction() == "exploratory (no verdict)"
    # seven runs all rising: p = 2/128, Holm over three: 3 x 2/128 < 5 %
    lmax = declared["lambda_max"][("plateau", "transition")]
    assert lmax.p_value == pytest.approx(2 / 128) and lmax.p_adjusted == pytest.approx(6 / 128)
    assert lmax.direction() == "rises"
    # the verdict table: words for the primary comparisons only, and none when the runs cannot give one
    control = {q: grokking_modadd.compare_phases([np.ones(len(steps))], [steps], [bounds[0]], log=log)
               for q, (_, log) in grokking_modadd.QUANTITIES.items()}
    table = grokking_modadd._verdict_table(declared, control, 7)
    primary = table[table["role"] == "primary"]
    assert len(primary) == len(grokking_modadd.PRIMARY)
    assert set(primary["verdict"]) <= {"rises", "shows no clear change"}
    assert primary.loc[("λ_max (Lanczos)", "plateau → transition"), "verdict"] == "rises"
    assert set(table[table["role"] == "exploratory"]["verdict"]) == {"–"}
    assert set(grokking_modadd._verdict_table(declared, control, 6)["verdict"]) == {"no verdict"}  # 3·2/2⁶ > 5 %


def test_the_recipe_table_holds_the_chosen_recipe_at_the_candidates_budget():
    config = grokking_modadd.Config(results_dir="x")
    candidates = grokking_modadd.recipe_candidates(config)
    assert candidates[:-1] == config.recipe_configs and candidates[-1] == [32, 1, 128, 0.5]
    among = grokking_modadd.Config(recipe_configs=[[32, 1, 128, 0.5], [32, 1, None, 1.0]], results_dir="x")
    assert grokking_modadd.recipe_candidates(among) == [[32, 1, 128, 0.5], [32, 1, None, 1.0]]


def _tiny_run(root, **extra):
    from hessian_book.runs import train_modadd

    return train_modadd(str(root), "grokking_modadd", p=23, train_fraction=0.3, split_seed=0, seed=0, d_model=8,
                        n_heads=1, d_mlp=16, lr=3e-3, weight_decay=1.0, betas=[0.9, 0.98], n_steps=60, log_every=10,
                        checkpoint_steps=[0, 20, 60], progress=False, **extra)


def test_refined_checkpoints_equal_the_original_run(tmp_path, monkeypatch):
    import torch

    from hessian_book.training import checkpoint_name

    run = _tiny_run(tmp_path)
    config = grokking_modadd.Config.from_parameters(dict(preset="smoke", results_dir=str(tmp_path), n_steps=60,
                                                         refine_every=10))
    monkeypatch.setattr(grokking_modadd, "window", lambda r, c: {"start": 30, "end": 45})
    store, steps, log = grokking_modadd.refine_run(config, run, progress=False)
    assert steps == [20, 30, 40, 50, 60]
    assert store.params["run"] == run.store.key and store.params["resume"] == 20 and store.params["stop"] == 60
    original, refined = run.store.load(checkpoint_name(60)), store.load(checkpoint_name(60))
    for name, tensor in original["model"].items():
        assert torch.equal(tensor, refined["model"][name]), name
    assert [r["step"] for r in log] == [s for s in range(0, 61, 10)]  # the parent's log up to 20, then every 10
    by_step = {r["step"]: r for r in run.log}
    for record in log:
        assert record["train_loss"] == pytest.approx(by_step[record["step"]]["train_loss"], rel=1e-12)


# ---------------------------------------------------------------------------------------------- result, figures

TINY_MODEL = TINY_TRANSFORMER  # tests/cases.py: the tiny transformer on top of the smoke preset
TINY = dict(preset="smoke", **TINY_MODEL, n_steps=60, recipe_steps=20, recipe_configs=[[8, 1, None, 1.0]],
            n_log_checkpoints=4, log_grid_end=60,
            sparse_every=1000, n_replicates=1, dense_picks=["before", "after"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("grokking")
    config = grokking_modadd.Config.from_parameters(dict(TINY, results_dir=str(directory)))
    return config, grokking_modadd.run(config, progress=False)


def test_run_glues_every_name_of_the_prose(tiny):
    config, result = tiny
    glued = result.glued()
    # the prose names recipes 0-5 and three picks (the smoke preset has them); this tiny run has 2 and 2
    import re

    absent = {n for n in _notebook_glue_names() if (re.match(r"recipe(\d+)_", n) and int(
        re.match(r"recipe(\d+)_", n).group(1)) >= 2) or n.startswith("full_during_")}
    assert _notebook_glue_names() - absent - set(glued) == set()
    assert list(result.checkpoints) == [0, 10, 20, 30, 60] and glued["n_checkpoints"] == 5
    assert glued["n_recipes"] == 2 and glued["main_label"] == "d8 h1 MLP 16, wd 1"
    assert glued["grokked"] == "does not grok within 60 steps" and glued["k_of_n"] == "0 of 1"
    assert glued["verdict_note"].startswith("No replicate groks")
    assert glued["sim_fwer"] <= 5 + 2 * 100 * (0.05 * 0.95 / glued["sim_n_sim"]) ** 0.5
    assert all("nan" not in glued[f"verdict_{q}"] for q in grokking_modadd.QUANTITIES)
    assert glued["control_groks"] == "does not grok within 60 steps" and glued["n_workers"] == 1
    assert glued["cov_tokens"] == glued["cov_classes"] == 23  # the stratified subsample covers the task
    assert glued["lanczos_error"] < 1e-6 and result.dense_sorted_finite
    assert result.extremes.shape == (5, 6) and result.subsample_loss.shape == (5,)
    assert len(result.runs) == 3 and result.runs[-1].spec.role == "control"
    for r in result.runs:
        assert list(r.progress.index) == list(r.checkpoints)
        assert {"restricted_loss", "excluded_loss", "gini_embedding", "gini_unembedding"} <= set(r.progress)


def test_tables_are_dataframes(tiny):
    config, result = tiny
    table = result.recipes
    assert isinstance(table, pd.DataFrame)
    # the chosen recipe is a candidate at the candidates' budget; the reference run is not in the table
    assert list(table.index) == ["d8 h1 attention only, wd 1", "d8 h1 MLP 16, wd 1 (chosen)"]
    assert table["steps"].tolist() == [20, 20]
    assert table["final test acc. (%)"].iloc[-1] == pytest.approx(100 * result.recipe_curves[-2].test_acc[-1])
    assert isinstance(result.phase_table, pd.DataFrame) and result.phase_table.shape == (6, 9)
    assert list(result.full_table.index) == list(config.dense_picks)
    assert list(result.replication.index) == [r.label for r in result.runs]
    assert result.replication["groks"].tolist() == ["no", "no", "no"]
    assert len(result.verdicts) == len(grokking_modadd.QUANTITIES) * 3
    assert set(result.verdicts["verdict"]) == {"no verdict"}
    assert set(result.verdicts["role"]) == {"primary", "exploratory"}
    assert list(result.fullset_table.index) == list(config.dense_picks)
    assert (result.fullset_table["HVPs (full set)"] > 0).all()


def test_rerun_reads_the_stores(tiny, monkeypatch):
    config, result = tiny

    def no_work(*args, **kwargs):
        raise AssertionError("recomputed a stored result")

    for name in ("extreme_eigenvalues", "slq_density", "dense_spectrum", "progress_measures", "train_full_batch_adamw",
                 "lanczos"):
        monkeypatch.setattr(grokking_modadd, name, no_work)
    again = grokking_modadd.run(config, progress=False)
    assert np.array_equal(again.extremes, result.extremes)
    same = {k: v for k, v in result.glued().items() if not k.startswith(("seconds", "minutes"))}
    assert {k: v for k, v in again.glued().items() if k in same} == pytest.approx(same, nan_ok=True)


def test_figures_draw(tiny):
    _, result = tiny
    for plot in (grokking_modadd.plot_recipes, grokking_modadd.plot_main_run, grokking_modadd.plot_summary,
                 grokking_modadd.plot_spectrum_evolution, grokking_modadd.plot_density,
                 grokking_modadd.plot_dendrograms, grokking_modadd.plot_cluster_counts,
                 grokking_modadd.plot_gap_barcode, grokking_modadd.plot_phases, grokking_modadd.plot_replication,
                 grokking_modadd.plot_progress_measures, grokking_modadd.plot_spike):
        assert isinstance(plot(result), plt.Figure), plot.__name__
        plt.close("all")
    assert isinstance(grokking_modadd.plot_cluster_counts(result, relative=True), plt.Figure)
    plt.close("all")
    assert Path(grokking_modadd.dendrogram_gif(result)).is_file()


def _decode(spec) -> np.ndarray:
    """A plotly.js typed-array spec ``{"dtype", "bdata"}`` back to numpy (independently of the explorer's encoder)."""
    import base64

    dtypes = {"u2": "<u2", "u4": "<u4", "f4": "<f4", "f8": "<f8"}
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(dtypes[spec["dtype"]]))


def test_explorer_shows_every_runs_lanczos_extremes_at_every_checkpoint(tiny):
    pytest.importorskip("plotly")
    import plotly.graph_objects as go

    config, result = tiny
    figure = grokking_modadd.explorer_spec(result)
    go.Figure(figure)  # a valid plotly figure
    k, runs = config.lanczos_k, result.runs
    assert len(figure["frames"]) == sum(len(r.checkpoints) for r in runs)
    frames = {f["name"]: f for f in figure["frames"]}
    for i, r in enumerate(runs):
        for t, step in enumerate(r.checkpoints):
            spectrum, *_, marker = frames[f"run{i}-ckpt{t}"]["data"]
            # all 2k extremes (nothing to decimate at 2k values), exactly, in ascending order
            assert np.array_equal(_decode(spectrum["customdata"]), np.sort(r.extremes[t]))
            assert _decode(spectrum["customdata"]).size == 2 * k
            assert _decode(marker["x"]).tolist() == [step, step]
    # one run per dropdown entry, reference first and control last; each slider walks that run's checkpoints
    buttons = figure["layout"]["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == [r.label for r in runs] and runs[-1].spec.role == "control"
    for b, r in zip(buttons, runs):
        assert [float(s["label"]) for s in b["args"][1]["sliders"][0]["steps"]] == r.checkpoints.tolist()
    # the curves: the reference run's logged test loss and its progress measures at its checkpoints
    curves = {trace["name"]: trace for trace in figure["data"][4:-1]}
    assert list(curves) == list(grokking_modadd.EXPLORER_CURVES)
    reference = result.reference
    assert _decode(curves["test loss"]["x"]).tolist() == reference.curves["step"].tolist()
    assert np.allclose(_decode(curves["test loss"]["y"]), reference.curves["test_loss"], rtol=1e-6, equal_nan=True)
    assert np.allclose(_decode(curves["Gini of W_U (Fourier)"]["y"]), reference.progress["gini_unembedding"],
                       rtol=1e-6, equal_nan=True)
    # the titles say these are the extremes, not the whole spectrum
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert f"the {k} smallest and {k} largest λ (Lanczos)" in titles
    assert f"n(ε) of these {2 * k} λ; the bulk is one gap" in titles


def test_explorer_glue_is_what_its_first_and_last_frames_show(tiny):
    _, result = tiny
    glued = result.glued()
    reference = result.reference
    # independently of the explorer: the reference run's first and last checkpoints and their largest Lanczos value
    assert glued["explorer_step_first"] == reference.checkpoints[0] and glued["explorer_step_first"] == 0
    assert glued["explorer_step_last"] == reference.checkpoints[-1]
    assert glued["explorer_lmax_first"] == reference.extremes[0].max()
    assert glued["explorer_lmax_last"] == reference.extremes[-1].max()
    assert isinstance(glued["explorer_step_last"], int) and isinstance(glued["explorer_lmax_last"], float)
    pytest.importorskip("plotly")
    frames = {f["name"]: f["data"] for f in grokking_modadd.explorer_spec(result)["frames"]}
    for which, t in (("first", 0), ("last", len(reference.checkpoints) - 1)):
        spectrum, *_, marker = frames[f"run0-ckpt{t}"]
        assert _decode(spectrum["customdata"]).max() == glued[f"explorer_lmax_{which}"]  # bit for bit
        assert _decode(marker["x"]).tolist() == [glued[f"explorer_step_{which}"]] * 2
    # the page's element: that figure, with the checks the browser test makes at its first and last checkpoints
    from hessian_book.explorer import FIRST_AND_LAST

    fragment = grokking_modadd.explorer(result).data
    (checks,) = re.findall(r"data-checks='([^']*)'", fragment)
    assert json.loads(html.unescape(checks)) == [dict(c) for c in FIRST_AND_LAST]
    assert set(c[k] for c in FIRST_AND_LAST for k in ("step", "lambda_max")) <= set(glued)
    n_frames = sum(len(r.checkpoints) for r in result.runs)
    assert len(re.findall(r'"name":\s*"run\d+-ckpt\d+"', fragment)) == n_frames


def test_analysis_stores_are_children_keyed_by_their_own_parameters(tmp_path):
    fake = SimpleNamespace(store=ResultStore(tmp_path, "grokking_modadd", dict(p=113, seed=0)))
    config = grokking_modadd.Config(results_dir=str(tmp_path))
    stores = grokking_modadd.analysis_stores(config, fake)
    base = dict(run=fake.store.key, hessian_samples=200, subsample="stratified")
    assert stores["lanczos"].params == dict(base, k=6, tol=1e-4, block=4, solver="warm")
    assert stores["slq"].params == dict(base, probes=3, steps=30)
    assert stores["dense"].params == dict(base, n_vectors=50)
    other = grokking_modadd.analysis_stores(grokking_modadd.Config(results_dir=str(tmp_path), slq_steps=20), fake)
    assert other["slq"].key != stores["slq"].key
    assert other["lanczos"].key == stores["lanczos"].key and other["dense"].key == stores["dense"].key


# ---------------------------------------------------------------------------------------------- fan-out on Dask

DASK = dict(preset="smoke", **TINY_MODEL, n_steps=40, n_log_checkpoints=3, log_grid_end=40, sparse_every=1000,
            n_replicates=1, hessian_samples=23)


def test_runs_fan_out_to_a_dask_cluster_with_the_serial_results(tmp_path):
    import os

    distributed = pytest.importorskip("distributed")
    from hessian_book.fanout import run_tasks

    configs = {where: grokking_modadd.Config.from_parameters(dict(DASK, results_dir=str(tmp_path / where)))
               for where in ("serial", "dask")}
    specs = configs["serial"].runs()
    tasks = {where: [dict(config=c, kind="run", spec=vars(s).copy()) for s in specs] for where, c in configs.items()}
    serial = run_tasks(grokking_modadd.task, tasks["serial"], scheduler="serial")
    assert {r.pid for r in serial} == {os.getpid()}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        worker_pids = set(client.run(os.getpid).values())
        results = run_tasks(grokking_modadd.task, tasks["dask"], scheduler=cluster.scheduler_address)
    ran_in = {r.pid for r in results}
    assert ran_in <= worker_pids and os.getpid() not in ran_in
    assert [r.value for r in results] == [r.value for r in serial]
    for spec in specs:  # the stored analyses agree, number for number
        a = grokking_modadd.analyse_run(configs["serial"], spec, progress=False)
        b = grokking_modadd.analyse_run(configs["dask"], spec, progress=False)
        assert np.allclose(a.extremes, b.extremes, rtol=1e-10, atol=0)
        pd.testing.assert_frame_equal(a.curves.drop(columns=[]), b.curves, rtol=1e-12)
        pd.testing.assert_frame_equal(a.progress.drop(columns="seconds"), b.progress.drop(columns="seconds"),
                                      rtol=1e-10)


def test_recipe_sentence_says_only_what_is_defined():
    from hessian_book.chapters.grokking_modadd import RecipeCurves, recipe_sentence

    never = RecipeCurves(label="a", steps=np.array([0, 10]), train_acc=np.array([0.1, 0.5]),
                         test_acc=np.array([0.0, 0.2]), memorised=None, generalised=None, ratio=None, test2x=None,
                         groks=False)
    text = recipe_sentence(never, 10)
    assert "never reaches 99 % within 10 steps" in text and "nan" not in text.lower()
    grokked = RecipeCurves(label="b", steps=np.array([0, 100, 600]), train_acc=np.array([0.1, 1.0, 1.0]),
                           test_acc=np.array([0.0, 0.3, 0.99]), memorised=100, generalised=600, ratio=6.0,
                           test2x=30.0, groks=True)
    text = recipe_sentence(grokked, 600)
    assert "step 100" in text and "step 600 (6.0× later)" in text and "groks within 600 steps by the definition" in text


def test_plateau_word_against_binomial_noise():
    from hessian_book.chapters.grokking_modadd import plateau_word

    # chance 1/113 = 0.885 %; 3 standard errors on 8,938 test pairs: +0.30 %
    assert plateau_word([0.33, 0.36], p=113, n_test=8938) == "above chance"
    assert plateau_word([0.0089, 0.0090], p=113, n_test=8938) == "at chance"
    assert plateau_word([0.0089, 0.33], p=113, n_test=8938) == "above chance in some runs"
    assert plateau_word([], p=113, n_test=8938) == ""
