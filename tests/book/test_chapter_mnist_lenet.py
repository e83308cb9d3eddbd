"""The MNIST chapter: its configuration (defaults = the notebook's parameters cell, validation naming the bad
parameter, presets), the small analyses it moved out of the notebook, its stores and its result."""

import dataclasses
import os
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hessian_book.chapters import mnist_lenet  # noqa: E402
from hessian_book.config import ConfigError  # noqa: E402
from hessian_book.measure import HessianSpectrum  # noqa: E402
from hessian_book.runs import hessian_subsample  # noqa: E402
from hessian_book.store import ResultStore  # noqa: E402
from hessian_core import cluster_counts, spectrum_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
needs_mnist = pytest.mark.skipif(not os.environ.get("MNIST_DATA_DIR"), reason="MNIST_DATA_DIR not set")

# The glue names of the chapter's prose (as glued by the notebook before the port).
GLUE_NAMES = {
    "explorer_step_first", "explorer_lmax_first", "explorer_step_last", "explorer_lmax_last",
    "n_checkpoints", "final_step", "final_test_acc", "final_lambda_max", "final_lambda_min", "final_frac_small",
    "final_gap1", "final_gap2", "n_above_gap", "final_n_negative", "seconds_train", "seconds_hessians",
    "seconds_eigendecompositions", "seconds_larger_subsample", "seconds_total", "wall_minutes", "n_workers",
    "seconds_per_hessian", "hessian_samples", "compare_samples", "final_n_negative_tol", "final_zero_tol",
    "final_n_below_001", "final_n_above_001", "final_negative_mass", "lambda_max_vs_seed", "acc_vs_seed",
    "lambda_min_vs_seed", "frac_small_vs_seed", "plateau_n", "plateau_factor", "plateau_lo", "plateau_hi",
    "n_compare", "big_lambda_max", "big_lambda_min", "big_gap1", "big_n_above_gap", "big_step",
    "small_lambda_max", "small_lambda_min", "small_gap1", "big_frac_small", "ratio_min", "ratio_max",
}
# Added for issue 13: the draws, the subsample sizes, the Gauss-Newton part, outliers, eigenvectors, relative gaps.
ANALYSIS_NAMES = {
    "negative_word", "seed_source", "n_draws", "n_dense_draws", "draw_step", "n_draw_checkpoints", "draw_lmax_median",
    "draw_lmax_lo", "draw_lmax_hi", "draw_gap_lo", "draw_gap_hi", "draw_zero_lo", "draw_zero_hi", "seed_lambda_max",
    "seed_gap1", "seed_frac_small", "seed_lmax_verdict", "seed_gap_verdict", "seed_zero_verdict", "own_lmax_verdict",
    "relative_spread_lmax", "relative_spread_zero", "bulk_sentence", "n_vectors_glue", "n_classes", "n_parameters",
    "size_small", "size_big", "rank_bound_small", "rank_share_small", "rank_share_hessian", "rank_bound_hessian",
    "zero_small", "zero_big", "zero_vs_n_word", "lmax_small_size", "lmax_big_size", "gn_rank_big", "gn_bound_big",
    "gn_rank_small", "gn_bound_small", "gn_rank_word", "gn_rel_diff", "gn_lmax_big", "gn_lmin_big", "gn_zero_big",
    "n_outliers_big", "papyan_c", "papyan_cc", "papyan_word", "big_n_above_gap_size", "top_layer", "top_layer_share",
    "top_layer_param_share", "rel_window", "rel_gap_small", "rel_gap_small_at", "rel_gap_small_above", "rel_gap_big",
    "rel_gap_big_at", "rel_gap_big_above", "seconds_draws", "seconds_sizes",
}




# ------------------------------------------------------------------------------------------------- configuration



@pytest.mark.parametrize("name, value", [
    ("epochs", 0), ("batch_size", 1.5), ("lr", -0.1), ("lr", float("nan")), ("momentum", 1.0), ("momentum", -0.1),
    ("seed", -1), ("n_train", -5), ("n_train", 70000), ("n_test", 20000), ("hessian_samples", 0),
    ("compare_samples", True), ("n_compare_checkpoints", 0), ("n_vectors", 3000), ("data_dir", 3),
    ("preset", "huge"), ("results_dir", None),
])
def test_bad_parameter_raises_naming_it(name, value):
    with pytest.raises(ConfigError, match=rf"\b{name}="):
        mnist_lenet.Config.from_parameters({name: value})


def test_subsamples_must_fit_the_training_images():
    with pytest.raises(ConfigError, match=r"compare_samples=500 exceeds the 300"):
        mnist_lenet.Config(n_train=300, results_dir="x")
    with pytest.raises(ConfigError, match=r"hessian_samples=50 exceeds the 40"):
        mnist_lenet.Config(n_train=40, compare_samples=20, results_dir="x")


def test_validation_comes_before_any_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("reached the training run")

    monkeypatch.setattr(mnist_lenet, "mnist_lenet_run", no_work)
    with pytest.raises(ConfigError, match="n_vectors"):
        mnist_lenet.run(mnist_lenet.Config.from_parameters({"preset": "smoke", "n_vectors": 0}))


def test_presets_build_and_explicit_values_win():
    full = mnist_lenet.Config.from_parameters({"preset": "full"})
    assert full == mnist_lenet.Config()
    smoke = mnist_lenet.Config.from_parameters({"preset": "smoke"})
    assert (smoke.n_train, smoke.n_test, smoke.epochs, smoke.n_vectors) == (640, 1000, 2, 5)
    assert smoke.results_dir and Path(smoke.results_dir).is_dir()  # a fresh temporary directory
    overridden = mnist_lenet.Config.from_parameters({"preset": "smoke", "epochs": 3, "n_test": 500,
                                                     "results_dir": "elsewhere"})
    assert (overridden.epochs, overridden.n_test, overridden.results_dir) == (3, 500, "elsewhere")
    assert overridden.hessian_samples == 10  # the rest from the preset


# ------------------------------------------------------------------------------------------ analyses moved here

def test_spread_indices():
    assert mnist_lenet.spread_indices(25, 3) == [0, 12, 24]
    assert mnist_lenet.spread_indices(3, 2) == [0, 2]
    assert mnist_lenet.spread_indices(2, 5) == [0, 1]  # duplicates dropped
    assert mnist_lenet.spread_indices(7, 1) == [0]
    with pytest.raises(ValueError):
        mnist_lenet.spread_indices(0, 2)


def test_n_above_largest_gap():
    assert mnist_lenet.n_above_largest_gap(np.array([0.0, 0.1, 0.2, 5.0, 5.1])) == 2
    assert mnist_lenet.n_above_largest_gap(np.array([-4.0, 0.0, 0.1, 0.1])) == 3  # ties above count
    with pytest.raises(ValueError):
        mnist_lenet.n_above_largest_gap(np.ones(4))


def test_widest_plateau_hand_computed():
    # gaps 100, 20, 1, 0.5: consecutive ratios 5, 20, 2, so n(eps) = 3 for eps in [1, 20), a factor 20.
    lam = np.array([0.0, 1.0, 1.5, 21.5, 121.5])
    plateau = mnist_lenet.widest_plateau(lam)
    assert plateau == mnist_lenet.Plateau(n_clusters=3, factor=20.0, eps_low=1.0, eps_high=20.0)


def test_widest_plateau_against_cluster_counts():
    rng = np.random.default_rng(3)
    lam = np.sort(np.concatenate([rng.normal(0, 0.01, 200), [0.5, 0.9, 4.0, 30.0]]))
    plateau = mnist_lenet.widest_plateau(lam)
    # Reference: scan n(eps) on a fine log grid, longest run (in log eps) of one value >= 2.
    eps = np.logspace(-6, 3, 90001)
    counts = cluster_counts(lam, eps)
    log_eps = np.log10(eps)
    best, best_count, start = 0.0, None, 0
    for i in range(1, len(eps) + 1):
        if i == len(eps) or counts[i] != counts[start]:
            if counts[start] >= 2 and log_eps[i - 1] - log_eps[start] > best:
                best, best_count = log_eps[i - 1] - log_eps[start], counts[start]
            start = i
    assert plateau.n_clusters == best_count
    assert np.log10(plateau.factor) == pytest.approx(best, abs=1e-3)
    assert cluster_counts(lam, [plateau.eps_low, plateau.eps_high * (1 - 1e-9)]).tolist() == [best_count] * 2


def test_hessian_batch_is_the_seeded_prefix():
    config = mnist_lenet.Config(seed=7, results_dir="x")
    x, y = torch.randn(100, 1, 28, 28), torch.arange(100) % 10

    class FakeRun:
        train = (x, y)

    small = mnist_lenet.hessian_batch(config, run=FakeRun())
    large = mnist_lenet.hessian_batch(config, 80, run=FakeRun())
    reference = hessian_subsample(x, y, 50, 8)
    assert len(small[0]) == config.hessian_samples == 50
    assert torch.equal(small[0], reference[0]) and torch.equal(small[1], reference[1])
    assert torch.equal(large[0][:50], small[0])


def test_analysis_stores_are_children_keyed_by_their_own_parameters(tmp_path):
    class FakeRun:
        store = ResultStore(tmp_path, "mnist_lenet", dict(seed=42, epochs=30))

    config = mnist_lenet.Config(results_dir=str(tmp_path))
    spectra = mnist_lenet.spectra_store(config, FakeRun())
    assert spectra.params == dict(run=FakeRun.store.key, hessian_samples=50, n_vectors=50)
    more = mnist_lenet.Config(results_dir=str(tmp_path), n_vectors=10)
    assert mnist_lenet.spectra_store(more, FakeRun()).key != spectra.key
    assert mnist_lenet.compare_store(more, FakeRun()).key == mnist_lenet.compare_store(config, FakeRun()).key


# ---------------------------------------------------------------------------------------------- result, figures

def _fake_spectrum(model, batch, *, n_vectors):
    """A cheap stand-in for dense_spectrum: eigenvalues that depend on the model and the batch size."""
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).double().numpy()[:300]
    lam = np.sort(np.concatenate([weights * len(batch[0]), [3.0 * len(batch[0]), 9.0 * len(batch[0])]]))
    P = sum(p.numel() for p in model.parameters())
    return HessianSpectrum(eigenvalues=lam, top_vectors=np.ones((P, n_vectors)),
                           bottom_vectors=np.ones((P, n_vectors)), seconds_hessian=1.0, seconds_eig=2.0)


@needs_mnist
def test_run_glues_every_name_and_never_retrains_for_an_analysis_setting(tmp_path, monkeypatch):
    calls = []

    def fake(model, batch, *, n_vectors):
        calls.append((len(batch[0]), n_vectors))
        return _fake_spectrum(model, batch, n_vectors=n_vectors)

    def fake_top(model, batch):
        calls.append(("top", len(batch[0])))
        return dict(lambda_max=float(_fake_spectrum(model, batch, n_vectors=1).eigenvalues[-1]), seconds=0.5)

    def fake_dense(model, batch):
        calls.append(("dense", len(batch[0])))
        return dict(eigenvalues=_fake_spectrum(model, batch, n_vectors=1).eigenvalues, seconds=1.5)

    def fake_sizes(model, batch, sizes):
        calls.append(("sizes", len(batch[0]), tuple(sizes)))
        h = [_fake_spectrum(model, (batch[0][:n], None), n_vectors=1).eigenvalues for n in sizes]
        return dict(hessian=h, gauss_newton=[np.abs(lam) for lam in h], relative_difference=0.1, seconds=4.0)

    monkeypatch.setattr(mnist_lenet, "dense_spectrum", fake)
    monkeypatch.setattr(mnist_lenet, "_draw_top", fake_top)
    monkeypatch.setattr(mnist_lenet, "_draw_dense", fake_dense)
    monkeypatch.setattr(mnist_lenet, "_size_spectra", fake_sizes)
    config = mnist_lenet.Config.from_parameters({"preset": "smoke", "results_dir": str(tmp_path)})
    result = mnist_lenet.run(config, progress=False)
    # The tasks, longest first: the sizes; the dense draws (the first 2 at the last checkpoint); the larger
    # subsample at the first checkpoint only (the last one's is the sizes' 20 images); 3 spectra; the other draws.
    # Reading back afterwards computes nothing.
    assert calls == ([("sizes", 20, (10, 20))] + [("top", 10), ("dense", 10)] * 2 + [(20, 1)] + [(10, 5)] * 3
                     + [("top", 10)] * 4 + [("top", 10)] * 2)
    glued = result.glued()
    assert set(glued) == GLUE_NAMES | ANALYSIS_NAMES
    assert glued["n_checkpoints"] == 3 and glued["final_step"] == 10 and glued["n_compare"] == 2
    assert result.timings == dict(train=result.timings["train"], hessians=3.0, eigendecompositions=6.0,
                                  larger_subsample=3.0, draws=4 * 0.5 + 4 * 0.5 + 2 * 1.5, sizes=4.0)
    assert len(result.workers) == 1 and result.wall["this_run"] >= result.wall["until_tasks_done"] > 0
    assert glued["seed_lmax_verdict"] == "is not judged (smoke run)"
    assert result.draws["step"].tolist() == [0] * 4 + [10] * 4
    assert result.draws["near_zero"].notna().sum() == 2
    assert result.sizes["images"].tolist() == [10, 20] and result.sizes["gn_rank_bound"].tolist() == [90, 180]
    assert glued["ratio_min"] == pytest.approx(0.5) and glued["ratio_max"] == pytest.approx(0.5)
    assert result.check_summary().splitlines() == ["checkpoints: 3, final step: 10",
                                                   "eigenvalues per checkpoint: [302]",
                                                   "every spectrum ascending and finite: True"]
    table = result.subsample_comparison
    assert table[["step", "images"]].values.tolist() == [[0, 10], [0, 20], [10, 10], [10, 20]]
    assert table["lambda_max"].tolist() == [90.0, 180.0, 90.0, 180.0]
    assert result.seed_comparison.loc["final step", "ours"] == 10

    checkpoints = sorted(p for p in tmp_path.glob("mnist_lenet/*/checkpoint_*.pt"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    calls.clear()
    again = mnist_lenet.run(mnist_lenet.Config.from_parameters(
        {"preset": "smoke", "results_dir": str(tmp_path), "n_vectors": 4}), progress=False)
    assert calls == [(10, 4)] * 3  # new spectra; the larger subsample, the draws, the sizes and the training are read
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert len(list(tmp_path.glob("mnist_lenet/*"))) == 1
    pd.testing.assert_frame_equal(again.curves, result.curves)


def _synthetic_result(tmp_path) -> mnist_lenet.Result:
    rng = np.random.default_rng(0)
    steps = [0, 5, 10, 20]
    eigenvalues = [np.sort(np.concatenate([rng.normal(0, 0.05, 120), [2.0 + s, 5.0 + s]])) for s in steps]
    curves = pd.DataFrame(dict(step=steps, train_loss=[2.3, 1.0, 0.5, 0.3], train_acc=[0.1, 0.6, 0.8, 0.9],
                               test_loss=[2.3, 1.1, 0.6, 0.4], test_acc=[0.1, 0.55, 0.75, 0.85]))
    return mnist_lenet.Result(
        config=mnist_lenet.Config(results_dir=str(tmp_path)), curves=curves, eigenvalues=eigenvalues,
        stats=pd.DataFrame([spectrum_stats(lam) for lam in eigenvalues], index=steps),
        compare_steps=[0, 20], compare_eigenvalues={0: eigenvalues[0] / 2, 20: eigenvalues[-1] / 4},
        seed_comparison=pd.DataFrame(), subsample_comparison=pd.DataFrame(dict(step=[0], images=[50], trace=[1.23456])),
        conv1_filters=rng.normal(size=(4, 1, 5, 5)), spectra_dir=tmp_path,
        timings=dict(train=1.0, hessians=4.0, eigendecompositions=8.0, larger_subsample=3.0, draws=2.0, sizes=5.0),
        **_synthetic_analyses(eigenvalues, steps, rng))


def _synthetic_analyses(eigenvalues, steps, rng) -> dict:
    P = len(eigenvalues[0])
    draws = pd.DataFrame([dict(step=s, draw=i, lambda_max=10.0 + i + s, largest_gap=np.nan, near_zero=np.nan,
                               n_above_gap=np.nan) for s in (0, 20) for i in range(5)])
    dense = draws["step"] == 20
    draws.loc[dense, "largest_gap"] = [30.0, 35.0, 40.0, 45.0, 50.0]
    draws.loc[dense, "near_zero"] = [80.0, 82.0, 84.0, 86.0, 88.0]
    draws.loc[dense, "n_above_gap"] = 1
    sized = {n: np.sort(np.concatenate([rng.normal(0, 0.004 * n, P - 2), [3.0 * n, 9.0 * n]])) for n in (10, 40)}
    gn = {n: np.sort(np.abs(lam)) for n, lam in sized.items()}
    sizes = pd.DataFrame([dict(images=n, near_zero=100 * mnist_lenet.near_zero_share(sized[n]),
                               lambda_max=sized[n][-1], largest_gap=6.0 * n, n_above_gap=1, outliers=2,
                               gn_near_zero=100 * mnist_lenet.near_zero_share(gn[n]), gn_rank=min(P, 9 * n),
                               gn_rank_bound=min(P, 9 * n), bound_share=100 * min(P, 9 * n) / P) for n in (10, 40)])
    vectors = np.linalg.qr(rng.normal(size=(P, 4)))[0]
    vectors[:, 0] = 0
    vectors[:10, 0] = np.sqrt(0.1)  # the top eigenvector lives in the first 10 parameters (layer "a")
    labels = np.repeat([0, 1], [P // 2, P - P // 2])
    return dict(draws=draws, draw_eigenvalues={}, sizes=sizes, size_eigenvalues=sized, gn_eigenvalues=gn,
                gn_relative_difference=0.25, top_vectors=vectors, bottom_vectors=vectors[:, ::-1],
                layer_labels=labels, layer_names=["a", "b"])


def test_glued_values_on_a_synthetic_result(tmp_path):
    result = _synthetic_result(tmp_path)
    glued = result.glued()
    assert set(glued) == GLUE_NAMES | ANALYSIS_NAMES
    assert glued["final_test_acc"] == pytest.approx(85.0)
    # the draws at the final draw step (20): λ_max 30..34, gaps 30..50, near-zero 80..88 %
    assert glued["draw_step"] == 20 and glued["draw_lmax_median"] == 32.0
    assert glued["draw_lmax_lo"] == pytest.approx(30.1) and glued["draw_lmax_hi"] == pytest.approx(33.9)
    assert glued["seed_lmax_verdict"] == "lies above the range"  # 52.1 > 33.9
    assert glued["seed_gap_verdict"] == glued["seed_zero_verdict"] == "lies inside the range"
    assert glued["own_lmax_verdict"] == "lies below the range"  # the synthetic final λ_max is 25
    # relative widths: near-zero (87.8 - 80.2) / 84 < λ_max (33.9 - 30.1) / 32 -> the bulk is less sensitive
    assert glued["bulk_sentence"].startswith("the bulk is less sensitive")
    assert glued["gn_rel_diff"] == 25.0 and glued["rank_bound_hessian"] == 450
    assert glued["top_layer"] == "a" and glued["top_layer_share"] == pytest.approx(100.0)
    assert glued["papyan_word"] == "is closer to C" and glued["gn_rank_word"] == "equals"
    smoke = dataclasses.replace(result, config=dataclasses.replace(result.config, preset="smoke")).glued()
    assert {smoke[k] for k in ("seed_lmax_verdict", "seed_gap_verdict", "seed_zero_verdict", "zero_vs_n_word")} == {
        "is not judged (smoke run)"}
    assert smoke["bulk_sentence"].startswith("no verdict")
    assert glued["acc_vs_seed"] == pytest.approx(85.0 - 98.6)
    assert glued["n_above_gap"] == 2 and glued["final_gap2"] == pytest.approx(3.0)
    assert glued["final_lambda_max"] == 25.0 and glued["big_lambda_max"] == 25.0 / 4 and glued["big_step"] == 20
    assert (glued["ratio_min"], glued["ratio_max"]) == (2.0, 4.0)
    assert glued["seconds_total"] == 23.0 and glued["seconds_per_hessian"] == 1.0
    assert result.picks == [0, 1, 3]


@pytest.mark.parametrize("draw", [mnist_lenet.plot_summary, mnist_lenet.plot_spectrum_evolution,
                                  mnist_lenet.plot_dendrograms, mnist_lenet.plot_cluster_counts,
                                  mnist_lenet.plot_gap_barcode, mnist_lenet.plot_conv_filters,
                                  mnist_lenet.plot_draws, mnist_lenet.plot_sizes, mnist_lenet.plot_gauss_newton,
                                  mnist_lenet.plot_layer_shares])
def test_figures_draw(tmp_path, draw):
    figure = draw(_synthetic_result(tmp_path))
    assert isinstance(figure, matplotlib.figure.Figure) and figure.axes
    plt.close("all")


def test_explorer_shows_every_checkpoints_whole_spectrum_and_is_checked_against_the_glue(tmp_path):
    import html
    import json
    import re

    from hessian_book.explorer import FIRST_AND_LAST

    result = _synthetic_result(tmp_path)
    run = result.explorer_run()
    assert list(run.steps) == list(result.steps)
    for spectrum, eigenvalues in zip(run.spectra, result.eigenvalues):
        np.testing.assert_array_equal(spectrum, eigenvalues)  # the whole spectrum, not extremes
    np.testing.assert_allclose(run.curves["test error"][1], 1 - result.curves["test_acc"].to_numpy())
    glued = result.glued()
    assert glued["explorer_lmax_last"] == glued["final_lambda_max"] and glued["explorer_step_last"] == \
        glued["final_step"]
    assert glued["explorer_lmax_first"] == result.eigenvalues[0].max()
    fragment = mnist_lenet.explorer(result).data
    (checks,) = re.findall(r"data-checks='([^']*)'", fragment)
    assert json.loads(html.unescape(checks)) == [dict(c) for c in FIRST_AND_LAST]
    assert set(c[k] for c in FIRST_AND_LAST for k in ("step", "lambda_max")) <= set(glued)
    assert len(re.findall(r'"name":\s*"run0-ckpt\d+"', fragment)) == len(result.steps)  # a frame per checkpoint


def test_gif_and_table(tmp_path):
    result = _synthetic_result(tmp_path)
    path = mnist_lenet.dendrogram_gif(result)
    assert Path(path) == tmp_path / "dendrogram.gif" and Path(path).read_bytes()[:6] == b"GIF89a"
    assert "1.235" in mnist_lenet.subsample_table(result).to_html()


# ------------------------------------------------------------------------------ issue 13: draws, sizes, GN, gaps

def test_notebook_glues_exactly_the_result_names():
    import re
    text = (ROOT / "notebooks" / "mnist_lenet.md").read_text()
    used = set(re.findall(r"\{glue:text\}`([a-z_0-9]+)", text))
    assert used <= GLUE_NAMES | ANALYSIS_NAMES
    assert "bulk … is much less sensitive" not in text and "much less" not in text


def test_new_parameters_are_validated():
    for name, value in [("n_draws", 1), ("n_dense_draws", 0), ("n_draw_checkpoints", 0),
                        ("subsample_sizes", [50, 20]), ("subsample_sizes", []), ("subsample_sizes", [1.5]),
                        ("subsample_sizes", [10, 70000])]:
        with pytest.raises(ConfigError, match=rf"\b{name}="):
            mnist_lenet.Config.from_parameters({name: value})
    with pytest.raises(ConfigError, match=r"n_dense_draws=5 must be <= n_draws=4"):
        mnist_lenet.Config.from_parameters({"preset": "smoke", "n_dense_draws": 5})


def test_near_zero_share_and_central_interval():
    assert mnist_lenet.near_zero_share(np.array([-0.02, -0.005, 0.0, 0.0099, 0.01, 3.0])) == pytest.approx(0.5)
    values = np.arange(41.0)  # quantiles 2.5 % and 97.5 % of 0..40 by linear interpolation: 1 and 39
    assert mnist_lenet.central_interval(values) == (pytest.approx(1.0), pytest.approx(39.0))
    with pytest.raises(ValueError):
        mnist_lenet.central_interval(np.array([1.0]))


def test_spread_verdict():
    values = np.arange(41.0)
    assert mnist_lenet.spread_verdict(20.0, values) == "lies inside the range"
    assert mnist_lenet.spread_verdict(39.5, values) == "lies above the range"
    assert mnist_lenet.spread_verdict(0.5, values) == "lies below the range"
    assert mnist_lenet.spread_verdict(20.0, values, judged=False) == "is not judged (smoke run)"


def test_rank_bound_and_papyan_word():
    assert mnist_lenet.rank_bound(50) == 450 and mnist_lenet.rank_bound(7, 3) == 14
    assert mnist_lenet.papyan_word(10) == "equals C" and mnist_lenet.papyan_word(90) == "equals C(C − 1)"
    assert mnist_lenet.papyan_word(29) == "is closer to C"  # log distance: 29/10 < 90/29? 2.9 vs 3.10
    assert mnist_lenet.papyan_word(31) == "is closer to C(C − 1)"
    assert mnist_lenet.papyan_word(1) == "is closer to C"


def test_relative_gaps_planted():
    # unit spacing with one gap of 5 in the middle: relative gap 5 there, 1 elsewhere (median of neighbours = 1)
    lam = np.concatenate([np.arange(10.0), 9 + 5 + np.arange(10.0)])
    rel = mnist_lenet.relative_gaps(lam, window=3)
    assert rel[9] == pytest.approx(5.0)
    assert np.allclose(np.delete(rel, 9), 1.0)
    # brute force: median of the other gaps within the window, at every position
    rng = np.random.default_rng(1)
    lam = np.sort(rng.exponential(size=40))
    g = np.diff(lam)
    rel = mnist_lenet.relative_gaps(lam, window=4)
    for i in range(len(g)):
        others = [g[j] for j in range(len(g)) if j != i and abs(j - i) <= 4]
        assert rel[i] == pytest.approx(g[i] / np.median(others))


def test_largest_relative_gaps_stay_inside_the_bulk():
    bulk = np.concatenate([np.linspace(1e-4, 1e-3, 30), np.linspace(2e-3, 3e-3, 30)])  # a planted gap near 1e-3
    lam = np.sort(np.concatenate([bulk, [-1e-16, 0.0, 1e-16], [0.5, 2.0, 9.0]]))
    table = mnist_lenet.largest_relative_gaps(lam, window=5, top=3, floor=1e-12)
    first = table.iloc[0]
    assert first["lower"] == pytest.approx(1e-3) and first["upper"] == pytest.approx(2e-3)
    assert first["n_above"] == 30 + 3
    assert (table["upper"].abs() < 0.01).all() and (table["lower"].abs() > 1e-12).all()


def test_n_outliers_planted():
    rng = np.random.default_rng(2)
    bulk = rng.uniform(0.01, 0.1, 500)
    lam = np.concatenate([bulk, rng.uniform(5, 8, 10), [-0.3]])
    assert mnist_lenet.n_outliers(lam) == 10
    lam = np.concatenate([bulk, rng.uniform(1, 1.5, 90) * 10, [-0.3]])
    assert mnist_lenet.n_outliers(lam) == 90


def test_layer_shares_hand_computed():
    labels = np.array([0, 0, 1, 2])
    V = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 4.0]])
    shares = mnist_lenet.layer_shares(V, labels, 3)
    assert np.allclose(shares, [[1.0, 0.0, 0.0], [0.0, 9 / 25, 16 / 25]])


def test_chunked_sum_equals_the_whole_batch_hessian_and_gauss_newton():
    from hessian_core import full_hessian, gauss_newton
    from tests.cases import conv_case

    model, loss_fn, (x, y) = conv_case()
    x, y = torch.cat([x, x.flip(0) + 0.1]), torch.cat([y, y.flip(0)])  # 12 samples
    hs = mnist_lenet.chunked_sum(lambda b: full_hessian(model, loss_fn, b, progress=False), x, y, [5, 12], 3)
    for n, H in zip([5, 12], hs):
        reference = full_hessian(model, loss_fn, (x[:n], y[:n]), progress=False).numpy()
        assert np.abs(H - reference).max() <= 1e-12 * np.abs(reference).max()
    gs = mnist_lenet.chunked_sum(lambda b: gauss_newton(model, loss_fn, b), x, y, [12], 5,
                                 reduce=lambda M: M.numpy())
    reference = gauss_newton(model, loss_fn, (x, y)).numpy()
    assert np.abs(gs[0] - reference).max() <= 1e-12 * np.abs(reference).max()


def test_size_spectra_on_a_small_model(monkeypatch):
    from hessian_core import full_hessian, gauss_newton
    from tests.cases import conv_case

    model, loss_fn, (x, y) = conv_case()
    monkeypatch.setattr(mnist_lenet, "_CHUNK", 4)
    out = mnist_lenet._size_spectra(model, (x, y), [3, 6])
    for i, n in enumerate([3, 6]):
        H = full_hessian(model, loss_fn, (x[:n], y[:n]), progress=False)
        G = gauss_newton(model, loss_fn, (x[:n], y[:n]))
        assert np.allclose(out["hessian"][i], torch.linalg.eigvalsh(H).numpy(), atol=1e-12)
        assert np.allclose(out["gauss_newton"][i], torch.linalg.eigvalsh(G).numpy(), atol=1e-12)
    assert out["relative_difference"] == pytest.approx(float(torch.linalg.matrix_norm(H - G)
                                                             / torch.linalg.matrix_norm(H)))
