"""The Fiedler chapter: its configuration (defaults = the notebook's parameters cell, nested chapter configs, named
errors before any work) and the reading of a tree (top cuts inside the largest component, ARI, coupling means)."""

from pathlib import Path

import jupytext
import numpy as np
import pytest

from hessian_book.chapters import fiedler_lenet, grokking_modadd, mnist_lenet
from hessian_book.chapters.fiedler_lenet import Config, Tree, ari_inside, coupling_by_group, shuffled_ari, top_cut
from hessian_book.config import ConfigError
from hessian_core import adjusted_rand_index, fiedler_linkage

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "fiedler_lenet.md"
NESTED = {"mnist": mnist_lenet.Config, "grokking": grokking_modadd.Config}


def _parameters_cell() -> dict:
    cells = [c for c in jupytext.read(NOTEBOOK).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    namespace: dict = {}
    exec(cells[0].source, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def test_defaults_equal_the_notebooks_parameters_cell():
    cell, defaults = _parameters_cell(), Config.defaults()
    assert set(cell) == set(defaults)
    for name, default in defaults.items():
        if name in NESTED:  # the notebook holds overrides of the other chapter's defaults: none
            assert cell[name] == {} and default == NESTED[name](), name
        else:
            assert cell[name] == default, name


def test_presets_build_and_pass_down_to_the_chapters_read():
    full = Config.from_parameters({})
    assert full.mnist == mnist_lenet.Config() and full.grokking == grokking_modadd.Config()
    smoke = Config.from_parameters({"preset": "smoke", "mnist": {}, "grokking": {}})
    assert smoke.checkpoint_indices == [0, -1] and smoke.results_dir
    assert smoke.mnist.preset == smoke.grokking.preset == "smoke"
    assert smoke.mnist.n_train == 640 and smoke.grokking.p == 23  # the other chapters' own smoke presets
    assert smoke.mnist.results_dir == smoke.grokking.results_dir == smoke.results_dir  # one temporary directory


def test_explicit_values_override_the_preset():
    config = Config.from_parameters({"preset": "smoke", "checkpoint_indices": [0, 1, -1], "split": "sweep",
                                     "mnist": {"epochs": 3}, "grokking": {"transition_low": 0.4}})
    assert config.checkpoint_indices == [0, 1, -1] and config.split == "sweep"
    assert config.mnist.epochs == 3 and config.mnist.n_train == 640
    assert config.grokking.transition_low == 0.4 and config.grokking.p == 23


@pytest.mark.parametrize("parameters, name", [
    ({"split": "median"}, "split="),
    ({"laplacian": "random-walk"}, "laplacian="),
    ({"monotone": "none"}, "monotone="),
    ({"min_cluster_size": 0}, "min_cluster_size="),
    ({"max_depth": -1}, "max_depth="),
    ({"n_top_clusters": 2.0}, "n_top_clusters="),
    ({"dendrogram_leaves": 0}, "dendrogram_leaves="),
    ({"grokking_max_depth": 0}, "grokking_max_depth="),
    ({"checkpoint_indices": []}, "checkpoint_indices="),
    ({"checkpoint_indices": [0, 25]}, "checkpoint_indices="),  # the full MNIST run has 25 checkpoints
    ({"preset": "smoke", "checkpoint_indices": [0, 3]}, "checkpoint_indices="),  # the smoke run has 3
    ({"checkpoint_indices": [0, True]}, "checkpoint_indices="),
    ({"mnist": {"lr": 0.0}}, "lr="),
    ({"grokking": {"p": 100}}, "p="),
    ({"grokking": {"epochs": 3}}, "grokking: unknown parameters"),
    ({"mnist": 3}, "mnist="),
])
def test_bad_parameters_are_named_before_any_work(parameters, name, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(mnist_lenet, "training_run", no_work)
    monkeypatch.setattr(grokking_modadd, "main_run", no_work)
    with pytest.raises(ConfigError, match=name):
        fiedler_lenet.run(Config.from_parameters(parameters))


def test_checkpoint_indices_follow_the_mnist_schedule():
    assert Config().n_mnist_checkpoints() == 25
    assert Config.from_parameters({"preset": "smoke"}).n_mnist_checkpoints() == 3  # 640 images, batch 128, 2 epochs
    Config.from_parameters({"checkpoint_indices": [-25, 24]})  # both ends are fine


def test_tree_options_map_no_depth_limit_to_none():
    assert Config().tree_options() == dict(split="sign", laplacian="normalized", monotone="clip",
                                           min_cluster_size=2, max_depth=None)
    assert Config(max_depth=3).tree_options()["max_depth"] == 3


# ---- reading a tree ---------------------------------------------------------------------------------------------

def _two_blocks_and_isolated() -> np.ndarray:
    """A 7-parameter 'Hessian': blocks {0, 1, 2} and {3, 4, 5} coupled weakly by one edge, parameter 6 isolated."""
    H = np.zeros((7, 7))
    for block in ((0, 1, 2), (3, 4, 5)):
        for i in block:
            for j in block:
                H[i, j] = 1.0 if i != j else 3.0
    H[2, 3] = H[3, 2] = 0.01
    H[6, 6] = 1.0
    return H


def test_top_cut_reads_the_largest_component_of_a_disconnected_graph():
    Z = fiedler_linkage(_two_blocks_and_isolated(), progress=False)
    tree = Tree(step=0, linkage=Z, lambda2=0.0, seconds_hessian=0.0, seconds_tree=0.0)
    cut = top_cut(tree, 2)
    assert cut[6] == -1  # the isolated parameter is outside the largest component
    assert len(set(cut[:3])) == 1 and len(set(cut[3:6])) == 1 and cut[0] != cut[3]  # the two blocks
    blocks = np.array([0, 0, 0, 1, 1, 1, 2])
    assert ari_inside(cut, blocks) == pytest.approx(1.0)
    # read as if connected, the top split only splits off the isolated parameter
    whole = top_cut(Tree(step=0, linkage=Z, lambda2=0.5, seconds_hessian=0.0, seconds_tree=0.0), 2)
    assert (whole >= 0).all() and sorted(np.bincount(whole)) == [1, 6]


def test_ari_inside_ignores_unassigned_parameters():
    clusters = np.array([0, 0, 1, 1, -1, -1])
    groups = np.array([5, 5, 7, 7, 5, 7])
    assert ari_inside(clusters, groups) == pytest.approx(1.0)
    assert ari_inside(clusters, groups) != pytest.approx(adjusted_rand_index(clusters, groups))


def test_shuffled_ari_is_the_ari_of_permuted_labels():
    clusters, groups = np.repeat([0, 1, 2], 20), np.repeat([0, 1], 30)
    chance = shuffled_ari(clusters, groups, np.random.default_rng(3), 5)
    rng = np.random.default_rng(3)
    expected = [ari_inside(rng.permutation(clusters), groups) for _ in range(5)]
    assert chance.shape == (5,) and np.allclose(chance, expected) and np.abs(chance).max() < 0.3


def test_coupling_by_group_by_hand():
    W = np.array([[0.0, 2.0, 1.0],
                  [2.0, 0.0, 3.0],
                  [1.0, 3.0, 0.0]])
    within, across = coupling_by_group(W, np.array([0, 0, 1]))
    assert within == pytest.approx(2.0)  # the pair (0, 1), both ways
    assert across == pytest.approx((1.0 + 3.0) / 2)  # pairs (0, 2) and (1, 2)
