"""Tests for ``hessian_core.warm`` against independent references.

References: ``numpy.linalg.eigvalsh`` of dense planted matrices (clustered, near-degenerate and negative extremes)
and ``torch.linalg.eigvalsh`` of a small model's exact Hessian (``hessian_core.full_hessian``); HVP counts against
the cold ``lanczos_solve`` on the same operator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessian_core import full_hessian, hessian_operator, lanczos_solve, warm_lanczos
from tests.cases import CountingOperator, attention_case, check_pairs, planted, reference_ends


def _spectrum(seed: int) -> np.ndarray:
    """Hessian-like, P = 600: a +-0.01 bulk, a cluster of negatives with a near-degenerate pair, clustered tops."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.laplace(0.0, 0.01, 570), -np.exp(rng.uniform(np.log(0.05), 0.0, 14)), [-1.2, -1.2 + 1e-7],
                 [20.0, 19.5, 19.4, 8.0, 7.9, 7.85, 3.0, 2.0, 1.5, 1.0, 0.9, 0.5, 0.3, 0.2]]


@pytest.fixture(scope="module")
def trajectory() -> tuple[np.ndarray, np.ndarray]:
    """Two "consecutive checkpoints": a planted matrix and a slightly perturbed copy (relative change 1e-4)."""
    matrix, _ = planted(_spectrum(0), seed=1)
    noise = np.random.default_rng(2).standard_normal(matrix.shape)
    perturbed = matrix + 1e-4 * 20.0 * (noise + noise.T) / (2 * np.sqrt(matrix.shape[0]))
    return matrix, perturbed


def _check_certified(matrix: np.ndarray, result, k: int, which: str, tol: float) -> None:
    """Eigenvalues match eigvalsh within the residual bound; residuals recomputed with the dense matrix."""
    exact = np.linalg.eigvalsh(matrix)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(result.eigenvalues, reference_ends(matrix, k, which), rtol=0, atol=tol * scale)
    check_pairs(matrix, result.eigenvalues, result.eigenvectors, tol * scale * 1.0001)
    assert np.all(result.residual_norms <= result.threshold)
    # The threshold is the cold solver's: tol times the largest |Ritz value|.
    np.testing.assert_allclose(result.threshold, tol * scale, rtol=1e-6)


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_warm_start_from_the_previous_checkpoint_matches_eigvalsh_with_fewer_hvps(which, trajectory):
    matrix, perturbed = trajectory
    k, tol = 4, 1e-9
    previous = lanczos_solve(matrix, k, which=which, tol=tol, return_vectors=True, progress=False)
    operator = CountingOperator(perturbed)
    warm = warm_lanczos(operator, k, start=previous.eigenvectors, which=which, tol=tol, progress=False)
    assert warm.warm and warm.fallback == ""
    assert warm.hvps == operator.count  # the count is the operator's, not an estimate
    _check_certified(perturbed, warm, k, which, tol)
    cold = lanczos_solve(perturbed, k, which=which, tol=tol, progress=False)
    assert warm.hvps < cold.n_matvecs
    assert 0 < warm.restart_hvps < warm.hvps


def test_warm_start_from_exact_vectors_needs_only_the_multiplicity_check(trajectory):
    """From the exact eigenvectors the first sequence converges after 2k HVPs (its Krylov space is their span
    after 2k steps); the rest is the random multiplicity check, which a cold solve pays as well."""
    matrix, _ = trajectory
    k, tol = 4, 1e-9
    values, vectors = np.linalg.eigh(matrix)
    exact_start = np.hstack([vectors[:, :k], vectors[:, -k:]])
    warm = warm_lanczos(matrix, k, start=exact_start, tol=tol, progress=False)
    cold = lanczos_solve(matrix, k, tol=tol, progress=False)
    assert warm.warm
    _check_certified(matrix, warm, k, "both", tol)
    # 2k steps, plus a few: the Krylov polynomial cannot split the 1e-7 pair in 2k steps.
    assert warm.hvps - warm.restart_hvps <= 2 * k + 8
    assert warm.hvps - warm.restart_hvps < 0.5 * (cold.n_matvecs - cold.restart_matvecs)
    assert warm.hvps < 0.8 * cold.n_matvecs


def test_near_degenerate_pair_is_resolved_from_a_warm_start(trajectory):
    """-1.2 and -1.2 + 1e-7: both copies found, each with its own eigenvector."""
    matrix, perturbed = trajectory
    previous = lanczos_solve(matrix, 2, which="smallest", tol=1e-12, return_vectors=True, progress=False)
    warm = warm_lanczos(perturbed, 2, start=previous.eigenvectors, which="smallest", tol=1e-12, progress=False)
    reference = reference_ends(perturbed, 2, "smallest")
    np.testing.assert_allclose(warm.eigenvalues, reference, rtol=0, atol=1e-11 * 20)
    assert warm.eigenvalues[1] - warm.eigenvalues[0] == pytest.approx(reference[1] - reference[0], rel=1e-2)


def test_start_orthogonal_to_the_wanted_eigenvectors_still_finds_them(trajectory):
    """A start inside the bulk's invariant subspace: its Krylov space never meets the extremes in exact
    arithmetic; the random multiplicity restarts must find every one of them (warm or by falling back)."""
    matrix, _ = trajectory
    k, tol = 3, 1e-9
    _, vectors = np.linalg.eigh(matrix)
    bulk = vectors[:, 100:106]
    result = warm_lanczos(matrix, k, start=bulk, tol=tol, progress=False)
    _check_certified(matrix, result, k, "both", tol)
    assert result.warm or result.fallback


@pytest.mark.parametrize("start, reason", [
    (None, "no start block given"),
    (np.zeros((600, 4)), "no nonzero column"),
    (np.ones((599, 4)), "shape"),
    (np.full((600, 4), np.nan), "non-finite"),
])
def test_unusable_start_falls_back_to_cold_and_says_why(start, reason, trajectory):
    matrix, _ = trajectory
    result = warm_lanczos(matrix, 3, start=start, tol=1e-9, progress=False)
    cold = lanczos_solve(matrix, 3, tol=1e-9, return_vectors=True, progress=False)
    assert not result.warm and reason in result.fallback
    np.testing.assert_array_equal(result.eigenvalues, cold.eigenvalues)  # the cold solve, same seed
    assert result.hvps == cold.n_matvecs


def test_warm_budget_exhausted_falls_back_and_counts_both_attempts(trajectory):
    matrix, perturbed = trajectory
    previous = lanczos_solve(matrix, 3, tol=1e-9, return_vectors=True, progress=False)
    operator = CountingOperator(perturbed)
    result = warm_lanczos(operator, 3, start=previous.eigenvectors, tol=1e-9, warm_max_iter=8, progress=False)
    assert not result.warm and "warm_max_iter=8" in result.fallback
    assert result.hvps == operator.count > lanczos_solve(perturbed, 3, tol=1e-9, progress=False).n_matvecs
    _check_certified(perturbed, result, 3, "both", 1e-9)


def test_float32_start_and_one_vector_start_are_accepted(trajectory):
    matrix, perturbed = trajectory
    previous = lanczos_solve(matrix, 3, tol=1e-9, return_vectors=True, progress=False)
    for start in (previous.eigenvectors.astype(np.float32), previous.eigenvectors[:, -1]):
        result = warm_lanczos(perturbed, 3, start=start, tol=1e-9, progress=False)
        assert result.warm
        _check_certified(perturbed, result, 3, "both", 1e-9)


def test_warm_start_across_model_checkpoints_matches_the_dense_hessian():
    """Two "checkpoints" of the tiny transformer (the second a small step away): warm Lanczos on the HVP
    operator against eigvalsh of the exact float64 Hessian."""
    model, loss_fn, batch = attention_case()
    model = model.double()
    k, tol = 3, 1e-10
    first = warm_lanczos(hessian_operator(model, loss_fn, batch), k, tol=tol, progress=False)
    assert not first.warm  # nothing to start from
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in model.parameters():
            parameter.add_(1e-3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    operator = hessian_operator(model, loss_fn, batch)
    second = warm_lanczos(operator, k, start=first.eigenvectors, tol=tol, progress=False)
    assert second.warm and second.hvps == operator.n_products
    dense = full_hessian(model, loss_fn, batch).numpy()
    _check_certified(dense, second, k, "both", tol)


def test_bad_arguments_name_the_argument(trajectory):
    matrix, _ = trajectory
    with pytest.raises(ValueError, match="warm_max_iter"):
        warm_lanczos(matrix, 3, warm_max_iter=2, progress=False)
    with pytest.raises(TypeError, match="start"):
        warm_lanczos(matrix, 3, start="previous", progress=False)
    with pytest.raises(ValueError, match="k="):
        warm_lanczos(matrix, 0, progress=False)
    with pytest.raises(ValueError, match="which"):
        warm_lanczos(matrix, 3, which="top", progress=False)
