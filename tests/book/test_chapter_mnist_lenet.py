"""The MNIST chapter: its configuration (defaults = the notebook's parameters cell, validation naming the bad
parameter, presets), the small analyses it moved out of the notebook, its stores and its result."""

import os
from pathlib import Path

import jupytext
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
    "n_checkpoints", "final_step", "final_test_acc", "final_lambda_max", "final_lambda_min", "final_frac_small",
    "final_gap1", "final_gap2", "n_above_gap", "final_n_negative", "seconds_train", "seconds_hessians",
    "seconds_eigendecompositions", "seconds_larger_subsample", "seconds_total", "minutes_total",
    "seconds_per_hessian", "hessian_samples", "compare_samples", "final_n_negative_tol", "final_zero_tol",
    "final_n_below_001", "final_n_above_001", "final_negative_mass", "lambda_max_vs_seed", "acc_vs_seed",
    "lambda_min_vs_seed", "frac_small_vs_seed", "plateau_n", "plateau_factor", "plateau_lo", "plateau_hi",
    "n_compare", "big_lambda_max", "big_lambda_min", "big_gap1", "big_n_above_gap", "big_step",
    "small_lambda_max", "small_lambda_min", "small_gap1", "big_frac_small", "ratio_min", "ratio_max",
}


def _notebook_parameters() -> dict:
    notebook = jupytext.read(ROOT / "notebooks" / "mnist_lenet.md")
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    values: dict = {}
    exec(cells[0].source, {}, values)
    return values


# ------------------------------------------------------------------------------------------------- configuration

def test_defaults_equal_the_notebook_parameters_cell():
    parameters = _notebook_parameters()
    defaults = mnist_lenet.Config.defaults()
    assert set(parameters) == set(defaults)
    for name, value in defaults.items():
        assert parameters[name] == value, name


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
    return HessianSpectrum(eigenvalues=lam, top_vectors=np.zeros((len(lam), n_vectors)),
                           bottom_vectors=np.zeros((len(lam), n_vectors)), seconds_hessian=1.0, seconds_eig=2.0)


@needs_mnist
def test_run_glues_every_name_and_never_retrains_for_an_analysis_setting(tmp_path, monkeypatch):
    calls = []

    def fake(model, batch, *, n_vectors):
        calls.append((len(batch[0]), n_vectors))
        return _fake_spectrum(model, batch, n_vectors=n_vectors)

    monkeypatch.setattr(mnist_lenet, "dense_spectrum", fake)
    config = mnist_lenet.Config.from_parameters({"preset": "smoke", "results_dir": str(tmp_path)})
    result = mnist_lenet.run(config, progress=False)
    assert calls == [(10, 5)] * 3 + [(20, 1)] * 2
    glued = result.glued()
    assert set(glued) == GLUE_NAMES
    assert glued["n_checkpoints"] == 3 and glued["final_step"] == 10 and glued["n_compare"] == 2
    assert result.timings == dict(train=result.timings["train"], hessians=3.0, eigendecompositions=6.0,
                                  larger_subsample=6.0)
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
    assert calls == [(10, 4)] * 3  # new spectra; the larger subsample and the training are read
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
        timings=dict(train=1.0, hessians=4.0, eigendecompositions=8.0, larger_subsample=3.0))


def test_glued_values_on_a_synthetic_result(tmp_path):
    result = _synthetic_result(tmp_path)
    glued = result.glued()
    assert set(glued) == GLUE_NAMES
    assert glued["final_test_acc"] == pytest.approx(85.0)
    assert glued["acc_vs_seed"] == pytest.approx(85.0 - 98.6)
    assert glued["n_above_gap"] == 2 and glued["final_gap2"] == pytest.approx(3.0)
    assert glued["final_lambda_max"] == 25.0 and glued["big_lambda_max"] == 25.0 / 4 and glued["big_step"] == 20
    assert (glued["ratio_min"], glued["ratio_max"]) == (2.0, 4.0)
    assert glued["seconds_total"] == 16.0 and glued["seconds_per_hessian"] == 1.0
    assert result.picks == [0, 1, 3]


@pytest.mark.parametrize("draw", [mnist_lenet.plot_summary, mnist_lenet.plot_spectrum_evolution,
                                  mnist_lenet.plot_dendrograms, mnist_lenet.plot_cluster_counts,
                                  mnist_lenet.plot_gap_barcode, mnist_lenet.plot_conv_filters])
def test_figures_draw(tmp_path, draw):
    figure = draw(_synthetic_result(tmp_path))
    assert isinstance(figure, matplotlib.figure.Figure) and figure.axes
    plt.close("all")


def test_gif_and_table(tmp_path):
    result = _synthetic_result(tmp_path)
    path = mnist_lenet.dendrogram_gif(result)
    assert Path(path) == tmp_path / "dendrogram.gif" and Path(path).read_bytes()[:6] == b"GIF89a"
    assert "1.235" in mnist_lenet.subsample_table(result).to_html()
