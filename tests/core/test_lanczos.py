"""Tests for ``hessian_core.lanczos`` against independent references.

References: ``numpy.linalg.eigvalsh``/``eigh`` of the dense matrix (not the planted spectrum the matrix was built
from), planted spectra with a Haar-random eigenbasis, and scipy's ARPACK ``eigsh`` for HVP counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator, eigsh

from hessian_core.lanczos import LanczosConvergenceError, lanczos, lanczos_solve, top_eigenvalue
from tests.cases import CountingOperator, check_pairs, planted, reference_ends


# ----------------------------------------------------------------------------------------------------------------
# lanczos: accuracy against eigvalsh
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indefinite() -> tuple[np.ndarray, np.ndarray]:
    """A planted indefinite matrix (bulk N(0, 1), separated extremes at both ends) and its eigvalsh."""
    rng = np.random.default_rng(0)
    spectrum = np.r_[rng.normal(0.0, 1.0, 290), [6.0, 4.5, -5.0, -3.5], rng.uniform(-8, -6, 6)]
    matrix, _ = planted(spectrum, seed=1)
    return matrix, np.linalg.eigvalsh(matrix)


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_lanczos_matches_eigvalsh_on_indefinite_spectrum(which, indefinite):
    matrix, exact = indefinite
    k, tol = 8, 1e-9
    result = lanczos_solve(aslinearoperator(matrix), k, which=which, tol=tol, return_vectors=True,
                           progress=False)
    reference = {"largest": exact[-k:], "smallest": exact[:k], "both": np.r_[exact[:k], exact[-k:]]}[which]
    scale = np.abs(exact).max()
    assert result.eigenvalues.shape == reference.shape
    assert np.all(np.diff(result.eigenvalues) >= 0)  # ascending
    np.testing.assert_allclose(result.eigenvalues, reference, rtol=0, atol=1e-8 * scale)
    # The stopping rule: every returned pair meets ||A y - theta y|| <= tol * max|theta| (checked here with
    # the dense matrix, independently of the solver's own residuals).
    check_pairs(matrix, result.eigenvalues, result.eigenvectors, tol * scale * 1.0001)
    assert np.all(result.residual_norms <= result.threshold)
    assert result.n_matvecs < 150  # far from filling the whole space (P = 300)


def test_lanczos_resolves_near_degenerate_extremes():
    """Extremes 1e-6 apart must be resolved individually, with the right eigenvectors."""
    rng = np.random.default_rng(2)
    top = 3.0 - np.array([0.0, 1e-6, 2e-6])
    bottom = -2.0 + np.array([0.0, 1e-6])
    spectrum = np.r_[top, bottom, rng.uniform(-1, 1, 245)]
    matrix, basis = planted(spectrum, seed=3)
    values, vectors = lanczos(matrix, 3, which="both", tol=1e-10, return_vectors=True, progress=False)
    reference = reference_ends(matrix, 3, "both")
    np.testing.assert_allclose(values, reference, rtol=0, atol=1e-9 * 3.0)
    np.testing.assert_allclose(np.diff(values[-3:]), [1e-6, 1e-6], rtol=1e-3)  # gaps resolved
    np.testing.assert_allclose(values[1] - values[0], 1e-6, rtol=1e-3)
    check_pairs(matrix, values, vectors, 1e-10 * 3.0 * 1.0001)
    # Each vector lies in its own eigenline: overlap with the planted eigenvector ~ 1. With gap 1e-6 and
    # residual <= 3e-10, the angle is at most residual / gap = 3e-4.
    planted_top = basis[:, [2, 1, 0]]  # eigenvalues 3 - 2e-6, 3 - 1e-6, 3 (ascending)
    overlaps = np.abs(np.sum(planted_top * vectors[:, -3:], axis=0))
    assert overlaps.min() > 1 - 1e-6


@pytest.mark.parametrize("block_size", [1, 3])
def test_lanczos_returns_exact_multiplicity_at_both_ends(block_size):
    """Multiplicity 8 at the top and 6 at the bottom, both larger than the block size."""
    rng = np.random.default_rng(4)
    spectrum = np.r_[[5.0] * 8, [-4.0] * 6, rng.uniform(-1, 1, 236)]
    matrix, basis = planted(spectrum, seed=5)
    k = 10
    result = lanczos_solve(matrix, k, which="both", block_size=block_size, return_vectors=True, progress=False)
    reference = reference_ends(matrix, k, "both")
    np.testing.assert_allclose(result.eigenvalues, reference, rtol=0, atol=1e-8 * 5.0)
    assert np.sum(np.isclose(result.eigenvalues, 5.0, atol=1e-7)) == 8
    assert np.sum(np.isclose(result.eigenvalues, -4.0, atol=1e-7)) == 6
    check_pairs(matrix, result.eigenvalues, result.eigenvectors, 1e-8 * 5.0 * 1.0001)
    # The returned vectors span the whole planted eigenspaces: ||E^T Y||_F^2 = dimension when span Y = span E.
    top_vectors = result.eigenvectors[:, np.isclose(result.eigenvalues, 5.0, atol=1e-7)]
    bottom_vectors = result.eigenvectors[:, np.isclose(result.eigenvalues, -4.0, atol=1e-7)]
    assert np.linalg.norm(basis[:, :8].T @ top_vectors) ** 2 == pytest.approx(8, abs=1e-10)
    assert np.linalg.norm(basis[:, 8:14].T @ bottom_vectors) ** 2 == pytest.approx(6, abs=1e-10)
    assert result.n_restarts >= 1 and set(result.settled_by) == {"largest", "smallest"}


def test_restart_recovers_copies_the_first_krylov_space_missed():
    """An exactly repeated eigenvalue at the edge of a dense bulk: the first (single-vector) Krylov space holds
    fewer copies than exist when its wanted set converges, so the missing ones must come from restarts
    (n_restarts >= 2 means a restart found copies and a later one found nothing)."""
    rng = np.random.default_rng(3)
    spectrum = np.r_[rng.uniform(-0.9, 0.9, 186), [1.0] * 8, [-1.0] * 6]
    matrix, _ = planted(spectrum, seed=0)
    result = lanczos_solve(matrix, 3, which="both", progress=False)
    np.testing.assert_allclose(result.eigenvalues, [-1, -1, -1, 1, 1, 1], atol=1e-8)
    assert result.n_restarts >= 2
    assert result.n_matvecs < 200  # the answer did not come from exhausting the space


def test_lanczos_whole_space_when_small():
    """k = P // 2 on a tiny matrix: the search space becomes the whole space and Rayleigh-Ritz is exact."""
    spectrum = np.r_[[2.0] * 5, np.linspace(-1, 1, 15)]
    matrix, _ = planted(spectrum, seed=6)
    values = lanczos(matrix, 10, which="both", progress=False)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(matrix), atol=1e-12)


def test_lanczos_max_iter_raises_with_partial_results():
    rng = np.random.default_rng(7)
    matrix, _ = planted(rng.uniform(-1, 1, 300), seed=8)  # dense bulk: slow convergence
    with pytest.raises(LanczosConvergenceError, match="max_iter=30") as error:
        lanczos(matrix, 5, which="both", max_iter=30, progress=False)
    assert error.value.n_matvecs == 30
    assert len(error.value.eigenvalues) == 10 and np.any(error.value.residual_norms > error.value.threshold)
    # A worker process sends this error to its parent pickled: it must arrive whole.
    import pickle

    again = pickle.loads(pickle.dumps(error.value))
    assert isinstance(again, LanczosConvergenceError) and str(again) == str(error.value)
    assert again.n_matvecs == 30 and again.threshold == error.value.threshold
    np.testing.assert_array_equal(again.eigenvalues, error.value.eigenvalues)
    np.testing.assert_array_equal(again.residual_norms, error.value.residual_norms)


def test_top_eigenvalue_is_signed_not_largest_magnitude():
    rng = np.random.default_rng(9)
    spectrum = np.r_[[-10.0, 1.0, 3.0], rng.uniform(-2, 2.5, 97)]
    matrix, _ = planted(spectrum, seed=10)
    value = top_eigenvalue(matrix, tol=1e-10, progress=False)
    assert value == pytest.approx(np.linalg.eigvalsh(matrix)[-1], abs=1e-9 * 10)
    assert value == pytest.approx(3.0, abs=1e-8)
    small, _ = planted(np.array([-10.0, 1.0, 3.0]), seed=11)
    assert top_eigenvalue(small, progress=False) == pytest.approx(3.0, abs=1e-8)


def test_lanczos_both_uses_fewer_matvecs_than_two_eigsh_calls():
    """Hessian-like planted spectrum: a few large outliers, a bulk near 0, some negatives."""
    rng = np.random.default_rng(12)
    size, k, tol = 400, 10, 1e-8
    spectrum = np.r_[np.exp(rng.uniform(np.log(2), np.log(50), 8)), rng.laplace(0, 0.01, 367),
                     -np.exp(rng.uniform(np.log(0.05), 0, 25))]
    matrix, _ = planted(spectrum, seed=13)
    reference = reference_ends(matrix, k, "both")
    scale = np.abs(reference).max()

    ours = CountingOperator(matrix)
    values = lanczos(ours, k, which="both", tol=tol, progress=False)
    np.testing.assert_allclose(values, reference, rtol=0, atol=tol * scale)

    # ARPACK stops at ||r_i|| <= tol_e |theta_i|: the loosest tol_e implying our bound tol * scale per call.
    arpack = CountingOperator(matrix)
    v0 = np.random.default_rng(0).standard_normal(size)
    largest = eigsh(arpack, k, which="LA", tol=tol * scale / np.abs(reference[k:]).max(), v0=v0,
                    return_eigenvectors=False)
    smallest = eigsh(arpack, k, which="SA", tol=tol * scale / np.abs(reference[:k]).max(), v0=v0,
                     return_eigenvectors=False)
    np.testing.assert_allclose(np.r_[np.sort(smallest), np.sort(largest)], reference, rtol=0, atol=tol * scale)
    assert ours.count < arpack.count, (ours.count, arpack.count)


# ----------------------------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------------------------


def test_lanczos_bad_arguments_name_the_argument():
    matrix = np.diag(np.arange(10.0))
    with pytest.raises(ValueError, match=r"k=6 must be <= P//2=5"):
        lanczos(matrix, 6, which="both", progress=False)
    with pytest.raises(ValueError, match=r"k=11 must be <= P=10"):
        lanczos(matrix, 11, which="largest", progress=False)
    with pytest.raises(ValueError, match=r"k=0 must be >= 1"):
        lanczos(matrix, 0, progress=False)
    with pytest.raises(TypeError, match=r"k=2.0 must be an int"):
        lanczos(matrix, 2.0, progress=False)
    with pytest.raises(ValueError, match=r"which='top'"):
        lanczos(matrix, 2, which="top", progress=False)
    with pytest.raises(ValueError, match=r"operator must be square"):
        lanczos(aslinearoperator(np.ones((4, 5))), 1, progress=False)
    with pytest.raises(ValueError, match=r"tol=0"):
        lanczos(matrix, 2, tol=0, progress=False)
    with pytest.raises(ValueError, match=r"max_iter=3"):
        lanczos(matrix, 2, which="both", max_iter=3, progress=False)
    with pytest.raises(ValueError, match=r"block_size=11 must be <= P=10"):
        lanczos(matrix, 2, block_size=11, progress=False)
    with pytest.raises(ValueError, match=r"failure_probability=1"):
        lanczos(matrix, 2, failure_probability=1.0, progress=False)
    with pytest.raises(TypeError, match=r"operator"):
        lanczos("not an operator", 1, progress=False)
