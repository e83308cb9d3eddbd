"""The grokking chapter: its configuration (defaults = the notebook's parameters cell, validation naming the bad
parameter, presets), the curve readings it moved out of the notebook, the transition picks the Fiedler chapter
shares, its stores and its result."""

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

ROOT = Path(__file__).resolve().parents[2]

# The glue names of the chapter's prose (as glued by the notebook before the port), for n recipe candidates.
_GLUE_NAMES = {
    "memorised", "generalised", "ratio", "window_start", "window_end", "pick_before", "pick_before_test",
    "pick_during", "pick_during_test", "pick_after", "pick_after_test", "final_test_acc", "final_train_acc",
    "n_steps", "recipe_steps", "n_params", "n_checkpoints", "main_label", "grokked", "transition_low",
    "transition_high", "n_recipes", "n_recipes_grokking", "pick_final", "dense_list", "lanczos_error",
    "slq_trace_error", "slq_entropy_error", "hessian_samples", "lanczos_k", "lanczos_tol", "slq_probes",
    "slq_steps", "gaps_inside_top", "n_plateau", "n_transition", "n_after", "loss_plateau", "loss_transition",
    "loss_after", "corr_lmax_loss", "loss_span", "memorised_ckpt", "full_small_list", "seconds_recipe",
    "seconds_train", "seconds_lanczos", "seconds_slq", "seconds_dense_hessian", "seconds_dense_eig",
    "minutes_total", "lanczos_hvps", "seconds_this_run", "threads",
} | {f"{q}_{phase}" for q in ("entropy", "spread", "n_quarter", "negratio", "negfrac", "lmax_loss")
     for phase in ("plateau", "transition", "after")} | {
    f"full_{pick}_{q}" for pick in ("before", "during", "after")
    for q in ("effrank", "entropy", "small", "top10", "l4")}


def glue_names(n_recipes: int) -> set[str]:
    return _GLUE_NAMES | {f"recipe{i}_{q}" for i in range(n_recipes + 1)
                          for q in ("train", "test", "memorised", "generalised", "ratio", "test2x")}


def _notebook_parameters() -> dict:
    notebook = jupytext.read(ROOT / "notebooks" / "grokking_modadd.md")
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    values: dict = {}
    exec(cells[0].source, {}, values)
    return values


# ------------------------------------------------------------------------------------------------- configuration

def test_defaults_equal_the_notebook_parameters_cell():
    parameters = _notebook_parameters()
    defaults = grokking_modadd.Config.defaults()
    assert set(parameters) == set(defaults)
    for name, value in defaults.items():
        assert parameters[name] == value, name


@pytest.mark.parametrize("name, value", [
    ("p", 100), ("p", 1), ("p", 23.0), ("train_fraction", 1.5), ("train_fraction", 0), ("split_seed", -1),
    ("seed", 1.5), ("lr", 0), ("lr", float("inf")), ("betas", [0.9]), ("betas", [0.9, 1.0]), ("betas", 0.9),
    ("n_steps", 0), ("log_every", 0), ("d_model", 0), ("n_heads", 0), ("d_mlp", 0), ("d_mlp", 12.5),
    ("weight_decay", -1.0), ("weight_decay", float("nan")), ("dense_every", 0), ("dense_until", -5),
    ("sparse_every", True), ("recipe_configs", [[32, 1, 128]]), ("recipe_configs", [[32, 3, 128, 0.1]]),
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
    assert (smoke.p, smoke.d_model, smoke.n_steps, smoke.lanczos_k) == (23, 8, 300, 3)
    assert smoke.results_dir and Path(smoke.results_dir).is_dir()  # a fresh temporary directory
    overridden = grokking_modadd.Config.from_parameters({"preset": "smoke", "p": 29, "n_steps": 200,
                                                         "results_dir": "elsewhere"})
    assert (overridden.p, overridden.n_steps, overridden.results_dir) == (29, 200, "elsewhere")
    assert overridden.d_mlp == 16 and overridden.recipe_steps == 100  # the rest from the preset


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


def _fake_run(steps, test_acc):
    log = {"step": np.asarray(steps), "test_acc": np.asarray(test_acc, dtype=float)}
    return SimpleNamespace(curve=lambda name: log[name])


def test_transition_picks_hand_computed():
    config = grokking_modadd.Config(n_steps=3000, dense_every=500, dense_until=2000, sparse_every=1000,
                                    results_dir="x")
    assert grokking_modadd.checkpoint_steps(config) == [0, 10, 50, 100, 200, 500, 1000, 1500, 2000, 3000]
    steps = np.arange(0, 3001, 100)
    # test accuracy first reaches 0.5 at step 1200 and 0.95 at step 1800
    test = np.interp(steps, [0, 1100, 1200, 1800, 3000], [0.01, 0.4, 0.5, 0.95, 1.0])
    fake = _fake_run(steps, test)
    assert grokking_modadd.window(fake, config) == {"start": 1200, "end": 1800}
    assert grokking_modadd.transition_picks(fake, config) == {"before": 1000, "during": 1500, "after": 2000,
                                                              "final": 3000}
    # the levels come from the configuration
    later = grokking_modadd.Config(n_steps=3000, dense_every=500, dense_until=2000, sparse_every=1000,
                                   transition_low=0.85, results_dir="x")
    assert grokking_modadd.window(fake, later)["start"] == 1700  # 0.875 at 1700, 0.8 at 1600


def test_transition_picks_without_a_transition():
    config = grokking_modadd.Config(n_steps=3000, dense_every=500, dense_until=2000, sparse_every=1000,
                                    results_dir="x")
    fake = _fake_run(np.arange(0, 3001, 100), np.full(31, 0.05))
    assert grokking_modadd.transition_picks(fake, config) == {"before": 0, "during": 500, "after": 3000,
                                                              "final": 3000}


def test_analysis_stores_are_children_keyed_by_their_own_parameters(tmp_path):
    fake = SimpleNamespace(store=ResultStore(tmp_path, "grokking_modadd", dict(p=113, seed=0)))
    config = grokking_modadd.Config(results_dir=str(tmp_path))
    stores = grokking_modadd.analysis_stores(config, fake)
    base = dict(run=fake.store.key, hessian_samples=200)
    assert stores["lanczos"].params == dict(base, k=20, tol=1e-6, block=8)
    assert stores["slq"].params == dict(base, probes=6, steps=50)
    assert stores["dense"].params == dict(base, n_vectors=50)
    other = grokking_modadd.analysis_stores(grokking_modadd.Config(results_dir=str(tmp_path), slq_steps=20), fake)
    assert other["slq"].key != stores["slq"].key
    assert other["lanczos"].key == stores["lanczos"].key and other["dense"].key == stores["dense"].key


# ---------------------------------------------------------------------------------------------- result, figures

TINY = dict(preset="smoke", n_steps=60, recipe_steps=20, recipe_configs=[[8, 1, None, 1.0]], dense_every=500,
            dense_until=1000, sparse_every=1000)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("grokking")
    config = grokking_modadd.Config.from_parameters(dict(TINY, results_dir=str(directory)))
    return config, grokking_modadd.run(config, progress=False)


def test_run_glues_every_name(tiny):
    config, result = tiny
    glued = result.glued()
    assert set(glued) == glue_names(1)
    assert glued["n_checkpoints"] == 4 and list(result.checkpoints) == [0, 10, 50, 60]
    assert glued["n_recipes"] == 2 and glued["main_label"] == "d8 h1 MLP 16, wd 1"
    assert glued["grokked"] == "does not grok"
    assert glued["pick_final"] == 60 and set(result.picks) == {"before", "during", "after", "final"}
    assert result.dense_steps == sorted(set(result.picks[k] for k in config.dense_picks))
    assert glued["lanczos_error"] < 1e-6 and result.dense_sorted_finite
    assert result.extremes.shape == (4, 6) and result.subsample_loss.shape == (4,)
    assert set(result.timings) == {"recipe", "train", "lanczos", "slq", "dense_hessian", "dense_eig", "this_run"}


def test_tables_are_dataframes(tiny):
    config, result = tiny
    table = result.recipes
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["d8 h1 attention only, wd 1", "d8 h1 MLP 16, wd 1 (chosen)"]
    assert table["steps"].tolist() == [20, 60] and table["parameters"].tolist() == [656, 936]
    assert table["groks"].tolist() == ["no", "no"]
    assert table["final test acc. (%)"].iloc[-1] == pytest.approx(100 * result.main.test_acc[-1])
    assert isinstance(result.phase_table, pd.DataFrame) and result.phase_table.shape == (6, 9)
    medians = result.phase_table.xs("median", axis=1, level=1)
    assert medians.iloc[0].tolist() == [result.by_phase["entropy"][p]["median"] for p in result.phases]
    assert list(result.full_table.index) == list(config.dense_picks)
    assert result.full_table["lambda_max"].tolist() == [result.full[s][-1] for s in result.dense_picked.values()]


def test_rerun_reads_the_stores(tiny, monkeypatch):
    config, result = tiny

    def no_work(*args, **kwargs):
        raise AssertionError("recomputed a stored result")

    for name in ("extreme_eigenvalues", "slq_density", "dense_spectrum"):
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
                 grokking_modadd.plot_gap_barcode, grokking_modadd.plot_phases):
        assert isinstance(plot(result), plt.Figure), plot.__name__
        plt.close("all")
    assert isinstance(grokking_modadd.plot_cluster_counts(result, relative=True), plt.Figure)
    plt.close("all")
    assert Path(grokking_modadd.dendrogram_gif(result)).is_file()
