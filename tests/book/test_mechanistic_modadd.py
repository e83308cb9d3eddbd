"""The mechanistic chapter: configuration (defaults = the notebook's parameters cell, nested chapter configs, named
errors before any work), its small statistics and words, the MLP runs (reading the depth chapter's run when it
exists), and a smoke-sized run that glues every name of the prose and reads its stores back."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hessian_book.chapters import grokking_modadd, mechanistic_modadd, mlp_depth_modadd
from hessian_book.chapters.mechanistic_modadd import (Config, ablation_word, circle_ratio,
                                                      concentration_word, pooled_share, probe_run,
                                                      stand_in_frequencies)
from hessian_book.circuit import planted_circuit_model
from hessian_book.config import ConfigError
from hessian_book.fourier import fourier_basis
from hessian_book.mechanism import block_slices, frequency_rows, token_subspace_basis
from hessian_book.runs import modadd_mlp_run
from tests.cases import TINY_TRANSFORMER

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "mechanistic_modadd.md"
TINY_GROKKING = dict(TINY_TRANSFORMER, n_steps=300)  # tests/cases.py


def test_presets_build_and_pass_down_to_the_chapters_read():
    full = Config.from_parameters({})
    assert full.grokking == grokking_modadd.Config() and full.depth == mlp_depth_modadd.Config()
    assert not full.smoke
    smoke = Config.from_parameters({"preset": "smoke", "grokking": {}, "depth": {}})
    assert smoke.smoke and smoke.grokking.p == 23 and smoke.depth.n_steps == 200
    assert smoke.grokking.results_dir == smoke.depth.results_dir == smoke.results_dir
    assert smoke.scheduler == "serial" and smoke.probe_widths == [16, 32]


def test_explicit_values_override_the_preset():
    config = Config.from_parameters({"preset": "smoke", "n_eigenvectors": 9, "grokking": {"n_steps": 200}})
    assert config.n_eigenvectors == 9 and config.grokking.n_steps == 200 and config.grokking.p == 23


@pytest.mark.parametrize("parameters, name", [
    ({"picks": []}, "picks="), ({"picks": ["late"]}, "picks="), ({"picks": ["after", "after"]}, "picks="),
    ({"matrices": ["fisher"]}, "matrices="), ({"n_eigenvectors": 1}, "n_eigenvectors="),
    ({"n_ablation_draws": 19}, "n_ablation_draws="), ({"n_null": 10}, "n_null="), ({"n_boot": 0}, "n_boot="),
    ({"cluster_eps": 0.0}, "cluster_eps="), ({"cluster_eps": 0.03}, "cluster_eps="),
    ({"eps_grid": []}, "eps_grid="), ({"eps_grid": [0.02, -1.0]}, "eps_grid="), ({"n_test_draws": 50}, "n_test_draws="),
    ({"n_error_sims": 10}, "n_error_sims="), ({"n_eigenvectors": 6}, "n_eigenvectors="),
    ({"probe_fraction": 1.0}, "probe_fraction="),
    ({"probe_widths": [16, 16]}, "probe_widths="), ({"probe_widths": [0]}, "probe_widths="),
    ({"probe_seeds": []}, "probe_seeds="), ({"probe_ridge": -1.0}, "probe_ridge="),
    ({"scheduler": "nowhere"}, "scheduler="), ({"grokking": {"p": 24}}, "p="), ({"depth": {"p": 96}}, "depth.p="),
    ({"grokking": {"bogus": 1}}, "grokking"),
])
def test_bad_parameters_are_named_before_any_work(parameters, name, monkeypatch):
    monkeypatch.setattr(grokking_modadd, "main_run", lambda *a, **k: pytest.fail("work before validation"))
    with pytest.raises(ConfigError, match=re.escape(name)):
        Config.from_parameters(parameters)


def test_stand_in_frequencies_are_the_largest_norms():
    norms = np.array([9.0, 0.1, 3.0, 0.2, 5.0, 1.0])  # index 0 (the constant) is skipped
    assert stand_in_frequencies(norms, 2) == [2, 4]


def test_circle_ratio_of_a_circle_and_of_a_line():
    p = 23
    F = fourier_basis(p)
    circle = torch.stack([F[5], F[6]], dim=1)            # cos 3, sin 3 in two residual directions
    line = torch.stack([F[5], 2 * F[5]], dim=1)          # cos 3 only
    assert circle_ratio(circle, p, 3) == pytest.approx(1.0)
    assert circle_ratio(line, p, 3) == pytest.approx(0.0, abs=1e-12)


def test_pooled_share_weights_vectors_by_their_block_weight():
    model = planted_circuit_model(23, [3], seed=0)
    n = sum(p.numel() for p in model.parameters())
    sl = block_slices(model)["W_E"]
    B = token_subspace_basis(model, "W_E", frequency_rows(23, [3])).numpy()
    V = np.zeros((n, 2))
    V[sl, 0] = 3 * B[:, 0]                                  # entirely in frequency 3, block weight 9
    other = token_subspace_basis(model, "W_E", frequency_rows(23, [5])).numpy()
    V[sl, 1] = other[:, 0]                                  # entirely outside, block weight 1
    V[sl.stop, 1] = 5.0                                     # weight outside the block does not count
    V /= np.linalg.norm(V, axis=0)
    # shares (1, 0) weighted by the vectors' block masses (1, 1/26)
    assert pooled_share(V, model, "W_E", frequency_rows(23, [3])) == pytest.approx(1 / (1 + 1 / 26), rel=1e-9)


def test_words_render_no_verdict_at_the_smoke_preset():
    assert concentration_word(0.9, 0.1, smoke=True) == mechanistic_modadd.SMOKE_WORDS
    assert concentration_word(0.9, 0.1, smoke=False).startswith("lies above")
    assert concentration_word(0.05, 0.1, smoke=False).startswith("lies inside")
    assert concentration_word(0.05, 0.1, smoke=False, null_q05=0.06).startswith("lies below")
    assert ablation_word(0.0, 1.0, np.array([0.9, 1.0]), smoke=True) == mechanistic_modadd.SMOKE_WORDS
    assert ablation_word(0.01, 1.0, np.array([0.9, 1.0]), smoke=False).startswith("hurts more than every one of "
                                                                                    "the 2")
    assert ablation_word(0.95, 1.0, np.array([0.9, 1.0]), smoke=False).startswith("does not hurt")


def test_probe_run_reads_the_depth_chapters_run(tmp_path):
    recipe = dict(p=7, depth=2, input_encoding="onehot", train_fraction=0.5, split_seed=0, n_steps=20, lr=3e-3,
                  weight_decay=1.0, betas=[0.9, 0.98], log_every=10)
    depth_run = modadd_mlp_run(tmp_path, width=8, seed=0, hessian_every=10, lanczos_tol=1e-2,
                               hessian_dtype="float32", progress=False, **{**recipe, "betas": (0.9, 0.98)})
    store, log = probe_run(str(tmp_path), width=8, seed=0, depth_chapter_hessian_every=10, **recipe)
    assert store.directory.parent.name == "mlp_depth_modadd" and log == depth_run["log"]
    own, own_log = probe_run(str(tmp_path), width=8, seed=0, depth_chapter_hessian_every=None, **recipe)
    assert own.directory.parent.name == "mechanistic_modadd_mlp"
    assert own_log[-1]["train_acc"] == pytest.approx(log[-1]["train_acc"])  # the same training
    assert own.names() == ["checkpoint_0000000", "checkpoint_0000020"]


# ---- a smoke-sized run -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mechanistic")
    # n_eigenvectors 8, as before the smoke preset took 13 (for its 4 key frequencies): this tiny model has none
    config = Config.from_parameters({"preset": "smoke", "results_dir": str(directory), "grokking": TINY_GROKKING,
                                     "n_eigenvectors": 8,
                                     "depth": {"n_steps": 100, "log_every": 20, "hessian_every": 100},
                                     "matrices": ["hessian", "gauss_newton", "block_hessian", "gradient_covariance"]})
    # from_parameters lets a default value (seed 0, split 0, train_fraction 0.3) lose to the preset's: set them here
    import dataclasses

    config = dataclasses.replace(config, grokking=dataclasses.replace(config.grokking, seed=0, split_seed=0,
                                                                      train_fraction=0.3))
    return config, mechanistic_modadd.run(config, progress=False)


def _notebook_glue_names() -> set[str]:
    return set(re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)", NOTEBOOK.read_text()))


def test_run_glues_every_name_of_the_prose(smoke):
    config, result = smoke
    glued = result.glued()
    assert _notebook_glue_names() - set(glued) == set()
    assert glued["answer"].startswith("Smoke run: no verdict")
    assert all(v == mechanistic_modadd.SMOKE_WORDS for k, v in glued.items() if k.endswith("_word")
               and k != "grokked_word")
    assert glued["n_probe_runs"] == 2 and len(result.analysed_frequencies) >= 1


def test_tables_are_dataframes_with_shares_in_range(smoke):
    config, result = smoke
    for table in (result.effects, result.concentration, result.circuit, result.controls, result.probes,
                  result.ablation_table()):
        assert isinstance(table, pd.DataFrame) and len(table)
    shares = result.concentration.share.dropna()
    assert ((shares >= 0) & (shares <= 1 + 1e-9)).all()
    assert set(result.concentration.matrix) == set(config.matrices)
    assert set(result.probes.layer) == {"input", "hidden 1", "hidden 2", "logits"}
    # a mod 2 is a linear function of the one-hot input: readable at initialisation too (the control's point)
    rows = result.probes[(result.probes.concept == "a mod 2") & (result.probes.layer == "input")]
    assert (rows.trained == 1.0).all() and (rows.at_init == 1.0).all()


def test_rerun_reads_the_stores(smoke, monkeypatch):
    config, result = smoke
    import hessian_book.mechanism as mechanism

    monkeypatch.setattr(mechanistic_modadd, "curvature_eigenpairs", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(mechanistic_modadd, "hessian_top_eigenpairs", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(mechanistic_modadd, "_analyse_mlp", lambda *a, **k: pytest.fail("recomputed"))
    again = mechanistic_modadd.run(config, progress=False)
    pd.testing.assert_frame_equal(again.concentration, result.concentration)
    pd.testing.assert_frame_equal(again.probes, result.probes)
    pd.testing.assert_frame_equal(again.circuit, result.circuit)
    pd.testing.assert_frame_equal(again.controls, result.controls)
    assert mechanism  # imported for the monkeypatch target's module


def test_figures_draw(smoke):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, result = smoke
    for name in mechanistic_modadd.__all__:
        if name.startswith("plot_"):
            fig = getattr(mechanistic_modadd, name)(result)
            assert fig.axes, name
            plt.close(fig)


def test_smoke_controls_answer_as_they_must(smoke):
    """In the smoke run: the weight-decay-0 run (at every pick) and the untrained model answer no, the planted key
    planes yes and the planted random planes no, at every ε; the glued words say so."""
    config, result = smoke
    ctl = result.controls
    assert set(ctl.control) == {"weight decay 0 (negative)", "untrained (negative)",
                                "planted key planes (positive)", "planted random planes (negative)"}
    assert (ctl.answer == ctl.must).all(), ctl[["control", "pick", "eps", "answer", "must"]]
    assert len(ctl) == (3 + 1 + 1 + 1) * len(config.eps_grid)
    glued = result.glued()
    assert glued["controls_ok"].startswith("every control answers as it must")
    assert glued["control_planted"] == "yes at after" and glued["control_untrained"] == "no at init"
    assert glued["fpr_pct"] <= 5.0 and glued["power_full_pct"] == 100.0
    # the test ran on every run of the recipe at before, during, after, at every ε
    assert set(result.circuit.pick) == {"before", "during", "after"}
    assert len(result.circuit) == result.circuit.run.nunique() * 3 * len(config.eps_grid)
    assert ((result.circuit.filter(like="p Holm") >= 0) & (result.circuit.filter(like="p Holm") <= 1)).all().all()
    assert len(result.subsample["cosines"]) == config.n_eigenvectors


def test_too_few_eigenvectors_for_the_runs_key_frequencies_is_a_config_error(smoke, monkeypatch):
    """Validation cannot know how many key frequencies a run has; once known, and before any curvature is
    computed, too few eigenvectors for their planes is an error naming the parameter (the run is read, not
    trained again)."""
    config, _ = smoke
    monkeypatch.setattr(mechanistic_modadd, "key_frequencies", lambda acts: [1, 2, 3, 4])  # 4 planes: 9 vectors
    for name in ("_top_hessian", "_eigenpairs"):
        monkeypatch.setattr(mechanistic_modadd, name, lambda *a, **k: pytest.fail("curvature before the check"))
    with pytest.raises(ConfigError, match=r"n_eigenvectors=8 must be >= 9 .*4 frequencies to test \(1, 2, 3, 4\)"):
        mechanistic_modadd.run(config, progress=False)


def test_eigenpairs_read_the_grokking_chapters_dense_spectrum_where_it_exists(tmp_path):
    """A stored full spectrum of the grokking chapter is read instead of Lanczos, and agrees with Lanczos."""
    config = Config.from_parameters({"preset": "smoke", "results_dir": str(tmp_path), "n_eigenvectors": 7,
                                     "grokking": {**TINY_GROKKING, "n_steps": 60, "sparse_every": 1000,
                                                  "n_log_checkpoints": 4, "n_vectors": 7, "log_grid_end": 60}})
    g = config.grokking
    run = grokking_modadd.main_run(g, progress=False)
    step = run.checkpoint_steps[-1]
    batch = grokking_modadd.hessian_batch(g)
    lanczos_pairs = mechanistic_modadd._eigenpairs(config, run, step, "hessian", batch)
    assert lanczos_pairs.source == "lanczos"
    grokking_modadd._dense(g, run, step)  # the grokking chapter stores the full spectrum at this step
    dense_pairs = mechanistic_modadd._eigenpairs(config, run, step, "hessian", batch)
    assert dense_pairs.source == "dense"
    assert np.allclose(dense_pairs.top_values, lanczos_pairs.top_values, rtol=1e-4)
    assert np.allclose(dense_pairs.bottom_values, lanczos_pairs.bottom_values, atol=1e-4 * lanczos_pairs.top_values[0])
    overlap = np.abs(np.sum(dense_pairs.top_vectors[:, :1] * lanczos_pairs.top_vectors[:, :1]))
    assert overlap > 0.99


def test_answer_counts_the_generalised_runs_with_key_frequencies(smoke):
    """The non-smoke answer, from the smoke run's tables relabelled: runs are counted only when they generalised
    and have key frequencies, the count is read per pick at the primary ε, and a control that answers wrongly
    replaces the answer by "No answer"."""
    import dataclasses

    config, result = smoke
    full = dataclasses.replace(result, config=dataclasses.replace(config, preset="full"))
    assert full.glued()["answer"].startswith("None of the")
    circuit = result.circuit.copy()
    first = circuit.run == circuit.run.iloc[0]
    circuit.loc[first, ["generalised", "has_key"]] = True
    circuit.loc[first & (circuit.pick == "after"), "answer"] = "yes"
    glued = dataclasses.replace(full, circuit=circuit).glued()
    assert glued["circuit_n_runs"] == 1 and glued["circuit_yes_after"] == 1 and glued["circuit_yes_before"] == 0
    assert "in 1 of 1 runs after the transition" in glued["answer"]
    controls = result.controls.copy()
    controls.loc[controls.control == "untrained (negative)", "answer"] = "yes"
    wrong = dataclasses.replace(full, circuit=circuit, controls=controls).glued()
    assert wrong["answer"].startswith("No answer: the test does not answer as it must on untrained (negative)")
