"""Stochastic estimators for symmetric ``LinearOperator``s: traces and spectral densities.

* :func:`hutchinson_trace` -- stochastic trace estimate with a standard error.
* :func:`spectral_density` -- stochastic Lanczos quadrature (SLQ; Ubaru, Chen & Saad 2017; Ghorbani, Krishnan &
  Xiao 2019): a quadrature rule per probe, a Gaussian-smoothed density and estimates of ``trace f(A)``.

Like :mod:`hessian_core.lanczos`, they touch the operator only through products ``A @ X``; arithmetic is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike
from scipy.sparse.linalg import LinearOperator
from tqdm.std import tqdm

from ._threads import blas_threads_limited
from ._validation import as_block_operator as _prepare_operator
from ._validation import check_int as _check_int
from ._validation import check_positive_float as _check_positive_float
from ._validation import readonly as _readonly
from .lanczos import _BREAKDOWN

__all__ = ["TraceEstimate", "hutchinson_trace", "SpectralDensity", "spectral_density"]


# ----------------------------------------------------------------------------------------------------------------
# Hutchinson trace estimator
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TraceEstimate:
    """Output of :func:`hutchinson_trace`.

    Attributes:
        estimate: mean of the per-probe values ``z^T A z``.
        standard_error: their sample standard deviation (``ddof=1``) over ``sqrt(n_samples)``.
        n_samples: number of probes.
        samples: ``ndarray[n_samples]`` the per-probe values.
    """

    estimate: float
    standard_error: float
    n_samples: int
    samples: np.ndarray


def hutchinson_trace(
    operator: LinearOperator | ArrayLike,
    *,
    n_samples: int = 100,
    seed: int = 0,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    block_size: int = 10,
    progress: bool = True,
) -> TraceEstimate:
    """Hutchinson's estimator ``trace(A) ~ (1/n) sum_i z_i^T A z_i`` with ``E[z z^T] = I``.

    Rademacher probes (entries ``+-1``) have variance ``2 (||A||_F^2 - sum_i A_ii^2)`` per probe, Gaussian probes
    ``2 ||A||_F^2``. Probes are applied ``block_size`` at a time through ``matmat``.

    Args:
        operator: real symmetric ``(P, P)`` operator.
        n_samples: number of probes (>= 2, for a standard error).
        seed: probe seed.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        block_size: probes per ``matmat`` call.
        progress: tqdm bar.
    Returns:
        :class:`TraceEstimate` with ``estimate`` and ``standard_error``.
    """
    apply, size = _prepare_operator(operator)
    n_samples = _check_int("n_samples", n_samples, minimum=2)
    block_size = _check_int("block_size", block_size, minimum=1)
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution={distribution!r} must be 'rademacher' or 'gaussian'")
    rng = np.random.default_rng(seed)
    samples = np.empty(n_samples)
    with tqdm(total=n_samples, disable=not progress, desc="hutchinson", unit="HVP") as bar:
        for start in range(0, n_samples, block_size):
            width = min(block_size, n_samples - start)
            if distribution == "rademacher":
                probes = rng.choice(np.array([-1.0, 1.0]), size=(size, width))
            else:
                probes = rng.standard_normal((size, width))
            samples[start: start + width] = np.einsum("pi,pi->i", probes, apply(probes))
            bar.update(width)
    return TraceEstimate(
        estimate=float(samples.mean()),
        standard_error=float(samples.std(ddof=1) / math.sqrt(n_samples)),
        n_samples=n_samples,
        samples=_readonly(samples),
    )


# ----------------------------------------------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """Stochastic Lanczos quadrature of the spectral measure ``mu = (1/P) sum_i delta(lambda - lambda_i)``.

    Probe ``p`` gives the Gauss quadrature rule ``(nodes[p, j], weights[p, j])`` of the measure
    ``sum_i (q_i^T z_p)^2 / ||z_p||^2 delta_{lambda_i}``, whose expectation over Rademacher ``z_p`` is ``mu``.
    Each row of ``weights`` sums to 1. Rows are padded with zero weights when a probe's Krylov space became
    invariant before ``n_steps`` (the rule is then exact for that probe).

    Attributes:
        nodes: ``ndarray[n_probes, m]`` Ritz values ``theta_j`` of each probe's tridiagonal matrix.
        weights: ``ndarray[n_probes, m]`` ``tau_j = (first component of the j-th eigenvector)^2``.
        dimension: ``P``.
        sigma: Gaussian width used for ``density``.
        grid: ``ndarray[n_grid]`` eigenvalue grid.
        density: ``ndarray[n_grid]`` smoothed density on ``grid``, per unit eigenvalue (integrates to ~1).
    """

    nodes: np.ndarray
    weights: np.ndarray
    dimension: int
    sigma: float
    grid: np.ndarray
    density: np.ndarray

    def smoothed_density(self, grid: ArrayLike, *, sigma: float) -> np.ndarray:
        """``rho(x) = (1/n_probes) sum_{p,j} tau_pj N(x; theta_pj, sigma^2)`` on ``grid: ndarray[n_grid]``.

        This is ``mu`` convolved with a Gaussian: a density per unit eigenvalue of the spectral measure divided
        by ``P``, so ``integral rho = 1`` (up to the mass of the Gaussians falling outside ``grid``).
        """
        sigma = _check_positive_float("sigma", sigma)
        points = np.asarray(grid, dtype=np.float64)
        if points.ndim != 1:
            raise ValueError(f"grid must be one-dimensional, got shape {points.shape}")
        z = (points[:, None] - self.nodes.reshape(-1)[None, :]) / sigma
        kernel = np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ self.weights.reshape(-1) / self.nodes.shape[0]

    def trace_samples(self, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Per-probe estimates ``P sum_j tau_pj f(theta_pj)`` of ``trace f(A)``: ``ndarray[n_probes]``.

        ``function`` must be vectorised (ndarray in, same-shape ndarray out).
        """
        values = np.asarray(function(self.nodes), dtype=np.float64)
        return self.dimension * np.sum(self.weights * values, axis=1)

    def trace(self, function: Callable[[np.ndarray], np.ndarray]) -> float:
        """SLQ estimate ``trace f(A) ~ P * mean_p sum_j tau_pj f(theta_pj)``."""
        return float(self.trace_samples(function).mean())

    def cdf(self, points: ArrayLike) -> np.ndarray:
        """Estimated fraction of eigenvalues ``<= x`` for each ``x`` in ``points`` (same shape out).

        ``F(x) = mean_p sum_j tau_pj [theta_pj <= x]``, the SLQ estimate of ``#{i: lambda_i <= x} / P``.
        """
        x = np.asarray(points, dtype=np.float64)
        below = self.nodes.reshape(-1)[None, :] <= x.reshape(-1)[:, None]
        return (below @ self.weights.reshape(-1) / self.nodes.shape[0]).reshape(x.shape)


def _lanczos_tridiagonals(apply: Callable[[np.ndarray], np.ndarray], starts: np.ndarray, steps: int,
                          bar: tqdm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent Lanczos runs from the unit rows of ``starts: ndarray[b, P]``, advanced together.

    Each run is fully reorthogonalised (twice) against its own basis and stops early when its Krylov space
    becomes invariant (``beta_j <= 1e-10 * max(|alpha|, beta)`` so far).

    Returns:
        ``alpha: ndarray[b, steps]``, ``beta: ndarray[b, steps]`` (``beta[p, j]`` couples steps ``j`` and
        ``j + 1``) and ``length: ndarray[b]``, the number of steps each run made.
    """
    count, size = starts.shape
    basis = np.zeros((count, steps, size))  # basis[p, j] = v_{j+1} of run p
    basis[:, 0] = starts
    alpha, beta = np.zeros((count, steps)), np.zeros((count, steps))
    length = np.full(count, steps)
    active = np.ones(count, dtype=bool)
    norm_scale = np.zeros(count)
    for step in range(steps):
        live = np.flatnonzero(active)
        if len(live) == 0:
            break
        products = apply(basis[live, step].T).T  # one matmat for all live runs: (live, P)
        bar.update(len(live))
        for row, run in enumerate(live):
            w = products[row]
            alpha[run, step] = basis[run, step] @ w
            previous = basis[run, : step + 1]
            for _pass in range(2):
                w = w - previous.T @ (previous @ w)
            norm = float(np.linalg.norm(w))
            norm_scale[run] = max(norm_scale[run], abs(alpha[run, step]), norm)
            if step == steps - 1:
                continue
            if norm <= _BREAKDOWN * norm_scale[run]:
                length[run], active[run] = step + 1, False
                continue
            beta[run, step] = norm
            basis[run, step + 1] = w / norm
    return alpha, beta, length


def spectral_density(
    operator: LinearOperator | ArrayLike,
    *,
    n_probes: int = 10,
    n_steps: int = 80,
    grid: int | ArrayLike | None = None,
    sigma: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    blas_threads: int | None = 1,
) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

    For each Rademacher probe ``z_p`` run ``m = min(n_steps, P)`` Lanczos steps from ``v_1 = z_p / sqrt(P)`` with
    full reorthogonalisation (twice, against that probe's own basis), giving ``T_p = V_p^T A V_p`` tridiagonal.
    With ``T_p = S diag(theta) S^T``, the ``m``-point Gauss rule ``nodes = theta``, ``weights = S[0, :]^2``
    satisfies ``z_p^T f(A) z_p = P sum_j tau_j f(theta_j)`` exactly for polynomials ``f`` of degree ``< 2m``,
    and ``E_z[z^T f(A) z] = trace f(A)``. A probe whose Krylov space becomes invariant stops early (its rule is
    then exact for every ``f``); its row is padded with zero weights.

    Args:
        operator: real symmetric ``(P, P)`` operator.
        n_probes: number of Rademacher probes.
        n_steps: Lanczos steps per probe (capped at ``P``). Cost: ``n_probes * m`` HVPs.
        grid: ``ndarray[n_grid]`` of eigenvalues to evaluate the density on, or an int ``n_grid`` (``None``:
            1000) for an even grid over ``[min node - 5 sigma, max node + 5 sigma]``.
        sigma: Gaussian width of the smoothed density; ``None``: ``0.01 * (max node - min node)`` (1.0 if 0).
        seed: probe seed.
        batch_size: probes advanced together (one ``matmat`` of that many columns per step); ``None``: all.
            Memory ``8 * batch_size * m * P`` bytes for their bases.
        progress: tqdm bar.
        blas_threads: numpy/scipy BLAS threads during the run (see :func:`lanczos_solve`).
    Returns:
        :class:`SpectralDensity` with ``nodes``, ``weights``, ``grid``, ``density``; ``trace(f)`` gives SLQ
        estimates of ``trace f(A)``.
    """
    apply, size = _prepare_operator(operator)
    n_probes = _check_int("n_probes", n_probes, minimum=1)
    steps = min(_check_int("n_steps", n_steps, minimum=1), size)
    batch_size = n_probes if batch_size is None else _check_int("batch_size", batch_size, minimum=1)
    if sigma is not None:
        sigma = _check_positive_float("sigma", sigma)
    if grid is not None and not isinstance(grid, (int, np.integer)):
        grid_points = np.asarray(grid, dtype=np.float64)
        if grid_points.ndim != 1 or grid_points.size < 1:
            raise ValueError(f"grid must be an int or a one-dimensional array, got shape {grid_points.shape}")
    elif grid is not None:
        _check_int("grid", grid, minimum=2)
    rng = np.random.default_rng(seed)
    probes = rng.choice(np.array([-1.0, 1.0]), size=(n_probes, size)) / math.sqrt(size)

    nodes, weights = np.zeros((n_probes, steps)), np.zeros((n_probes, steps))
    with blas_threads_limited(blas_threads), tqdm(total=n_probes * steps, disable=not progress, desc="slq",
                                                  unit="HVP") as bar:
        for first in range(0, n_probes, batch_size):
            alpha, beta, length = _lanczos_tridiagonals(apply, probes[first: first + batch_size], steps, bar)
            for row in range(len(length)):
                m, probe = int(length[row]), first + row
                theta, vectors = scipy.linalg.eigh_tridiagonal(alpha[row, :m], beta[row, : m - 1])
                nodes[probe, :m], weights[probe, :m] = theta, vectors[0] ** 2
                nodes[probe, m:] = theta[-1]  # padding: zero weight at a harmless finite node

    if sigma is None:
        span = float(nodes.max() - nodes.min())
        sigma = 0.01 * span if span > 0 else 1.0
    if grid is None or isinstance(grid, (int, np.integer)):
        grid_points = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, 1000 if grid is None else grid)
    result = SpectralDensity(nodes=_readonly(nodes), weights=_readonly(weights), dimension=size, sigma=sigma,
                             grid=_readonly(grid_points.copy()), density=np.zeros(0))
    object.__setattr__(result, "density", _readonly(result.smoothed_density(grid_points, sigma=sigma)))
    return result
