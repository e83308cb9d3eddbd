"""Layer labels, the adjusted Rand index (against a brute-force pair count), and layer composition."""

import itertools

import numpy as np
import pytest
from torch import nn

from hessian_core.partitions import adjusted_rand_index, composition, parameter_labels


def _ari_by_pairs(a, b):
    """Independent reference: the Rand index's pair counts, then the Hubert-Arabie correction by permutation
    expectation computed from the same marginals (a different route to E)."""
    n = len(a)
    same_a = same_b = both = 0
    for i, j in itertools.combinations(range(n), 2):
        sa, sb = a[i] == a[j], b[i] == b[j]
        same_a += sa
        same_b += sb
        both += sa and sb
    total = n * (n - 1) / 2
    expected = same_a * same_b / total
    return (both - expected) / (0.5 * (same_a + same_b) - expected)


def test_ari_matches_pair_counting_and_known_values():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 30), rng.integers(0, 3, 30)
        assert abs(adjusted_rand_index(a, b) - _ari_by_pairs(a, b)) < 1e-12
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, [5, 5, 7, 7, 9, 9]) == 1.0  # renaming does not matter
    assert adjusted_rand_index(a, a[::-1]) == 1.0
    # A classic worked example: [0,0,0,1,1,1] vs [0,0,1,1,2,2] has ARI = 0.24242...
    assert abs(adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) - 8 / 33) < 1e-12
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0
    with pytest.raises(ValueError, match="same items"):
        adjusted_rand_index([0, 1], [0, 1, 1])


def test_parameter_labels_follow_the_flattened_order():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    layers, names = parameter_labels(model)
    assert names == ["0", "2"] and layers.tolist() == [0] * 8 + [1] * 3
    tensors, names = parameter_labels(model, by="tensor")
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert tensors.tolist() == [0] * 6 + [1] * 2 + [2] * 2 + [3]


def test_composition_rows_sum_to_one_and_order_by_size():
    clusters = np.array([0, 0, 0, 1, 1, 2])
    groups = np.array([0, 1, 1, 1, 1, 0])
    fractions, sizes = composition(clusters, groups)
    assert sizes.tolist() == [3, 2, 1]
    np.testing.assert_allclose(fractions, [[1 / 3, 2 / 3], [0, 1], [1, 0]])
    with pytest.raises(ValueError, match="n_groups"):
        composition(clusters, groups, n_groups=1)


def test_top_clusters_agrees_with_fcluster_without_ties_and_survives_ties():
    from scipy.cluster.hierarchy import fcluster, linkage

    from hessian_core.partitions import top_clusters

    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(c, 0.1, (15, 2)) for c in ((0, 0), (5, 0), (0, 5), (9, 9))])
    Z = linkage(points, "single")
    for k in (1, 2, 3, 4, 7):
        ours = top_clusters(Z, k)
        assert len(np.unique(ours)) == k
        assert adjusted_rand_index(ours, fcluster(Z, k, "maxclust")) == 1.0
    # All merges at one height: fcluster cannot give 3 clusters, the tree walk can.
    tied = Z.copy()
    tied[:, 2] = 1.0
    assert len(np.unique(fcluster(tied, 3, "maxclust"))) == 1
    assert len(np.unique(top_clusters(tied, 3))) == 3
    assert top_clusters(Z, 100).max() == len(points) - 1


def test_largest_component_and_cutting_inside_it():
    from hessian_core.fiedler import fiedler_linkage
    from hessian_core.partitions import largest_component, top_clusters

    # Two coupled blocks (0-5 and 6-11, weakly joined) plus three parameters with no coupling at all.
    H = np.zeros((15, 15))
    H[:6, :6] = 1.0
    H[6:12, 6:12] = 1.0
    H[5, 6] = H[6, 5] = 0.01
    Z = fiedler_linkage(H, progress=False, monotone="clip")
    node = largest_component(Z)
    inside = top_clusters(Z, 2, root=node)
    assert (inside[12:] == -1).all() and set(inside[:12]) == {0, 1}
    assert adjusted_rand_index(inside[:12], [0] * 6 + [1] * 6) == 1.0
    assert Z[node - 15, 3] == 12
