"""The Fiedler chapter: its configuration (defaults = the notebook's parameters cell, nested chapter configs, named
errors before any work) and the reading of a tree (top cuts inside the largest component, ARI, coupling means)."""

from pathlib import Path

import numpy as np
import pytest

from hessian_book.chapters import fiedler_lenet, grokking_modadd, mnist_lenet
from hessian_book.chapters.fiedler_lenet import (Config, Tree, ari_between, ari_inside, count_word, coupling_by_group,
                                                 draw_pairs, shuffled_ari, shuffled_ari_between, stability_word,
                                                 top_cut)
from hessian_book.config import ConfigError
from hessian_core import adjusted_rand_index, coupling_graph, fiedler_linkage, top_clusters

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "fiedler_lenet.md"
NESTED = {"mnist": mnist_lenet.Config, "grokking": grokking_modadd.Config}






def test_presets_build_and_pass_down_to_the_chapters_read():
    full = Config.from_parameters({})
    assert full.mnist == mnist_lenet.Config() and full.grokking == grokking_modadd.Config()
    smoke = Config.from_parameters({"preset": "smoke", "mnist": {}, "grokking": {}})
    assert smoke.checkpoint_indices == [0, -1] and smoke.results_dir
    assert smoke.stability_indices == [-1] and smoke.stability_draws == 2 and smoke.smoke and not full.smoke
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
    ({"stability_indices": []}, "stability_indices="),
    ({"stability_indices": [25]}, "stability_indices="),
    ({"stability_draws": 0}, "stability_draws="),
    ({"top_max_depth": 0}, "top_max_depth="),
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
    assert Config().top_tree_options()["max_depth"] == 8
    assert Config(max_depth=3).top_tree_options()["max_depth"] == 3
    assert Config(top_max_depth=5).top_tree_options() == dict(Config().tree_options(), max_depth=5)


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


def test_tree_from_record_reads_either_coupling_and_marks_a_disconnected_graph():
    record = dict(linkage=np.zeros((4, 4)), linkage_scaled=np.ones((4, 4)), seconds_hessian=1.0, seconds_tree=2.0,
                  seconds_tree_scaled=3.0, lambda2_largest=0.5, largest_size=5, n_isolated=0,
                  lambda2_largest_scaled=0.25, largest_size_scaled=4, n_isolated_scaled=1)
    plain, scaled = Tree.from_record(7, record), Tree.from_record(7, record, "_scaled")
    assert plain.lambda2 == 0.5 and plain.lambda2_largest == 0.5 and plain.n_isolated == 0  # connected
    assert scaled.lambda2 == 0.0 and scaled.lambda2_largest == 0.25 and scaled.largest_size == 4  # one isolated
    assert scaled.seconds_tree == 3.0 and np.all(scaled.linkage == 1) and scaled.n_parameters == 5


def test_top_cuts_of_a_depth_limited_clip_tree_are_the_full_trees():
    rng = np.random.default_rng(0)
    sizes = [40, 25, 15, 10]
    labels = np.repeat(np.arange(4), sizes)
    H = rng.uniform(0.5, 1.5, (90, 90)) * np.where(labels[:, None] == labels[None, :], 1.0, 0.02)
    H = (H + H.T) / 2
    full = fiedler_linkage(H, monotone="clip", progress=False)
    for depth in (3, 8):
        limited = fiedler_linkage(H, monotone="clip", max_depth=depth, progress=False)
        for k in (2, 3, 4):
            assert adjusted_rand_index(top_clusters(full, k), top_clusters(limited, k)) == pytest.approx(1.0)
    assert adjusted_rand_index(top_clusters(full, 4), labels) == pytest.approx(1.0)


def test_the_scale_invariant_tree_does_not_see_a_rescaling_of_the_parameters():
    """The tree of |H_ij| / sqrt(|H_ii| |H_jj|) is the same for H and S H S (its top cuts find the planted blocks);
    the tree of |H| has other merge heights."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 30)
    H = rng.uniform(0.5, 1.5, (60, 60)) * np.where(labels[:, None] == labels[None, :], 1.0, 0.02)
    H = (H + H.T) / 2 + np.diag(rng.uniform(3.0, 6.0, 60))
    s = np.exp(rng.uniform(-2, 2, 60))
    rescaled = H * s[:, None] * s[None, :]
    trees = [fiedler_linkage(coupling_graph(h, normalize="diagonal"), monotone="clip", progress=False)
             for h in (H, rescaled)]
    np.testing.assert_allclose(trees[0][-5:, 2], trees[1][-5:, 2], rtol=1e-8)  # the top merge heights
    for k in (2, 3, 4, 5):  # ... and the top cuts (rounding may reorder tied merges deep down)
        assert adjusted_rand_index(top_clusters(trees[0], k), top_clusters(trees[1], k)) == pytest.approx(1.0)
    assert adjusted_rand_index(top_clusters(trees[1], 2), labels) == pytest.approx(1.0)
    plain = [fiedler_linkage(h, monotone="clip", progress=False) for h in (H, rescaled)]
    assert not np.allclose(plain[0][-5:, 2], plain[1][-5:, 2], rtol=1e-3)


def test_ari_between_uses_the_parameters_both_cuts_assign():
    a = np.array([0, 0, 1, 1, -1, 0])
    b = np.array([3, 3, 4, 4, 3, -1])
    assert ari_between(a, b) == pytest.approx(1.0)
    assert ari_between(a, b) == pytest.approx(adjusted_rand_index(a[:4], b[:4]))


def test_shuffled_ari_between_permutes_within_the_common_parameters():
    a, b = np.repeat([0, 1, -1], 20), np.repeat([0, 1, 2], 20)
    chance = shuffled_ari_between(a, b, np.random.default_rng(2), 4)
    rng = np.random.default_rng(2)
    expected = [adjusted_rand_index(rng.permutation(a[:40]), b[:40]) for _ in range(4)]
    assert np.allclose(chance, expected) and np.abs(chance).max() < 0.3


def test_draw_pairs():
    assert draw_pairs(1) == [] and draw_pairs(3) == [(0, 1), (0, 2), (1, 2)] and len(draw_pairs(4)) == 6


def test_stability_word_compares_the_whole_range_with_the_chance_band():
    chance = np.array([[-0.01, 0.02], [-0.03, 0.01]])
    assert stability_word([0.3, 0.5], chance, smoke=False) == "above the chance band for every pair of draws"
    assert stability_word([0.01, 0.02], chance, smoke=False) == "inside or below the chance band for every pair of draws"
    assert stability_word([0.01, 0.5], chance, smoke=False) == "above the chance band for some pairs of draws only"
    assert "smoke" in stability_word([0.3, 0.5], chance, smoke=True)
    assert "undefined" in stability_word([], chance, smoke=False)


def test_count_word():
    assert count_word(3, 3, smoke=False) == "at every one of the 3"
    assert count_word(0, 3, smoke=False) == "at none of the 3"
    assert count_word(1, 3, smoke=False) == "at 1 of the 3"
    assert "smoke" in count_word(3, 3, smoke=True)
