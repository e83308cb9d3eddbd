"""Tests for ``hessian_core.density`` (Hutchinson traces, stochastic Lanczos quadrature) against exact traces and
planted spectra.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from hessian_core.density import hutchinson_trace, spectral_density
from hessian_core.lanczos import lanczos
from tests.cases import planted


def test_estimator_bad_arguments_name_the_argument():
    matrix = np.eye(6)
    with pytest.raises(ValueError, match=r"n_samples=1"):
        hutchinson_trace(matrix, n_samples=1, progress=False)
    with pytest.raises(ValueError, match=r"distribution='uniform'"):
        hutchinson_trace(matrix, distribution="uniform", progress=False)
    with pytest.raises(ValueError, match=r"n_probes=0"):
        spectral_density(matrix, n_probes=0, progress=False)
    with pytest.raises(ValueError, match=r"sigma=-1"):
        spectral_density(matrix, sigma=-1.0, progress=False)
    with pytest.raises(ValueError, match=r"operator must be square"):
        spectral_density(aslinearoperator(np.ones((3, 2))), progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Hutchinson
# ----------------------------------------------------------------------------------------------------------------


def test_hutchinson_within_standard_errors_and_error_shrinks():
    rng = np.random.default_rng(14)
    matrix, _ = planted(rng.normal(0.5, 1.0, 200), seed=15)
    truth = np.trace(matrix)
    few = hutchinson_trace(matrix, n_samples=25, seed=0, progress=False)
    many = hutchinson_trace(matrix, n_samples=400, seed=1, block_size=64, progress=False)
    for estimate in (few, many):
        assert abs(estimate.estimate - truth) <= 4 * estimate.standard_error
    assert many.standard_error < 0.5 * few.standard_error  # ~ 1/sqrt(n): 0.25 expected
    # Rademacher variance per probe is 2 (||A||_F^2 - sum_i A_ii^2): the reported standard error must agree.
    predicted = np.sqrt(2 * (np.sum(matrix**2) - np.sum(np.diag(matrix) ** 2)) / many.n_samples)
    assert many.standard_error == pytest.approx(predicted, rel=0.2)
    gaussian = hutchinson_trace(matrix, n_samples=400, seed=2, distribution="gaussian", progress=False)
    assert abs(gaussian.estimate - truth) <= 4 * gaussian.standard_error
    # An operator with a matvec only (matmat falls back to columns) gives identical numbers.
    matvec_only = LinearOperator(matrix.shape, matvec=lambda x: matrix @ x, dtype=np.float64)
    assert hutchinson_trace(matvec_only, n_samples=25, seed=0, progress=False).estimate == pytest.approx(
        few.estimate, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# ----------------------------------------------------------------------------------------------------------------


def test_slq_gauss_rule_is_exact_for_polynomials_on_a_diagonal_matrix():
    """For diagonal A, z^T f(A) z = trace f(A) for every Rademacher z; an m-node Gauss rule integrates degree
    < 2m exactly, so one probe with m = 6 gives trace(A^d), d <= 11, to rounding."""
    spectrum = np.random.default_rng(16).uniform(-1, 1, 150)
    density = spectral_density(np.diag(spectrum), n_probes=1, n_steps=6, progress=False)
    for degree in range(12):
        assert density.trace(lambda x: x**degree) == pytest.approx(np.sum(spectrum**degree), rel=1e-10, abs=1e-10)


def test_slq_traces_and_density_on_planted_spectrum():
    rng = np.random.default_rng(17)
    spectrum = np.r_[rng.normal(0, 0.3, 290), [4.0, 3.0, -2.0], rng.uniform(1, 2, 7)]
    matrix, _ = planted(spectrum, seed=18)
    density = spectral_density(matrix, n_probes=40, n_steps=30, seed=0, progress=False)
    assert density.nodes.shape == density.weights.shape == (40, 30)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, atol=1e-12)
    # Stated tolerance: within 4 standard errors of the probe average (seeded), and the standard error is small.
    for function, truth in ((lambda x: x, spectrum.sum()), (lambda x: x**2, np.sum(spectrum**2))):
        samples = density.trace_samples(function)
        error = abs(samples.mean() - truth)
        standard_error = samples.std(ddof=1) / np.sqrt(len(samples))
        assert error <= 4 * standard_error
    # ... and the probe-to-probe spread is Rademacher's, 2 (||f(A)||_F^2 - sum_i f(A)_ii^2) per probe.
    for power in (1, 2):
        f_matrix = np.linalg.matrix_power(matrix, power)
        predicted = np.sqrt(2 * (np.sum(f_matrix**2) - np.sum(np.diag(f_matrix) ** 2)))
        assert density.trace_samples(lambda x: x**power).std(ddof=1) == pytest.approx(predicted, rel=0.3)
    # The smoothed density integrates to ~1 (the grid covers +-5 sigma around all nodes).
    assert np.trapezoid(density.density, density.grid) == pytest.approx(1.0, abs=1e-4)
    assert np.all(density.density >= 0)
    other = density.smoothed_density(np.linspace(-5, 6, 4001), sigma=0.05)
    assert np.trapezoid(other, np.linspace(-5, 6, 4001)) == pytest.approx(1.0, abs=1e-4)
    # Advancing the probes in batches changes nothing but memory.
    batched = spectral_density(matrix, n_probes=40, n_steps=30, seed=0, batch_size=7, grid=50, progress=False)
    np.testing.assert_allclose(batched.nodes, density.nodes, atol=1e-10)
    np.testing.assert_allclose(batched.weights, density.weights, atol=1e-10)
    assert batched.grid.shape == (50,)


def test_slq_with_full_steps_puts_mass_on_true_eigenvalues():
    rng = np.random.default_rng(19)
    spectrum = np.sort(rng.uniform(-3, 3, 100))
    matrix, _ = planted(spectrum, seed=20)
    density = spectral_density(matrix, n_probes=60, n_steps=500, seed=1, progress=False)  # n_steps capped at P
    assert density.nodes.shape[1] == 100
    # Every node carrying weight is an eigenvalue of A.
    heavy = density.weights > 1e-8
    distance = np.abs(density.nodes[heavy][:, None] - spectrum[None, :]).min(axis=1)
    assert distance.max() <= 1e-8
    # The estimated CDF follows the empirical CDF of the spectrum (Kolmogorov distance; per-probe CDF noise is
    # ~ sqrt(2 F (1 - F) / P) ~ 0.07, averaged over 60 probes ~ 0.01).
    points = np.linspace(-3.5, 3.5, 701)
    true_cdf = np.searchsorted(spectrum, points, side="right") / len(spectrum)
    assert np.abs(density.cdf(points) - true_cdf).max() <= 0.05
    # With the exact Gauss rule trace f(A) is as good as Hutchinson's estimator for every f, e.g. |x|.
    samples = density.trace_samples(np.abs)
    assert abs(samples.mean() - np.abs(spectrum).sum()) <= 4 * samples.std(ddof=1) / np.sqrt(len(samples))


def test_solvers_cap_blas_threads_while_running_and_restore_them():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    seen = []
    diag = np.linspace(-1.0, 3.0, 40)

    def matvec(x):
        seen.append(blas_threads())
        return diag * np.ravel(x)

    from scipy.sparse.linalg import LinearOperator

    op = LinearOperator((40, 40), matvec=matvec, dtype=np.float64)
    lanczos(op, 2, which="both", progress=False)
    spectral_density(op, n_probes=2, n_steps=5, batch_size=1, progress=False)
    assert seen and all(all(t == 1 for t in threads) for threads in seen)
    assert blas_threads() == before
    seen.clear()
    lanczos(op, 2, which="both", progress=False, blas_threads=None)
    assert all(threads == before for threads in seen)
