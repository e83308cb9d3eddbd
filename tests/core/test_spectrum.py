"""Tests for hessian_core.spectrum.

References: ``numpy.linalg.eigh`` (values, vectors up to sign, eigenspace projectors), planted spectra
``H = Q diag(lambda) Q^T`` with known eigenvalues and multiplicities, ``scipy.linalg.eig_banded`` (the band
stage of the two-stage route), ``scipy.stats.entropy`` and direct numpy formulas (statistics).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from hessian_core import spectrum as spectrum_module
from hessian_core.spectrum import DenseSpectrum, eigendecomposition, spectrum_stats

DRIVERS = ["two_stage", "tridiagonal", "scipy", "torch", "auto"]

# A route that fails its own verification warns (and two_stage silently switches to tridiagonal): in these tests
# that must never happen unnoticed.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.fixture(autouse=True, scope="module")
def _torch_on_one_thread():
    """These matrices are small: threads only add waiting when the machine's cores are busy (the suite runs on a
    shared 2-core machine). The caller's setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def planted_matrix(eigenvalues: np.ndarray, seed: int) -> np.ndarray:
    """``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q`` (QR of a Gaussian matrix)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((eigenvalues.size, eigenvalues.size)))
    matrix = (basis * eigenvalues) @ basis.T
    return (matrix + matrix.T) / 2


def separated_spectrum(size: int, seed: int) -> np.ndarray:
    """Hessian-like: 10 positive outliers and 10 negative ones with gaps >= 0.1, a bulk within 1e-2 of zero."""
    rng = np.random.default_rng(seed)
    top = 2.0 + np.arange(10) * 0.5 + rng.uniform(0, 0.1, 10)
    bottom = -(1.0 + np.arange(10) * 0.3 + rng.uniform(0, 0.1, 10))
    bulk = rng.uniform(-1e-2, 1e-2, size - 20)
    return np.sort(np.concatenate([top, bottom, bulk]))


@functools.lru_cache(maxsize=None)
def separated_case(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(H, numpy eigenvalues, numpy eigenvectors)`` for :func:`separated_spectrum`, computed once per size."""
    matrix = planted_matrix(separated_spectrum(size, seed=size), seed=size + 1)
    values, vectors = np.linalg.eigh(matrix)
    for array in (matrix, values, vectors):
        array.setflags(write=False)
    return matrix, values, vectors


def residual_and_orthogonality(matrix: np.ndarray, values: np.ndarray, vectors: np.ndarray, *,
                               norm: float | None = None) -> tuple[float, float]:
    """``(max ||H v - lambda v|| / ||H||_2, max |V^T V - I|)``."""
    if norm is None:
        norm = np.abs(np.linalg.eigvalsh(matrix)).max()
    residual = np.linalg.norm(matrix @ vectors - vectors * values, axis=0).max() / norm
    orthogonality = np.abs(vectors.T @ vectors - np.eye(vectors.shape[1])).max()
    return float(residual), float(orthogonality)


def projector(vectors: np.ndarray) -> np.ndarray:
    return vectors @ vectors.T


# ----------------------------------------------------------------------------------------------------------------
# eigendecomposition against numpy.linalg.eigh
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [60, 131, 203])
@pytest.mark.parametrize("driver", DRIVERS)
def test_matches_numpy_eigh(driver: str, size: int) -> None:
    matrix, reference_values, reference_vectors = separated_case(size)
    norm = np.abs(reference_values).max()
    result = eigendecomposition(matrix, n_top=10, n_bottom=8, driver=driver, progress=False)

    assert isinstance(result, DenseSpectrum)
    assert result.driver == ("scipy" if driver == "auto" else driver)
    assert result.eigenvalues.shape == (size,) and result.eigenvalues.dtype == np.float64
    assert result.top_vectors.shape == (size, 10) and result.bottom_vectors.shape == (size, 8)
    assert np.all(np.diff(result.eigenvalues) >= 0)
    assert np.abs(result.eigenvalues - reference_values).max() <= 1e-12 * norm

    # Column order: top descending from lambda_max, bottom ascending from lambda_min.
    np.testing.assert_array_equal(result.top_eigenvalues, result.eigenvalues[::-1][:10])
    np.testing.assert_array_equal(result.bottom_eigenvalues, result.eigenvalues[:8])
    reference_top = reference_vectors[:, ::-1][:, :10]
    reference_bottom = reference_vectors[:, :8]
    for ours, reference in [(result.top_vectors, reference_top), (result.bottom_vectors, reference_bottom)]:
        # Simple, separated eigenvalues: equal up to sign.
        signs = np.sign(np.sum(ours * reference, axis=0))
        assert np.abs(ours - reference * signs).max() <= 1e-9

    vectors = np.concatenate([result.bottom_vectors, result.top_vectors], axis=1)
    values = np.concatenate([result.bottom_eigenvalues, result.top_eigenvalues])
    residual, orthogonality = residual_and_orthogonality(matrix, values, vectors, norm=norm)
    assert residual <= 1e-12 and orthogonality <= 1e-12
    # The stored diagnostics measure the same thing.
    assert result.max_residual <= 1e-12 and result.orthogonality_error <= 1e-12
    assert result.max_residual == pytest.approx(residual, rel=0.2, abs=1e-15)
    # Sign convention: largest-magnitude entry of each vector is positive.
    assert np.all(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])] > 0)


@functools.lru_cache(maxsize=None)
def degenerate_case() -> tuple[np.ndarray, np.ndarray]:
    """``(H, numpy eigenvectors)`` with planted eigenvalues 5 (4-fold), 4, 3.9, a bulk in (-1, 1), -2 (3-fold)."""
    rng = np.random.default_rng(7)
    size = 150
    eigenvalues = np.sort(np.concatenate([[5.0] * 4, [4.0, 3.9], rng.uniform(-1, 1, size - 9), [-2.0] * 3]))
    matrix = planted_matrix(eigenvalues, seed=8)
    _, vectors = np.linalg.eigh(matrix)
    return matrix, vectors


@pytest.mark.parametrize("driver", DRIVERS)
def test_degenerate_clusters_span_the_eigenspace(driver: str) -> None:
    """Planted 4-fold top and 3-fold bottom eigenvalues: the eigenspaces (projectors) must equal numpy's."""
    matrix, reference_vectors = degenerate_case()
    result = eigendecomposition(matrix, n_top=6, n_bottom=5, driver=driver, progress=False)
    assert result.driver == ("scipy" if driver == "auto" else driver)

    np.testing.assert_allclose(result.top_eigenvalues[:4], 5.0, atol=1e-12)
    np.testing.assert_allclose(result.bottom_eigenvalues[:3], -2.0, atol=1e-12)
    top_cluster = projector(reference_vectors[:, -4:])
    bottom_cluster = projector(reference_vectors[:, :3])
    assert np.abs(projector(result.top_vectors[:, :4]) - top_cluster).max() <= 1e-10
    assert np.abs(projector(result.bottom_vectors[:, :3]) - bottom_cluster).max() <= 1e-10
    vectors = np.concatenate([result.bottom_vectors, result.top_vectors], axis=1)
    values = np.concatenate([result.bottom_eigenvalues, result.top_eigenvalues])
    residual, orthogonality = residual_and_orthogonality(matrix, values, vectors, norm=5.0)
    assert residual <= 1e-10 and orthogonality <= 1e-10

    # A cluster cut by n_top: the 2 returned vectors lie inside the 4-dimensional eigenspace, orthonormal.
    cut = eigendecomposition(matrix, n_top=2, n_bottom=0, driver=driver, progress=False)
    assert np.linalg.norm(cut.top_vectors - top_cluster @ cut.top_vectors) <= 1e-10
    assert np.abs(cut.top_vectors.T @ cut.top_vectors - np.eye(2)).max() <= 1e-10


@pytest.mark.parametrize("driver", DRIVERS)
def test_all_eigenvalues_equal_gives_one_orthonormal_basis(driver: str) -> None:
    """H = 3 I with n_top + n_bottom = P: top and bottom vectors together must form an orthogonal matrix."""
    size = 40
    result = eigendecomposition(3.0 * np.eye(size), n_top=25, n_bottom=15, driver=driver, progress=False)
    np.testing.assert_allclose(result.eigenvalues, 3.0, rtol=1e-14)
    basis = np.concatenate([result.bottom_vectors, result.top_vectors], axis=1)
    assert np.abs(basis.T @ basis - np.eye(size)).max() <= 1e-10


@pytest.mark.parametrize("driver", ["two_stage", "tridiagonal"])
def test_dead_parameters_exact_null_space(driver: str) -> None:
    """Zero rows/columns (dead units) give an exactly repeated zero eigenvalue (exactly singular shifted band
    matrices for inverse iteration, zero Householder columns)."""
    rng = np.random.default_rng(3)
    size = 120
    factor = rng.standard_normal((size, size - 50))
    matrix = factor @ factor.T
    dead = rng.choice(size, 20, replace=False)
    matrix[dead] = 0.0
    matrix[:, dead] = 0.0
    reference_values = np.linalg.eigvalsh(matrix)
    result = eigendecomposition(matrix, n_top=5, n_bottom=40, driver=driver, progress=False)
    norm = np.abs(reference_values).max()
    assert np.abs(result.eigenvalues - reference_values).max() <= 1e-12 * norm
    # 50 zero eigenvalues; the 40 bottom vectors must be orthonormal vectors of the null space.
    assert np.linalg.norm(matrix @ result.bottom_vectors, axis=0).max() <= 1e-10 * norm
    assert np.abs(result.bottom_vectors.T @ result.bottom_vectors - np.eye(40)).max() <= 1e-10
    # Dead parameters carry no weight in any eigenvector of a nonzero eigenvalue.
    assert np.abs(result.top_vectors[dead]).max() <= 1e-10


def test_zero_matrix() -> None:
    result = eigendecomposition(np.zeros((7, 7)), n_top=3, n_bottom=2, progress=False)
    assert result.driver == "zero_matrix"
    np.testing.assert_array_equal(result.eigenvalues, np.zeros(7))
    basis = np.concatenate([result.bottom_vectors, result.top_vectors], axis=1)
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-15)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("driver", DRIVERS)
def test_tiny_matrices(driver: str, size: int) -> None:
    matrix = planted_matrix(np.arange(1.0, size + 1.0) - 1.5, seed=size)
    result = eigendecomposition(matrix, n_top=size // 2, n_bottom=size - size // 2, driver=driver,
                                progress=False)
    np.testing.assert_allclose(result.eigenvalues, np.linalg.eigvalsh(matrix), atol=1e-14)
    assert result.max_residual <= 1e-13 and result.orthogonality_error <= 1e-13


# ----------------------------------------------------------------------------------------------------------------
# Internals of the two-stage route, checked stage by stage
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("band_width", [1, 2, 5, 16, 66, 100])
def test_band_reduction_is_an_orthogonal_similarity(band_width: int) -> None:
    """B = Q^T H Q: same eigenvalues as H (scipy eig_banded vs numpy eigvalsh), and Q maps B's eigenvectors to
    H's (full numpy eigh of the dense B, then our back-transform)."""
    size = 67
    rng = np.random.default_rng(band_width)
    matrix = rng.standard_normal((size, size))
    matrix = matrix + matrix.T
    work = torch.tensor(matrix)
    band, reflectors = spectrum_module._reduce_to_band(work, band_width, tile=8, progress=False)
    width = min(band_width, size - 1)
    assert band.shape == (width + 1, size)
    reference = np.linalg.eigvalsh(matrix)
    band_values = scipy.linalg.eig_banded(band, lower=True, eigvals_only=True)
    assert np.abs(band_values - reference).max() <= 1e-12 * np.abs(reference).max()

    dense_band = np.zeros((size, size))
    for d in range(width + 1):
        dense_band += np.diag(band[d, :size - d], -d) + (np.diag(band[d, :size - d], d) if d else 0)
    values, band_vectors = np.linalg.eigh(dense_band)
    vectors = spectrum_module._apply_band_basis(reflectors, band_vectors)
    residual, orthogonality = residual_and_orthogonality(matrix, values, vectors)
    assert residual <= 1e-12 and orthogonality <= 1e-12


def test_two_stage_with_narrow_band_and_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full route with many panels and tiles (band width 3, tiles of 16) on a 101 x 101 matrix."""
    monkeypatch.setattr(spectrum_module, "_TILE", 16)
    matrix = planted_matrix(separated_spectrum(101, seed=5), seed=6)
    tensor = torch.tensor(matrix)
    values, bottom, top = spectrum_module._two_stage(tensor, 10, 10, scale=float(np.abs(matrix).max()),
                                                     band_width=3, progress=False)
    reference_values, reference_vectors = np.linalg.eigh(matrix)
    assert np.abs(values - reference_values).max() <= 1e-12 * np.abs(reference_values).max()
    for ours, reference in [(bottom, reference_vectors[:, :10]), (top, reference_vectors[:, -10:])]:
        assert np.abs(np.abs(np.sum(ours * reference, axis=0)) - 1).max() <= 1e-10


# ----------------------------------------------------------------------------------------------------------------
# Driver selection, fallback, inputs, validation
# ----------------------------------------------------------------------------------------------------------------


def test_one_thread_context_restores_the_callers_setting() -> None:
    torch.set_num_threads(2)
    try:
        with spectrum_module._one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with spectrum_module._one_thread(active=False):
            assert torch.get_num_threads() == 2
        with pytest.raises(KeyError), spectrum_module._one_thread():
            raise KeyError("restored on errors too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_auto_driver_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = planted_matrix(separated_spectrum(60, seed=1), seed=2)
    assert eigendecomposition(matrix, n_top=3, n_bottom=3, progress=False).driver == "scipy"
    monkeypatch.setattr(spectrum_module, "_AUTO_TRIDIAGONAL_MIN_SIZE", 50)
    assert eigendecomposition(matrix, n_top=3, n_bottom=3, progress=False).driver == "tridiagonal"
    monkeypatch.setattr(spectrum_module, "_AUTO_TWO_STAGE_MIN_SIZE", 60)
    assert eigendecomposition(matrix, n_top=3, n_bottom=3, progress=False).driver == "two_stage"


def test_failed_verification_falls_back_to_tridiagonal(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = planted_matrix(separated_spectrum(60, seed=1), seed=2)
    monkeypatch.setattr(spectrum_module, "_RESIDUAL_RTOL", -1.0)   # every result now "fails"
    with pytest.warns(RuntimeWarning, match="recomputing with driver='tridiagonal'"):
        result = eigendecomposition(matrix, n_top=3, n_bottom=3, driver="two_stage", progress=False)
    assert result.driver == "tridiagonal"
    with pytest.warns(RuntimeWarning, match="driver='scipy'"):
        eigendecomposition(matrix, n_top=3, n_bottom=3, driver="scipy", progress=False)


def test_torch_and_numpy_inputs_agree(capsys: pytest.CaptureFixture[str]) -> None:
    matrix = planted_matrix(separated_spectrum(60, seed=4), seed=4)
    from_numpy = eigendecomposition(matrix, n_top=4, n_bottom=4, driver="two_stage", progress=False)
    tensor = torch.tensor(matrix, requires_grad=True)
    from_torch = eigendecomposition(tensor, n_top=4, n_bottom=4, driver="two_stage", progress=False)
    np.testing.assert_array_equal(from_numpy.eigenvalues, from_torch.eigenvalues)
    np.testing.assert_array_equal(from_numpy.top_vectors, from_torch.top_vectors)
    # float32 input is upcast (exactly) to float64.
    single = torch.tensor(matrix, dtype=torch.float32)
    from_single = eigendecomposition(single, n_top=4, n_bottom=4, progress=False)
    np.testing.assert_allclose(from_single.eigenvalues, np.linalg.eigvalsh(single.double().numpy()), atol=1e-12)
    assert capsys.readouterr().err == ""        # progress=False prints nothing


def test_small_asymmetry_uses_symmetric_part() -> None:
    rng = np.random.default_rng(0)
    matrix = planted_matrix(separated_spectrum(60, seed=0), seed=0)
    skewed = matrix + 1e-11 * rng.standard_normal(matrix.shape)
    result = eigendecomposition(skewed, n_top=2, n_bottom=2, driver="two_stage", progress=False)
    np.testing.assert_allclose(result.eigenvalues, np.linalg.eigvalsh((skewed + skewed.T) / 2), atol=1e-13)


def test_result_is_frozen_and_read_only() -> None:
    result = eigendecomposition(planted_matrix(np.arange(6.0), seed=0), n_top=2, n_bottom=2, progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.eigenvalues = np.zeros(6)  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        result.top_vectors[0, 0] = 1.0
    # A read-only array is accepted as input.
    again = eigendecomposition(result.top_vectors @ result.top_vectors.T, n_top=1, n_bottom=0, progress=False)
    assert again.eigenvalues[-1] == pytest.approx(1.0)


def test_invalid_matrices_raise_naming_the_argument() -> None:
    matrix = planted_matrix(separated_spectrum(30, seed=0), seed=0)
    with_nan = matrix.copy()
    with_nan[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"H has 1 non-finite entries.*\(3, 4\)"):
        eigendecomposition(with_nan, progress=False, n_top=1, n_bottom=1)
    with_inf = torch.tensor(matrix)
    with_inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="H has 1 non-finite"):
        eigendecomposition(with_inf, progress=False, n_top=1, n_bottom=1)
    asymmetric = matrix.copy()
    asymmetric[0, 1] += 1e-3
    with pytest.raises(ValueError, match="H is not symmetric"):
        eigendecomposition(asymmetric, progress=False, n_top=1, n_bottom=1)
    with pytest.raises(ValueError, match="H must be a square"):
        eigendecomposition(matrix[:, :20], progress=False, n_top=1, n_bottom=1)
    with pytest.raises(ValueError, match="H must be a square"):
        eigendecomposition(np.zeros((2, 2, 2)), progress=False, n_top=1, n_bottom=1)
    with pytest.raises(TypeError, match="H must be a numpy.ndarray or torch.Tensor"):
        eigendecomposition(matrix.tolist(), progress=False, n_top=1, n_bottom=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="H must be a real"):
        eigendecomposition(matrix.astype(complex), progress=False, n_top=1, n_bottom=1)


def test_invalid_options_raise_naming_the_argument() -> None:
    matrix = planted_matrix(separated_spectrum(30, seed=0), seed=0)
    with pytest.raises(ValueError, match=r"n_top \+ n_bottom = 20 \+ 11 = 31 must be <= P = 30"):
        eigendecomposition(matrix, n_top=20, n_bottom=11, progress=False)
    with pytest.raises(ValueError, match="n_top=-1 must be >= 0"):
        eigendecomposition(matrix, n_top=-1, progress=False)
    with pytest.raises(TypeError, match="n_bottom=True must be an int"):
        eigendecomposition(matrix, n_top=1, n_bottom=True, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="driver='lapack'"):
        eigendecomposition(matrix, n_top=1, n_bottom=1, driver="lapack", progress=False)  # type: ignore
    with pytest.raises(ValueError, match="symmetry_rtol"):
        eigendecomposition(matrix, n_top=1, n_bottom=1, symmetry_rtol=-1.0, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# spectrum_stats against direct formulas
# ----------------------------------------------------------------------------------------------------------------


def test_stats_match_direct_formulas() -> None:
    rng = np.random.default_rng(11)
    eigenvalues = np.concatenate([rng.uniform(1, 50, 10), -rng.uniform(0, 0.5, 30), rng.normal(0, 1e-15, 60)])
    zero_tol = 1e-12
    stats = spectrum_stats(eigenvalues, zero_tol=zero_tol)
    magnitudes = np.abs(eigenvalues)
    assert stats["n"] == 100
    assert stats["trace"] == pytest.approx(eigenvalues.sum(), rel=1e-14)
    assert stats["lambda_max"] == eigenvalues.max() and stats["lambda_min"] == eigenvalues.min()
    assert stats["spectral_norm"] == magnitudes.max()
    assert stats["frobenius_norm"] == pytest.approx(math.sqrt(sum(x * x for x in eigenvalues)), rel=1e-14)
    assert stats["n_negative"] == sum(1 for x in eigenvalues if x < 0)
    assert stats["n_negative_tol"] == 30
    assert stats["n_positive_tol"] == 10
    assert stats["n_near_zero"] == 60 and stats["frac_near_zero"] == 0.6
    assert stats["negative_mass_fraction"] == pytest.approx(magnitudes[eigenvalues < 0].sum() / magnitudes.sum())
    assert stats["spectral_entropy"] == pytest.approx(scipy.stats.entropy(magnitudes), rel=1e-12)
    assert stats["effective_rank"] == pytest.approx(math.exp(scipy.stats.entropy(magnitudes)), rel=1e-12)
    assert stats["zero_tol"] == zero_tol
    assert all(isinstance(value, (int, float)) for value in stats.values())


def test_stats_known_values() -> None:
    # Equal |lambda| with mixed signs: uniform distribution, entropy log n, effective rank n.
    uniform = np.array([2.0, -2.0, 2.0, -2.0, 2.0, 2.0, -2.0])
    stats = spectrum_stats(uniform)
    assert stats["spectral_entropy"] == pytest.approx(math.log(7), rel=1e-14)
    assert stats["effective_rank"] == pytest.approx(7.0, rel=1e-14)
    assert stats["negative_mass_fraction"] == pytest.approx(3 / 7)
    # One nonzero eigenvalue: entropy 0, effective rank 1.
    spike = spectrum_stats(np.array([0.0, 0.0, -4.0, 0.0]))
    assert spike["spectral_entropy"] == 0.0 and spike["effective_rank"] == 1.0
    assert spike["n_negative"] == 1 and spike["n_near_zero"] == 3
    # All zero: the documented convention.
    zero = spectrum_stats(np.zeros(5))
    assert zero["spectral_entropy"] == 0.0 and zero["effective_rank"] == 0.0
    assert zero["n_near_zero"] == 5 and zero["n_negative"] == 0 and zero["trace"] == 0.0


def test_stats_tolerance_semantics() -> None:
    eigenvalues = np.array([10.0, 1.0, -1e-20, -1e-14, -3.0, 0.0])
    stats = spectrum_stats(eigenvalues)
    default_tol = 10.0 * 6 * np.finfo(np.float64).eps
    assert stats["zero_tol"] == pytest.approx(default_tol)
    assert stats["n_negative"] == 3          # every strictly negative value, including -1e-20
    assert stats["n_negative_tol"] == 1      # only -3 is below -zero_tol (1.3e-14)
    assert stats["n_negative_tol"] + stats["n_near_zero"] + stats["n_positive_tol"] == stats["n"]
    loose = spectrum_stats(eigenvalues, zero_tol=2.0)
    assert loose["n_negative_tol"] == 1 and loose["n_near_zero"] == 4 and loose["n_positive_tol"] == 1
    # Exactly +-zero_tol counts as near zero (closed interval), so the three counts still partition.
    boundary = spectrum_stats(np.array([-2.0, 2.0, -2.5, 3.0]), zero_tol=2.0)
    assert (boundary["n_negative_tol"], boundary["n_near_zero"], boundary["n_positive_tol"]) == (1, 2, 1)


def test_stats_invariances_and_input_types() -> None:
    rng = np.random.default_rng(2)
    eigenvalues = rng.normal(size=50)
    base = spectrum_stats(eigenvalues)
    flipped = spectrum_stats(-eigenvalues)
    scaled = spectrum_stats(7.3 * eigenvalues)
    assert flipped["spectral_entropy"] == pytest.approx(base["spectral_entropy"], rel=1e-14)
    assert scaled["spectral_entropy"] == pytest.approx(base["spectral_entropy"], rel=1e-13)
    assert flipped["n_negative"] == 50 - base["n_negative"]
    assert spectrum_stats(torch.tensor(eigenvalues)) == base
    assert spectrum_stats(list(eigenvalues)) == base
    assert spectrum_stats(np.array([3, -1, 0]))["trace"] == 2.0


def test_stats_trace_equals_matrix_trace() -> None:
    """Cross-check with the decomposition: sum of eigenvalues = trace(H) (an independent quantity)."""
    matrix = planted_matrix(separated_spectrum(80, seed=9), seed=10)
    result = eigendecomposition(matrix, n_top=0, n_bottom=0, driver="two_stage", progress=False)
    assert spectrum_stats(result.eigenvalues)["trace"] == pytest.approx(np.trace(matrix), abs=1e-12)


def test_stats_invalid_input_raises_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="eigenvalues has 1 non-finite"):
        spectrum_stats(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="eigenvalues has 2 non-finite"):
        spectrum_stats(np.array([np.inf, 1.0, -np.inf]))
    with pytest.raises(ValueError, match="eigenvalues must be a non-empty 1-D"):
        spectrum_stats(np.array([]))
    with pytest.raises(ValueError, match="eigenvalues must be a non-empty 1-D"):
        spectrum_stats(np.ones((2, 2)))
    with pytest.raises(TypeError, match="eigenvalues must be real"):
        spectrum_stats(np.array([1j, 2.0]))
    with pytest.raises(ValueError, match="zero_tol=-1.0 must be finite and >= 0"):
        spectrum_stats(np.ones(3), zero_tol=-1.0)
    with pytest.raises(TypeError, match="zero_tol"):
        spectrum_stats(np.ones(3), zero_tol="small")  # type: ignore[arg-type]
