"""Tests for hessian_core.dendrogram against scipy.cluster.hierarchy and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.cluster import hierarchy

from hessian_core.dendrogram import (
    cluster_counts,
    cluster_labels,
    eigen_linkage,
    merge_heights,
    spectral_gaps,
)


# ----------------------------------------------------------------------------- spectra
def _random_spectrum(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(300)


def _tied_spectrum(seed: int) -> np.ndarray:
    # Values on a coarse grid: many exact ties AND many exactly equal gaps.
    rng = np.random.default_rng(seed)
    return rng.integers(-8, 9, size=400).astype(np.float64) * 0.5


def _wide_range_spectrum(seed: int) -> np.ndarray:
    # Hessian-like: a huge bulk near zero (both signs), exact zeros, and outliers
    # spread log-uniformly over 1e-8 .. 1e2.
    rng = np.random.default_rng(seed)
    bulk = rng.standard_normal(400) * 1e-9
    outliers = 10.0 ** rng.uniform(-8, 2, size=150)
    negative = -(10.0 ** rng.uniform(-8, 0, size=30))
    spectrum = np.concatenate([bulk, np.zeros(25), outliers, negative, outliers[:10]])
    return rng.permutation(spectrum)


SPECTRA = {
    **{f"random{s}": _random_spectrum(s) for s in range(3)},
    **{f"ties{s}": _tied_spectrum(s) for s in range(3)},
    **{f"wide{s}": _wide_range_spectrum(s) for s in range(3)},
}


def _scipy_single(spectrum: np.ndarray) -> np.ndarray:
    return hierarchy.linkage(spectrum[:, None], method="single")


def _test_resolutions(spectrum: np.ndarray, *, at_most: int = 250) -> np.ndarray:
    """Distinct gaps (eps exactly on a merge height: the tie convention), midpoints
    between consecutive distinct gaps, 0 and beyond the largest gap; thinned evenly
    to about ``at_most`` values to keep the scipy loops fast."""
    gaps = np.unique(np.diff(np.sort(spectrum)))
    midpoints = (gaps[:-1] + gaps[1:]) / 2
    boundary = gaps[:: max(1, gaps.size // (at_most // 2))]
    between = midpoints[:: max(1, midpoints.size // (at_most // 2))]
    return np.unique(np.concatenate([[0.0], boundary, between, gaps[-1:], [gaps.max() * 2 + 1]]))


def _same_partition(labels_a: np.ndarray, labels_b: np.ndarray) -> bool:
    """Two labelings are the same partition iff label pairs define a bijection."""
    pairs = np.unique(np.stack([labels_a, labels_b]), axis=1).shape[1]
    return pairs == np.unique(labels_a).size == np.unique(labels_b).size


def _cluster_sizes_from_children(linkage: np.ndarray) -> np.ndarray:
    """Recompute column 3 from columns 0 and 1 (independent of the code under test)."""
    n = linkage.shape[0] + 1
    size = np.ones(2 * n - 1, dtype=np.int64)
    for row, (a, b) in enumerate(linkage[:, :2].astype(np.int64)):
        size[n + row] = size[a] + size[b]
    return size[n:]


# ----------------------------------------------------------------------------- eigen_linkage
@pytest.mark.parametrize("name", list(SPECTRA))
def test_eigen_linkage_matches_scipy_single_linkage(name: str) -> None:
    spectrum = SPECTRA[name]
    ours = eigen_linkage(spectrum)
    reference = _scipy_single(spectrum)

    assert ours.shape == (spectrum.size - 1, 4)
    # Column 3 (sizes) consistent with the merge structure; checked before any scipy
    # routine, which may crash on a corrupt matrix rather than raise.
    np.testing.assert_array_equal(ours[:, 3], _cluster_sizes_from_children(ours))
    assert ours[-1, 3] == spectrum.size
    assert hierarchy.is_valid_linkage(ours)
    assert hierarchy.is_monotonic(ours)
    # Merge heights: the same multiset, bit for bit.
    np.testing.assert_array_equal(ours[:, 2], np.sort(reference[:, 2]))
    # Cophenetic distances are invariant to the order of tied merges: compare them exactly.
    np.testing.assert_array_equal(hierarchy.cophenet(ours), hierarchy.cophenet(reference))
    # Flat clusters agree at every resolution, including eps exactly equal to a gap.
    for eps in _test_resolutions(spectrum):
        ours_flat = hierarchy.fcluster(ours, t=eps, criterion="distance")
        ref_flat = hierarchy.fcluster(reference, t=eps, criterion="distance")
        assert _same_partition(ours_flat, ref_flat), f"eps={eps}"


def test_eigen_linkage_cophenetic_is_largest_gap_between() -> None:
    # Independent characterisation: coph(i, j) = max consecutive gap between lambda_i and lambda_j.
    spectrum = _tied_spectrum(7)[:60]
    coph = hierarchy.cophenet(eigen_linkage(spectrum))
    sorted_spectrum = np.sort(spectrum)
    expected = []
    for i in range(spectrum.size):
        for j in range(i + 1, spectrum.size):
            lo, hi = sorted(spectrum[[i, j]])
            inside = sorted_spectrum[(sorted_spectrum >= lo) & (sorted_spectrum <= hi)]
            expected.append(np.diff(inside).max() if inside.size > 1 else 0.0)
    np.testing.assert_array_equal(coph, np.array(expected))


def test_eigen_linkage_leaves_are_in_input_order() -> None:
    # Permuting the input must permute the leaves: coph(perm) == coph restricted by perm.
    spectrum = _wide_range_spectrum(3)
    perm = np.random.default_rng(0).permutation(spectrum.size)
    square = hierarchy.distance.squareform(hierarchy.cophenet(eigen_linkage(spectrum)))
    square_perm = hierarchy.distance.squareform(hierarchy.cophenet(eigen_linkage(spectrum[perm])))
    np.testing.assert_array_equal(square_perm, square[np.ix_(perm, perm)])


def test_eigen_linkage_n2_and_all_tied() -> None:
    np.testing.assert_array_equal(eigen_linkage(np.array([3.0, -1.5])), [[0.0, 1.0, 4.5, 2.0]])
    np.testing.assert_array_equal(
        eigen_linkage(np.array([3.0, -1.5])), _scipy_single(np.array([3.0, -1.5]))
    )
    constant = np.full(50, 0.25)
    linkage = eigen_linkage(constant)
    assert hierarchy.is_valid_linkage(linkage)
    np.testing.assert_array_equal(linkage[:, 2], 0.0)
    assert np.unique(hierarchy.fcluster(linkage, t=0.0, criterion="distance")).size == 1


def test_eigen_linkage_n1_is_rejected_like_scipy() -> None:
    with pytest.raises(ValueError, match="eigenvalues"):
        eigen_linkage(np.array([1.0]))
    with pytest.raises(ValueError):
        _scipy_single(np.array([1.0]))


def test_eigen_linkage_large_n_runs_and_is_consistent() -> None:
    # O(n log n) sanity check: 200k eigenvalues (scipy's O(n^2) linkage could not do this).
    rng = np.random.default_rng(5)
    spectrum = np.concatenate([rng.standard_normal(150_000) * 1e-6, rng.standard_normal(50_000)])
    spectrum = np.round(spectrum, 9)  # plenty of exact ties
    linkage = eigen_linkage(spectrum)
    assert linkage.shape == (spectrum.size - 1, 4)
    np.testing.assert_array_equal(linkage[:, 2], merge_heights(spectrum))
    assert hierarchy.is_monotonic(linkage)
    assert linkage[-1, 3] == spectrum.size
    # Every observation and every intermediate cluster is used exactly once.
    children = np.sort(linkage[:, :2].ravel())
    np.testing.assert_array_equal(children, np.arange(2 * spectrum.size - 2))


def test_eigen_linkage_accepts_torch_and_scipy_dendrogram_truncation() -> None:
    spectrum = _random_spectrum(11)
    from_torch = eigen_linkage(torch.from_numpy(spectrum))
    np.testing.assert_array_equal(from_torch, eigen_linkage(spectrum))
    truncated = hierarchy.dendrogram(from_torch, truncate_mode="lastp", p=12, no_plot=True)
    assert len(truncated["leaves"]) == 12


def test_merge_heights_are_sorted_gaps() -> None:
    spectrum = _tied_spectrum(2)
    np.testing.assert_array_equal(merge_heights(spectrum), np.sort(_scipy_single(spectrum)[:, 2]))
    assert merge_heights(np.array([4.0])).shape == (0,)


# ----------------------------------------------------------------------------- cluster_counts
@pytest.mark.parametrize("name", ["random0", "ties1", "wide2"])
def test_cluster_counts_match_fcluster(name: str) -> None:
    spectrum = SPECTRA[name]
    reference = _scipy_single(spectrum)
    resolutions = _test_resolutions(spectrum)
    counts = cluster_counts(spectrum, resolutions)
    expected = [
        np.unique(hierarchy.fcluster(reference, t=eps, criterion="distance")).size
        for eps in resolutions
    ]
    np.testing.assert_array_equal(counts, expected)
    assert counts.dtype == np.int64


def test_cluster_counts_shapes_and_edge_cases() -> None:
    spectrum = np.array([0.0, 1.0, 1.0, 3.0])  # gaps 1, 0, 2
    scalar = cluster_counts(spectrum, 1.0)
    assert scalar.shape == () and int(scalar) == 2  # the gap equal to eps does not split
    grid = np.array([[0.0, 0.5], [2.0, np.inf]])
    np.testing.assert_array_equal(cluster_counts(spectrum, grid), [[3, 3], [1, 1]])
    np.testing.assert_array_equal(cluster_counts(np.array([7.0]), [0.0, 1.0]), [1, 1])


# ----------------------------------------------------------------------------- cluster_labels
@pytest.mark.parametrize("name", list(SPECTRA))
def test_cluster_labels_same_partition_as_fcluster(name: str) -> None:
    spectrum = SPECTRA[name]
    reference = _scipy_single(spectrum)
    order = np.argsort(spectrum, kind="stable")
    for eps in _test_resolutions(spectrum)[::7]:
        labels = cluster_labels(spectrum, float(eps))
        ref_flat = hierarchy.fcluster(reference, t=eps, criterion="distance")
        assert _same_partition(labels, ref_flat), f"eps={eps}"
        # Documented numbering: 0..k-1, increasing with the eigenvalue.
        n_clusters = int(cluster_counts(spectrum, eps))
        np.testing.assert_array_equal(np.unique(labels), np.arange(n_clusters))
        assert np.all(np.diff(labels[order]) >= 0)


def test_cluster_labels_small_cases() -> None:
    np.testing.assert_array_equal(cluster_labels(np.array([5.0, 0.0, 1.0]), 1.0), [1, 0, 0])
    np.testing.assert_array_equal(cluster_labels(np.array([5.0, 0.0, 1.0]), 0.5), [2, 0, 1])
    np.testing.assert_array_equal(cluster_labels(np.array([2.0]), 0.0), [0])


# ----------------------------------------------------------------------------- spectral_gaps
def _brute_force_gaps(spectrum: np.ndarray, top: int) -> np.ndarray:
    """All pairs (lo, hi), lo < hi, with no eigenvalue strictly between them; O(n^3)."""
    rows = []
    for lo in set(spectrum.tolist()):
        for hi in set(spectrum.tolist()):
            if lo < hi and not np.any((spectrum > lo) & (spectrum < hi)):
                rows.append((hi - lo, lo, hi))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return np.array(rows[:top], dtype=np.float64).reshape(-1, 3)


@pytest.mark.parametrize("name", ["random1", "ties0", "ties2", "wide1"])
@pytest.mark.parametrize("top", [1, 5, 10])
def test_spectral_gaps_vs_brute_force(name: str, top: int) -> None:
    spectrum = SPECTRA[name][:120]
    gaps = spectral_gaps(spectrum, top=top)
    np.testing.assert_array_equal(gaps, _brute_force_gaps(spectrum, top))
    np.testing.assert_array_equal(gaps[:, 0], gaps[:, 2] - gaps[:, 1])
    assert np.all(np.diff(gaps[:, 0]) <= 0)


def test_spectral_gaps_fewer_rows_than_top() -> None:
    gaps = spectral_gaps(np.array([1.0, 1.0, 4.0, 0.0]), top=10)
    np.testing.assert_array_equal(gaps, [[3.0, 1.0, 4.0], [1.0, 0.0, 1.0]])
    assert spectral_gaps(np.full(5, 2.0)).shape == (0, 3)
    assert spectral_gaps(np.array([2.0])).shape == (0, 3)
    # The largest gap is the last merge height of the dendrogram.
    spectrum = _wide_range_spectrum(0)
    assert spectral_gaps(spectrum, top=1)[0, 0] == eigen_linkage(spectrum)[-1, 2]


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "function", [eigen_linkage, merge_heights, lambda x: cluster_counts(x, 0.1),
                 lambda x: cluster_labels(x, 0.1), spectral_gaps],
)
@pytest.mark.parametrize(
    "bad", [np.ones((3, 2)), np.array([1.0, np.nan]), np.array([np.inf, 0.0]), np.array([])],
)
def test_bad_eigenvalues_raise_value_error(function, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="eigenvalues"):
        function(bad)


def test_bad_options_raise() -> None:
    spectrum = np.array([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="eps"):
        cluster_counts(spectrum, [0.1, -0.1])
    with pytest.raises(ValueError, match="eps"):
        cluster_counts(spectrum, np.nan)
    with pytest.raises(ValueError, match="eps"):
        cluster_labels(spectrum, -1.0)
    with pytest.raises(ValueError, match="eps"):
        cluster_labels(spectrum, [0.1, 0.2])
    with pytest.raises(ValueError, match="top"):
        spectral_gaps(spectrum, top=0)
    with pytest.raises(TypeError, match="top"):
        spectral_gaps(spectrum, top=2.5)
    with pytest.raises(TypeError, match="eigenvalues"):
        eigen_linkage(np.array([1.0 + 1j, 2.0]))
