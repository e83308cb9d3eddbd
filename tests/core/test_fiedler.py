"""Tests for hessian_core.fiedler against numpy/scipy eigensolvers, known graphs and planted blocks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.cluster import hierarchy

from hessian_core import fiedler as fiedler_module
from hessian_core.fiedler import (
    _smallest_eigenpair,
    _sweep_cut,
    algebraic_connectivity,
    coupling_graph,
    fiedler_linkage,
    fiedler_vector,
    largest_component_connectivity,
)

SPLITS = ("sign", "sweep")
LAPLACIANS = ("combinatorial", "normalized")


# ----------------------------------------------------------------------------- helpers
def _random_graph(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = np.triu(rng.uniform(0.0, 1.0, (size, size)), 1)
    return weights + weights.T


def _laplacian(weights: np.ndarray) -> np.ndarray:
    return np.diag(weights.sum(axis=1)) - weights


def _planted_hessian(sizes: list[int], seed: int, *, between: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Signed symmetric 'Hessian' whose |H| has strong blocks, weak coupling between, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    size = labels.size
    magnitude = rng.uniform(0.5, 1.5, (size, size))
    magnitude[labels[:, None] != labels[None, :]] *= between
    signed = np.triu(magnitude * rng.choice([-1.0, 1.0], (size, size)), 1)
    hessian = signed + signed.T + np.diag(rng.standard_normal(size) * 3)  # diagonal is ignored
    perm = rng.permutation(size)
    return hessian[np.ix_(perm, perm)], labels[perm]


def _same_partition(labels_a: np.ndarray, labels_b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([labels_a, labels_b]), axis=1).shape[1]
    return pairs == np.unique(labels_a).size == np.unique(labels_b).size


def _assert_valid(linkage: np.ndarray, n_params: int) -> None:
    assert linkage.shape == (n_params - 1, 4)
    assert hierarchy.is_valid_linkage(linkage)
    assert hierarchy.is_monotonic(linkage)
    assert np.all(np.isfinite(linkage))
    assert linkage[-1, 3] == n_params
    # Column 3 recomputed from the merge structure.
    sizes = np.ones(2 * n_params - 1)
    for row, (a, b) in enumerate(linkage[:, :2].astype(int)):
        sizes[n_params + row] = sizes[a] + sizes[b]
    np.testing.assert_array_equal(linkage[:, 3], sizes[n_params:])


def _clusters_with_heights(linkage: np.ndarray) -> dict[frozenset[int], float]:
    n_params = linkage.shape[0] + 1
    members: list[frozenset[int]] = [frozenset([i]) for i in range(n_params)]
    result = {}
    for a, b, height, _ in linkage:
        merged = members[int(a)] | members[int(b)]
        members.append(merged)
        result[merged] = float(height)
    return result


def _reference_tree(
    weights: np.ndarray, *, normalized: bool, monotone: str
) -> dict[frozenset[int], float]:
    """Naive recursive Fiedler bisection with full LAPACK eigendecompositions (sign split).

    Independent of the code under test: no deflation, no Lanczos, plain recursion;
    the normalized case solves the generalized problem L v = lambda D v.
    """
    own: dict[frozenset[int], float] = {}
    children: dict[frozenset[int], tuple[frozenset[int], frozenset[int]]] = {}

    def bisect(members: np.ndarray) -> None:
        if members.size < 2:
            return
        sub = weights[np.ix_(members, members)]
        laplacian = _laplacian(sub)
        if normalized:
            values, vectors = scipy.linalg.eigh(laplacian, np.diag(sub.sum(axis=1)))
        else:
            values, vectors = np.linalg.eigh(laplacian)
        vector = vectors[:, 1]
        vector = vector if vector[np.argmax(np.abs(vector))] > 0 else -vector
        left, right = members[vector > 0], members[vector <= 0]
        key = frozenset(members.tolist())
        own[key] = 1.0 / values[1]
        children[key] = (frozenset(left.tolist()), frozenset(right.tolist()))
        bisect(left)
        bisect(right)

    bisect(np.arange(weights.shape[0]))
    heights: dict[frozenset[int], float] = {}

    def settle_max(key: frozenset[int]) -> float:
        if key not in own:
            return 0.0
        heights[key] = max(own[key], *(settle_max(child) for child in children[key]))
        return heights[key]

    def settle_clip(key: frozenset[int], ceiling: float) -> None:
        if key in own:
            heights[key] = min(own[key], ceiling)
            for child in children[key]:
                settle_clip(child, heights[key])

    root = frozenset(range(weights.shape[0]))
    settle_max(root) if monotone == "max" else settle_clip(root, np.inf)
    return heights


# ----------------------------------------------------------------------------- coupling_graph
def test_coupling_graph_is_abs_with_zero_diagonal() -> None:
    hessian, _ = _planted_hessian([4, 6], seed=0)
    weights = coupling_graph(hessian)
    expected = np.abs(hessian)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(weights, expected)
    assert weights.dtype == np.float64


def test_coupling_graph_accepts_torch_and_symmetrizes_rounding() -> None:
    hessian, _ = _planted_hessian([5, 9], seed=1)
    noisy = hessian + 1e-7 * np.random.default_rng(0).standard_normal(hessian.shape)  # not symmetric
    tensor = torch.tensor(noisy, dtype=torch.float32, requires_grad=True)
    weights = coupling_graph(tensor)
    as_float32 = noisy.astype(np.float32).astype(np.float64)
    expected = np.abs((as_float32 + as_float32.T) / 2)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(weights, expected)
    np.testing.assert_array_equal(weights, weights.T)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.ones((3, 4)), "square"),
        (np.ones(3), "square"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "finite"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "symmetric"),
        (np.zeros((0, 0)), "empty"),
    ],
)
def test_coupling_graph_rejects_bad_H(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=f"H.*{message}|{message}.*H"):
        coupling_graph(bad)


# ----------------------------------------------------------------------------- algebraic_connectivity
@pytest.mark.parametrize("dense_max", [1000, 2])  # 2 forces Cholesky + shift-invert Lanczos
@pytest.mark.parametrize("seed", range(3))
def test_algebraic_connectivity_matches_eigvalsh(seed: int, dense_max: int) -> None:
    weights = _random_graph(60, seed) * np.random.default_rng(seed).uniform(0.01, 1.0, (60, 60)) ** 2
    weights = (weights + weights.T) / 2
    expected = np.linalg.eigvalsh(_laplacian(weights))[1]
    assert algebraic_connectivity(weights, dense_max=dense_max) == pytest.approx(expected, rel=1e-10)
    degrees = weights.sum(axis=1)
    normalized = np.eye(60) - weights / np.sqrt(np.outer(degrees, degrees))
    expected_normalized = np.linalg.eigvalsh(normalized)[1]
    value = algebraic_connectivity(weights, normalized=True, dense_max=dense_max)
    assert value == pytest.approx(expected_normalized, rel=1e-10)


@pytest.mark.parametrize("size", [2, 3, 10, 57])
def test_algebraic_connectivity_known_graphs(size: int) -> None:
    complete = np.ones((size, size)) - np.eye(size)
    assert algebraic_connectivity(complete) == pytest.approx(size, rel=1e-12)
    assert algebraic_connectivity(3.5 * complete) == pytest.approx(3.5 * size, rel=1e-12)
    path = np.diag(np.ones(size - 1), 1) + np.diag(np.ones(size - 1), -1)
    expected = 2 - 2 * np.cos(np.pi / size)
    assert algebraic_connectivity(path) == pytest.approx(expected, rel=1e-10)
    assert algebraic_connectivity(path, dense_max=2) == pytest.approx(expected, rel=1e-8)
    # Normalized Laplacian of K_n: lambda_2 = n / (n - 1).
    assert algebraic_connectivity(complete, normalized=True) == pytest.approx(size / (size - 1))


def test_algebraic_connectivity_disconnected_and_isolated() -> None:
    weights = scipy.linalg.block_diag(_random_graph(5, 0), _random_graph(7, 1))
    perm = np.random.default_rng(0).permutation(12)
    assert algebraic_connectivity(weights[np.ix_(perm, perm)]) == 0.0
    with_isolated = scipy.linalg.block_diag(_random_graph(6, 2), np.zeros((1, 1)))
    assert algebraic_connectivity(with_isolated) == 0.0
    assert algebraic_connectivity(with_isolated, normalized=True) == 0.0
    assert algebraic_connectivity(np.zeros((2, 2))) == 0.0


def test_algebraic_connectivity_torch_and_validation() -> None:
    weights = _random_graph(20, 4)
    expected = np.linalg.eigvalsh(_laplacian(weights))[1]
    assert algebraic_connectivity(torch.from_numpy(weights)) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="W"):
        algebraic_connectivity(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="W.*non-negative"):
        algebraic_connectivity(-weights)
    with pytest.raises(ValueError, match="W.*symmetric"):
        algebraic_connectivity(np.triu(weights))
    with pytest.raises(ValueError, match="dense_max"):
        algebraic_connectivity(weights, dense_max=1)


# ----------------------------------------------------------------------------- fiedler_vector
@pytest.mark.parametrize("dense_max", [1000, 2])
@pytest.mark.parametrize("normalized", [False, True])
def test_fiedler_vector_solves_the_eigenproblem(normalized: bool, dense_max: int) -> None:
    weights = _random_graph(50, 7)
    laplacian = _laplacian(weights)
    degrees = np.diag(weights.sum(axis=1))
    value, vector = fiedler_vector(weights, normalized=normalized, dense_max=dense_max)
    if normalized:
        values, vectors = scipy.linalg.eigh(laplacian, degrees)
        np.testing.assert_allclose(laplacian @ vector, value * degrees @ vector, atol=1e-10)
        assert abs(np.sum(degrees @ vector)) < 1e-10
    else:
        values, vectors = np.linalg.eigh(laplacian)
        np.testing.assert_allclose(laplacian @ vector, value * vector, atol=1e-10)
        assert abs(vector.sum()) < 1e-10
    assert value == pytest.approx(values[1], rel=1e-10)
    reference = vectors[:, 1] / np.linalg.norm(vectors[:, 1])
    assert abs(abs(reference @ vector) - 1) < 1e-10  # same direction (lambda_2 is simple here)
    assert np.linalg.norm(vector) == pytest.approx(1.0)
    assert vector[np.argmax(np.abs(vector))] > 0  # documented sign convention


def test_fiedler_vector_rejects_disconnected() -> None:
    with pytest.raises(ValueError, match="connected"):
        fiedler_vector(scipy.linalg.block_diag(_random_graph(3, 0), _random_graph(3, 1)))


# ----------------------------------------------------------------------------- eigensolver paths
@pytest.mark.parametrize("clustered", [False, True])
def test_lanczos_budget_falls_back_to_dense(clustered: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # SPD matrix with a known spectrum; a bottom cluster of near-equal eigenvalues
    # makes shift-invert Lanczos stall, which must hand over to dense LAPACK.
    size = 240
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    spectrum = np.linspace(2.0, 3.0, size)
    spectrum[0] = 1.0  # well separated: Lanczos converges in a few dozen solves
    if clustered:
        spectrum[:120] = 1.0 + 1e-9 * np.arange(120)
    matrix = (basis * spectrum) @ basis.T
    matrix = (matrix + matrix.T) / 2
    dense_calls = []
    original = fiedler_module.scipy.linalg.eigh
    monkeypatch.setattr(
        fiedler_module.scipy.linalg, "eigh", lambda *a, **k: dense_calls.append(1) or original(*a, **k)
    )
    value, vector = _smallest_eigenpair(matrix.copy(), dense_max=10, seed=0)
    assert len(dense_calls) == (1 if clustered else 0)
    assert value == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(matrix @ vector, value * vector, atol=1e-6 if clustered else 1e-9)


# ----------------------------------------------------------------------------- sweep cut
@pytest.mark.parametrize("size", [9, 300])  # 300 > one row block of the blocked scan
def test_sweep_cut_is_the_best_conductance_prefix(size: int) -> None:
    weights = _random_graph(size, 3) ** 3
    vector = np.random.default_rng(1).standard_normal(size)
    order = np.argsort(vector, kind="stable")
    degrees = weights.sum(axis=1)
    conductances = []
    for k in range(1, size):
        inside = np.zeros(size, dtype=bool)
        inside[order[:k]] = True
        cut = weights[np.ix_(inside, ~inside)].sum()
        conductances.append(cut / min(degrees[inside].sum(), degrees[~inside].sum()))
    best = np.zeros(size, dtype=bool)
    best[order[: int(np.argmin(conductances)) + 1]] = True
    np.testing.assert_array_equal(_sweep_cut(weights, vector), best)


# ----------------------------------------------------------------------------- fiedler_linkage
@pytest.mark.parametrize("monotone", ["max", "clip"])
@pytest.mark.parametrize("laplacian", LAPLACIANS)
@pytest.mark.parametrize("split", SPLITS)
def test_planted_unequal_blocks_come_out_whole(split: str, laplacian: str, monotone: str) -> None:
    hessian, truth = _planted_hessian([7, 20, 43], seed=11)
    linkage = fiedler_linkage(
        hessian, split=split, laplacian=laplacian, monotone=monotone, progress=False
    )
    _assert_valid(linkage, truth.size)
    flat = hierarchy.fcluster(linkage, 3, criterion="maxclust")
    assert _same_partition(flat, truth)
    # Each planted block is itself one cluster of the tree (not only a flat cut).
    clusters = _clusters_with_heights(linkage)
    for block in range(3):
        assert frozenset(np.flatnonzero(truth == block).tolist()) in clusters


@pytest.mark.parametrize("monotone", ["max", "clip"])
@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_tree_matches_naive_reference_bisection(laplacian: str, monotone: str) -> None:
    weights = _random_graph(40, 5) ** 2
    linkage = fiedler_linkage(
        weights, laplacian=laplacian, monotone=monotone, split="sign", progress=False
    )
    _assert_valid(linkage, 40)
    ours = _clusters_with_heights(linkage)
    reference = _reference_tree(weights, normalized=laplacian == "normalized", monotone=monotone)
    assert set(ours) == set(reference)
    for cluster, height in reference.items():
        assert ours[cluster] == pytest.approx(height, rel=1e-9)


@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_lanczos_path_builds_the_same_tree_as_dense(laplacian: str) -> None:
    hessian, _ = _planted_hessian([12, 30, 45], seed=2, between=0.05)
    dense = fiedler_linkage(hessian, laplacian=laplacian, progress=False)
    lanczos = fiedler_linkage(hessian, laplacian=laplacian, dense_max=8, progress=False)
    dense_clusters, lanczos_clusters = _clusters_with_heights(dense), _clusters_with_heights(lanczos)
    assert set(dense_clusters) == set(lanczos_clusters)
    for cluster, height in dense_clusters.items():
        assert lanczos_clusters[cluster] == pytest.approx(height, rel=1e-8)


def test_root_height_is_inverse_algebraic_connectivity() -> None:
    hessian, _ = _planted_hessian([10, 25], seed=4)
    weights = np.abs(hessian)
    np.fill_diagonal(weights, 0.0)
    lambda_2 = np.linalg.eigvalsh(_laplacian(weights))[1]
    options = {"laplacian": "combinatorial", "progress": False}
    linkage = fiedler_linkage(hessian, monotone="clip", **options)
    assert linkage[-1, 2] == pytest.approx(1 / lambda_2, rel=1e-10)
    scaled = fiedler_linkage(hessian, monotone="clip", height="size_scaled", **options)
    assert scaled[-1, 2] == pytest.approx(35 / lambda_2, rel=1e-10)
    # "max": the root is at least its own 1/lambda_2.
    assert fiedler_linkage(hessian, **options)[-1, 2] >= 1 / lambda_2 * (1 - 1e-12)
    # Default (normalized Laplacian): generalized problem L v = lambda D v.
    lambda_2_normalized = scipy.linalg.eigh(_laplacian(weights), np.diag(weights.sum(1)))[0][1]
    default = fiedler_linkage(hessian, monotone="clip", progress=False)
    assert default[-1, 2] == pytest.approx(1 / lambda_2_normalized, rel=1e-10)


def test_size_scaled_height_of_uniform_blocks() -> None:
    # Unit weights inside two blocks, b between: |S|/lambda_2 = 1/b at the root and
    # 1/1 inside a block (K_n: lambda_2 = n), whatever the block sizes.
    b = 0.02
    labels = np.repeat([0, 1], [6, 15])
    weights = np.where(labels[:, None] == labels[None, :], 1.0, b)
    linkage = fiedler_linkage(
        weights, laplacian="combinatorial", height="size_scaled", monotone="clip", progress=False
    )
    _assert_valid(linkage, 21)
    assert linkage[-1, 2] == pytest.approx(1 / b, rel=1e-10)
    np.testing.assert_allclose(linkage[:-1, 2], 1.0, rtol=1e-10)


def test_disconnected_components_merge_at_disconnected_height() -> None:
    sizes = [5, 9, 16]
    hessian = scipy.linalg.block_diag(*[_random_graph(s, s) - 0.5 for s in sizes])
    truth = np.repeat(np.arange(3), sizes)
    perm = np.random.default_rng(3).permutation(truth.size)
    hessian, truth = hessian[np.ix_(perm, perm)], truth[perm]
    linkage = fiedler_linkage(hessian, progress=False)
    _assert_valid(linkage, truth.size)
    finite_top = linkage[:-2, 2].max()
    np.testing.assert_array_equal(linkage[-2:, 2], 2 * finite_top)  # documented default
    assert _same_partition(hierarchy.fcluster(linkage, 3, criterion="maxclust"), truth)
    # Within each component the tree is the one built on that component alone.
    for block in range(3):
        members = np.flatnonzero(truth == block)
        alone = fiedler_linkage(hessian[np.ix_(members, members)], progress=False)
        inside = {frozenset(members[list(c)].tolist()): h for c, h in _clusters_with_heights(alone).items()}
        ours = _clusters_with_heights(linkage)
        for cluster, height in inside.items():
            assert ours[cluster] == pytest.approx(height, rel=1e-10)
    explicit = fiedler_linkage(hessian, disconnected_height=1e3, progress=False)
    np.testing.assert_array_equal(explicit[-2:, 2], 1e3)
    with pytest.raises(ValueError, match="disconnected_height"):
        fiedler_linkage(hessian, disconnected_height=finite_top / 2, progress=False)


@pytest.mark.parametrize("split", SPLITS)
def test_dead_parameters_are_isolated(split: str) -> None:
    hessian, truth = _planted_hessian([8, 14], seed=6)
    dead = np.array([0, 5, 21])
    hessian[dead, :] = 0.0
    hessian[:, dead] = 0.0
    linkage = fiedler_linkage(hessian, split=split, progress=False)
    _assert_valid(linkage, truth.size)
    top = linkage[-1, 2]
    # Just below the disconnected height: every dead parameter is alone.
    flat = hierarchy.fcluster(linkage, top * (1 - 1e-9), criterion="distance")
    for index in dead:
        assert np.sum(flat == flat[index]) == 1
    assert np.sum(linkage[:, 2] == top) == dead.size  # 4 live/dead parts joined by 3 merges


def test_tiny_inputs() -> None:
    with pytest.raises(ValueError, match="H"):
        fiedler_linkage(np.ones((1, 1)), progress=False)
    np.testing.assert_allclose(
        fiedler_linkage(np.array([[1.0, -0.25], [-0.25, 2.0]]), laplacian="combinatorial", progress=False),
        [[0, 1, 2.0, 2]],
    )  # lambda_2 = 2 * 0.25
    np.testing.assert_allclose(
        fiedler_linkage(np.array([[1.0, -0.25], [-0.25, 2.0]]), laplacian="normalized", progress=False),
        [[0, 1, 0.5, 2]],
    )
    np.testing.assert_array_equal(fiedler_linkage(np.eye(2), progress=False), [[0, 1, 1.0, 2]])
    linkage = fiedler_linkage(np.zeros((4, 4)), progress=False)  # all dead
    _assert_valid(linkage, 4)
    np.testing.assert_array_equal(linkage[:, 2], 1.0)


@pytest.mark.parametrize("laplacian", LAPLACIANS)
def test_stopping_rules_give_flat_leaf_clusters(laplacian: str) -> None:
    hessian, truth = _planted_hessian([7, 20, 43], seed=11)
    weights = coupling_graph(hessian)
    normalized = laplacian == "normalized"
    block_lambda = {
        b: algebraic_connectivity(weights[np.ix_(truth == b, truth == b)], normalized=normalized)
        for b in range(3)
    }
    options = {"laplacian": laplacian, "progress": False}
    # min_cluster_size=21: the 7- and 20-blocks are not bisected -> chains at 1/lambda_2(block).
    linkage = fiedler_linkage(hessian, min_cluster_size=21, **options)
    _assert_valid(linkage, truth.size)
    for block in (0, 1):
        members = np.flatnonzero(truth == block)
        rows = [i for i, c in enumerate(_clusters_with_heights(linkage)) if c <= set(members)]
        assert len(rows) == members.size - 1
        np.testing.assert_allclose(linkage[rows, 2], 1 / block_lambda[block], rtol=1e-10)
    # max_depth=0: the root is not bisected: one flat chain at 1/lambda_2(root).
    flat = fiedler_linkage(hessian, max_depth=0, **options)
    _assert_valid(flat, truth.size)
    root_lambda = algebraic_connectivity(weights, normalized=normalized)
    np.testing.assert_allclose(flat[:, 2], 1 / root_lambda, rtol=1e-10)
    # Ceiling between the blocks' and the root's connectivity: the blocks become leaves.
    ceiling = 0.5 * min(block_lambda.values())
    assert ceiling > root_lambda
    capped = fiedler_linkage(hessian, max_connectivity=ceiling, **options)
    _assert_valid(capped, truth.size)
    assert _same_partition(hierarchy.fcluster(capped, 3, criterion="maxclust"), truth)
    capped_clusters = list(_clusters_with_heights(capped))
    for block in range(3):
        members = set(np.flatnonzero(truth == block).tolist())
        rows = [i for i, c in enumerate(capped_clusters) if c <= members]
        assert len(rows) == len(members) - 1
        np.testing.assert_allclose(capped[rows, 2], 1 / block_lambda[block], rtol=1e-10)


def test_default_recovers_blocks_with_heterogeneous_parameter_scales() -> None:
    # Hessian-like: per-parameter scales spread log-normally (degrees vary ~10x),
    # eight unequal planted blocks, weak dense coupling between them.
    rng = np.random.default_rng(0)
    sizes = [10, 15, 25, 40, 60, 75, 90, 110]
    truth = np.repeat(np.arange(len(sizes)), sizes)
    n_params = truth.size
    hessian = rng.standard_normal((n_params, n_params))
    hessian[truth[:, None] != truth[None, :]] *= 0.005
    scale = np.exp(0.5 * rng.standard_normal(n_params))
    hessian = np.triu(hessian * np.outer(scale, scale), 1)
    hessian = hessian + hessian.T
    for split in SPLITS:
        linkage = fiedler_linkage(hessian, split=split, progress=False)
        _assert_valid(linkage, n_params)
        flat = hierarchy.fcluster(linkage, len(sizes), criterion="maxclust")
        assert _same_partition(flat, truth), split


def test_blas_threads_are_limited_and_restored() -> None:
    from threadpoolctl import threadpool_info

    before = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert before, "numpy/scipy BLAS should be visible to threadpoolctl"
    from hessian_core._threads import blas_threads_limited

    with blas_threads_limited(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
    assert [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"] == before


def test_torch_input_and_determinism() -> None:
    hessian, _ = _planted_hessian([9, 16], seed=8)
    from_numpy = fiedler_linkage(hessian, dense_max=5, progress=False)
    from_torch = fiedler_linkage(torch.from_numpy(hessian), dense_max=5, progress=False)
    np.testing.assert_array_equal(from_numpy, from_torch)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"split": "halves"}, "split"),
        ({"laplacian": "signless"}, "laplacian"),
        ({"height": "log"}, "height"),
        ({"monotone": "none"}, "monotone"),
        ({"min_cluster_size": 0}, "min_cluster_size"),
        ({"max_depth": -1}, "max_depth"),
        ({"max_connectivity": -1.0}, "max_connectivity"),
        ({"disconnected_height": np.inf}, "disconnected_height"),
        ({"dense_max": 1}, "dense_max"),
        ({"blas_threads": 0}, "blas_threads"),
    ],
)
def test_bad_options_name_the_argument(options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        fiedler_linkage(_random_graph(5, 0), progress=False, **options)


def test_bad_hessian_is_rejected() -> None:
    with pytest.raises(ValueError, match="H"):
        fiedler_linkage(np.ones((3, 2)), progress=False)
    with pytest.raises(ValueError, match="H"):
        fiedler_linkage(np.array([[0.0, np.inf], [np.inf, 0.0]]), progress=False)
    with pytest.raises(TypeError, match="max_depth"):
        fiedler_linkage(_random_graph(5, 0), max_depth=1.5, progress=False)


# ----------------------------------------------------------------------------- largest component, scale invariance
def _dense_lambda2(weights: np.ndarray, *, normalized: bool) -> float:
    """lambda_2 of a connected graph by a full dense eigendecomposition (the reference)."""
    degrees = weights.sum(axis=1)
    laplacian = np.diag(degrees) - weights
    if normalized:
        inv_sqrt = 1.0 / np.sqrt(degrees)
        laplacian = laplacian * inv_sqrt[:, None] * inv_sqrt[None, :]
    return float(np.linalg.eigvalsh(laplacian)[1])


def _planted_with_isolated(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A random 40-vertex connected graph, a separate 6-vertex component and 5 isolated vertices, shuffled."""
    rng = np.random.default_rng(seed)
    big, small = _random_graph(40, seed), _random_graph(6, seed + 1)
    weights = scipy.linalg.block_diag(big, small, np.zeros((5, 5)))
    perm = rng.permutation(weights.shape[0])
    weights = weights[np.ix_(perm, perm)]
    members = np.flatnonzero(np.isin(perm, np.arange(40)))  # where the big component went
    return weights, members, 5


@pytest.mark.parametrize("normalized", [False, True])
def test_largest_component_lambda2_equals_the_dense_laplacian_of_that_component(normalized):
    weights, members, n_isolated = _planted_with_isolated(7)
    assert algebraic_connectivity(weights, normalized=normalized) == 0.0  # the whole graph: exactly 0
    result = largest_component_connectivity(weights, normalized=normalized)
    expected = _dense_lambda2(weights[np.ix_(members, members)], normalized=normalized)
    assert result.size == 40 and result.n_isolated == n_isolated
    assert result.lambda2 == pytest.approx(expected, rel=1e-10)
    lambda2, size, isolated = result  # unpacks as a tuple
    assert (size, isolated) == (40, 5)


def test_largest_component_uses_the_lanczos_path_on_large_components():
    weights, members, _ = _planted_with_isolated(8)
    dense = largest_component_connectivity(weights, normalized=True)
    lanczos = largest_component_connectivity(weights, normalized=True, dense_max=10)
    assert lanczos.lambda2 == pytest.approx(dense.lambda2, rel=1e-8)


def test_largest_component_of_a_connected_graph_is_the_graph():
    weights = _random_graph(30, 3)
    result = largest_component_connectivity(weights)
    assert result.size == 30 and result.n_isolated == 0
    assert result.lambda2 == pytest.approx(algebraic_connectivity(weights), rel=1e-12)
    assert result.lambda2 == pytest.approx(_dense_lambda2(weights, normalized=False), rel=1e-10)


def test_largest_component_of_an_edgeless_graph_is_undefined():
    result = largest_component_connectivity(np.zeros((4, 4)))
    assert np.isnan(result.lambda2) and result.size == 1 and result.n_isolated == 4


def test_largest_component_ties_go_to_the_smallest_index():
    path = np.array([[0.0, 2.0], [2.0, 0.0]])  # lambda_2 = 4
    weights = scipy.linalg.block_diag(np.array([[0.0, 1.0], [1.0, 0.0]]), path)  # lambda_2 = 2, then 4
    assert largest_component_connectivity(weights).lambda2 == pytest.approx(2.0)


def _signed_hessian(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.standard_normal((size, size)))
    return upper + upper.T


def test_diagonal_normalized_coupling_by_hand():
    H = np.array([[4.0, -2.0, 0.5],
                  [-2.0, 1.0, 3.0],
                  [0.5, 3.0, -9.0]])
    W = coupling_graph(H, normalize="diagonal")
    expected = np.array([[0.0, 2 / 2, 0.5 / 6],
                         [2 / 2, 0.0, 3 / 3],
                         [0.5 / 6, 3 / 3, 0.0]])
    np.testing.assert_allclose(W, expected, rtol=1e-15)


def test_diagonal_normalized_coupling_is_invariant_under_rescaled_parameters():
    H = _signed_hessian(25, 4)
    rng = np.random.default_rng(5)
    s = np.exp(rng.uniform(-3, 3, 25)) * rng.choice([-1.0, 1.0], 25)  # S: any non-zero diagonal
    rescaled = H * s[:, None] * s[None, :]  # S H S
    np.testing.assert_allclose(coupling_graph(rescaled, normalize="diagonal"),
                               coupling_graph(H, normalize="diagonal"), rtol=1e-12, atol=0)
    # |H| is not invariant: it scales by |s_i s_j|
    np.testing.assert_allclose(coupling_graph(rescaled), coupling_graph(H) * np.abs(np.outer(s, s)), rtol=1e-12)
    assert not np.allclose(coupling_graph(rescaled), coupling_graph(H))
    # nor are the trees' graph quantities, while the normalized coupling's are
    a = largest_component_connectivity(coupling_graph(H, normalize="diagonal"), normalized=True).lambda2
    b = largest_component_connectivity(coupling_graph(rescaled, normalize="diagonal"), normalized=True).lambda2
    assert a == pytest.approx(b, rel=1e-10)


def test_diagonal_normalized_coupling_isolates_a_zero_diagonal():
    H = _signed_hessian(6, 9)
    H[2, 2] = 0.0  # off-diagonal entries of parameter 2 stay non-zero
    W = coupling_graph(H, normalize="diagonal")
    assert np.all(W[2] == 0) and np.all(W[:, 2] == 0)
    others = np.delete(np.arange(6), 2)
    d = np.sqrt(np.abs(np.diag(H)[others]))
    expected = np.abs(H[np.ix_(others, others)]) / np.outer(d, d)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(W[np.ix_(others, others)], expected, rtol=1e-14)
    assert largest_component_connectivity(W).n_isolated == 1


def test_coupling_graph_rejects_an_unknown_normalization():
    with pytest.raises(ValueError, match="normalize"):
        coupling_graph(np.eye(3), normalize="trace")
