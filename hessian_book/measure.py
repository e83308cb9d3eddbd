"""Per-checkpoint Hessian measurements, each timed and returned as a small frozen dataclass for the store.

* :func:`extreme_eigenvalues` -- both ends of the spectrum by Lanczos, optionally warm-started from the previous
  checkpoint's Ritz vectors;
* :func:`slq_density` / :func:`slq_stats` -- stochastic Lanczos quadrature of the bulk and its summary statistics;
* :func:`dense_spectrum` -- the exact Hessian, all its eigenvalues and the extreme eigenvectors.

All take ``model`` and ``batch = (inputs, targets)`` with the cross-entropy loss and compute in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy
from torch import Tensor, nn

from hessian_core import eigendecomposition, full_hessian, hessian_operator, spectral_density, warm_lanczos

__all__ = ["Timer", "timed", "ExtremeEigenvalues", "extreme_eigenvalues", "QuadratureDensity", "slq_density",
           "slq_stats", "HessianSpectrum", "dense_spectrum"]


@dataclass
class Timer:
    """Wall time of a ``with timed() as t:`` block (``t.seconds``, set when the block ends)."""

    seconds: float = float("nan")


@contextlib.contextmanager
def timed() -> Iterator[Timer]:
    """Time a block: ``with timed() as t: ...`` then ``t.seconds``."""
    timer, started = Timer(), time.perf_counter()
    try:
        yield timer
    finally:
        timer.seconds = time.perf_counter() - started


@dataclass(frozen=True)
class ExtremeEigenvalues:
    """The ``k`` smallest and ``k`` largest eigenvalues (``eigenvalues: ndarray[2k]`` ascending), the loss on the
    batch, the number of Hessian-vector products and the wall time; ``warm``: whether a start block gave the
    answer (:func:`hessian_core.warm_lanczos`); ``vectors``: the Ritz vectors ``ndarray[P, 2k]``, the next
    checkpoint's start. Chapters store :meth:`without_vectors` (``P x 2k`` floats per checkpoint would dwarf every
    other result), so vectors exist in memory only and a result read back from a store has none."""

    eigenvalues: np.ndarray
    loss: float
    hvps: int
    seconds: float
    warm: bool = False
    vectors: np.ndarray | None = None

    def without_vectors(self) -> ExtremeEigenvalues:
        """This result without its Ritz vectors (what a store keeps)."""
        return dataclasses.replace(self, vectors=None)


def extreme_eigenvalues(model: nn.Module, batch: tuple[Tensor, Tensor], *, k: int, tol: float,
                        block_size: int = 1, seed: int = 0, start: np.ndarray | None = None) -> ExtremeEigenvalues:
    """The ``k`` smallest and ``k`` largest Hessian eigenvalues and their Ritz vectors (float64).

    :func:`hessian_core.warm_lanczos`: with ``start=None`` (or an unusable start) exactly the cold
    :func:`hessian_core.lanczos` with this ``seed`` and ``block_size``; with ``start`` (``ndarray[P, c]``, e.g.
    the previous checkpoint's ``vectors``) its first Krylov sequence starts there. Either way every pair meets
    the same certified residual bound ``tol * max|theta|`` (so each value is that close to an eigenvalue); warm and
    cold values differ at that level only.
    ``block_size > 1`` runs block Lanczos: more HVPs, but batched ones, which cost far less each here.
    """
    with timed() as timer:
        op = hessian_operator(model, nn.CrossEntropyLoss(), batch)
        result = warm_lanczos(op, k, start=start, which="both", tol=tol, seed=seed, block_size=block_size,
                              progress=False)
    return ExtremeEigenvalues(eigenvalues=np.asarray(result.eigenvalues), loss=float(op.loss), hvps=op.n_products,
                              seconds=timer.seconds, warm=result.warm, vectors=np.asarray(result.eigenvectors))


@dataclass(frozen=True)
class QuadratureDensity:
    """Stochastic Lanczos quadrature: ``nodes, weights: ndarray[n_probes, m]`` for a ``dimension``-sized
    Hessian, the HVPs spent and the wall time."""

    nodes: np.ndarray
    weights: np.ndarray
    dimension: int
    hvps: int
    seconds: float


def slq_density(model: nn.Module, batch: tuple[Tensor, Tensor], *, n_probes: int, n_steps: int,
                seed: int = 0) -> QuadratureDensity:
    """Stochastic Lanczos quadrature of the Hessian spectrum (:func:`hessian_core.spectral_density`)."""
    with timed() as timer:
        op = hessian_operator(model, nn.CrossEntropyLoss(), batch)
        density = spectral_density(op, n_probes=n_probes, n_steps=n_steps, seed=seed, progress=False)
    return QuadratureDensity(nodes=np.asarray(density.nodes), weights=np.asarray(density.weights),
                             dimension=density.dimension, hvps=op.n_products, seconds=timer.seconds)


def slq_stats(nodes: np.ndarray, weights: np.ndarray, dimension: int) -> dict[str, float]:
    """SLQ estimates of spectrum statistics from quadrature ``nodes, weights: ndarray[n_probes, m]``.

    With ``E f = mean_p sum_j weights[p, j] f(nodes[p, j])`` (an estimate of ``(1/P) sum_i f(lambda_i)``):
    ``trace = P E[x]``, ``abs_trace = P E|x|``, ``spectral_entropy = log(abs_trace) - P E[|x| log|x|] / abs_trace``
    (the entropy of ``|lambda_i| / sum_j |lambda_j|``, as in :func:`hessian_core.spectrum_stats`),
    ``negative_mass_fraction = (abs_trace - trace) / (2 abs_trace)`` and ``n_negative = P E[x < 0]`` (a coarse
    estimate: a step function is poorly integrated by an ``m``-point Gauss rule).
    """
    nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
    if nodes.shape != weights.shape or nodes.ndim != 2:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} must be 2-D of the same shape")

    def expect(values: np.ndarray) -> float:
        return float(np.sum(weights * values) / nodes.shape[0])

    trace = dimension * expect(nodes)
    abs_trace = dimension * expect(np.abs(nodes))
    x_log_x = dimension * expect(xlogy(np.abs(nodes), np.abs(nodes)))
    entropy = float(np.log(abs_trace) - x_log_x / abs_trace) if abs_trace > 0 else 0.0
    return dict(trace=trace, abs_trace=abs_trace, spectral_entropy=entropy,
                negative_mass_fraction=(abs_trace - trace) / (2 * abs_trace) if abs_trace > 0 else 0.0,
                n_negative=dimension * expect(nodes < 0))


@dataclass(frozen=True)
class HessianSpectrum:
    """All eigenvalues of an exact Hessian and its extreme eigenvectors.

    Attributes:
        eigenvalues: ``ndarray[P]`` ascending.
        top_vectors, bottom_vectors: ``ndarray[P, n_vectors]``, columns ordered as in
            :class:`hessian_core.DenseSpectrum` (top: largest first; bottom: smallest first).
        seconds_hessian, seconds_eig: wall time of forming the Hessian and of the eigendecomposition.
    """

    eigenvalues: np.ndarray
    top_vectors: np.ndarray
    bottom_vectors: np.ndarray
    seconds_hessian: float
    seconds_eig: float


def dense_spectrum(model: nn.Module, batch: tuple[Tensor, Tensor], *, n_vectors: int) -> HessianSpectrum:
    """The exact float64 Hessian of the cross-entropy on ``batch`` (:func:`hessian_core.full_hessian`), all its
    eigenvalues and the top and bottom ``n_vectors`` eigenvectors (:func:`hessian_core.eigendecomposition`)."""
    with timed() as hessian_timer:
        H = full_hessian(model, nn.CrossEntropyLoss(), batch, progress=False)
    with timed() as eig_timer:
        dense = eigendecomposition(H, n_top=n_vectors, n_bottom=n_vectors, progress=False)
        del H
    return HessianSpectrum(eigenvalues=np.array(dense.eigenvalues), top_vectors=np.array(dense.top_vectors),
                           bottom_vectors=np.array(dense.bottom_vectors), seconds_hessian=hessian_timer.seconds,
                           seconds_eig=eig_timer.seconds)
