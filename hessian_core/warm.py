"""Extreme eigenpairs warm-started from a previous solve's Ritz vectors (e.g. the previous checkpoint's).

:func:`warm_lanczos` is :func:`hessian_core.lanczos_solve` whose first Krylov sequence starts from a given block
instead of a random one; everything else (stopping rule, exact residuals, the multiplicity restart and its
certificate) is the same code, so a warm answer is certified exactly as a cold one. Where the warm start cannot be
used or does not converge within its budget, the cold solver runs instead and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.sparse.linalg import LinearOperator
from tqdm.std import tqdm

from ._threads import blas_threads_limited
from ._validation import as_block_operator as _prepare_operator
from ._validation import check_int as _check_int
from ._validation import readonly as _readonly
from .lanczos import (LanczosConvergenceError, Which, _check_settings, _LanczosSolver, _orthonormalise,
                      _Sequence, lanczos_solve)

__all__ = ["WarmLanczosResult", "warm_lanczos"]


@dataclass(frozen=True, eq=False)
class WarmLanczosResult:
    """Output of :func:`warm_lanczos`.

    Attributes:
        eigenvalues: ``ndarray[m]`` ascending (``m = k`` for one end; ``2k`` for ``"both"``, smallest first).
        eigenvectors: ``ndarray[P, m]`` orthonormal Ritz vectors (column ``i`` belongs to ``eigenvalues[i]``):
            the next solve's ``start``.
        residual_norms: ``ndarray[m]`` exact ``||A y_i - theta_i y_i||``; every one is ``<= threshold``.
        threshold: ``tol * max(|theta_max|, |theta_min|)``, as in :func:`hessian_core.lanczos_solve`.
        hvps: operator applications spent, a failed warm attempt included.
        restart_hvps: the part of ``hvps`` spent by the answering solve's multiplicity restarts (the certificate
            that no extreme copy was missed; a warm start cannot shorten it).
        warm: ``True`` if the answer is the warm-started solve's, ``False`` if the cold solver gave it.
        fallback: why the cold solver ran (``""`` when ``warm``).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residual_norms: np.ndarray
    threshold: float
    hvps: int
    restart_hvps: int
    warm: bool
    fallback: str


class _WarmSolver(_LanczosSolver):
    """:class:`_LanczosSolver` whose first sequence is the Krylov space of a given orthonormal block."""

    def __init__(self, *args, start_block: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_block = start_block

    def _start_sequence(self, width: int) -> _Sequence:
        if self.sequences:  # the multiplicity restarts stay random: their certificate needs random starts
            return super()._start_sequence(width)
        # Random combinations of the start columns, `width` of them: every start direction is represented with
        # weight ~ sqrt(width / c), and each step costs `width` HVPs, as a cold step does.
        columns = min(width, self.start_block.shape[1], self._room())
        mixing = self.rng.standard_normal((self.start_block.shape[1], columns))
        block = _orthonormalise(self.start_block @ mixing, [], self.rng)
        sequence = _Sequence(start=0, stop=0, width=block.shape[1])
        self.sequences.append(sequence)
        self._append(block, sequence)
        return sequence


def _start_problem(start: np.ndarray, size: int) -> tuple[np.ndarray | None, str]:
    """``(orthonormal start ndarray[P, c], "")`` or ``(None, why the start cannot be used)``."""
    if start.ndim == 1:
        start = start[:, None]
    if start.ndim != 2 or start.shape[0] != size or start.shape[1] < 1:
        return None, f"start has shape {start.shape}, not (P={size}, c >= 1)"
    if not np.all(np.isfinite(start)):
        return None, "start has non-finite entries"
    block = _orthonormalise(start, [], None)  # drops columns that depend on the others
    if block.shape[1] == 0:
        return None, "start has no nonzero column"
    return block, ""


def warm_lanczos(
    operator: LinearOperator | ArrayLike,
    k: int,
    *,
    start: ArrayLike | None = None,
    which: Which = "both",
    tol: float = 1e-8,
    seed: int = 0,
    max_iter: int | None = None,
    warm_max_iter: int | None = None,
    block_size: int = 1,
    failure_probability: float = 1e-6,
    progress: bool = True,
    blas_threads: int | None = 1,
) -> WarmLanczosResult:
    """Extreme eigenpairs of a real symmetric operator by block Lanczos started from ``start``.

    **Method.** The first Krylov sequence of :func:`hessian_core.lanczos_solve` starts from ``block_size`` random
    combinations of the orthonormalised columns of ``start`` (typically the previous checkpoint's Ritz vectors,
    ``ndarray[P, 2k]``; all of them if there are fewer) instead of ``block_size`` random vectors of the whole
    space, so it grows by ``block_size`` HVPs per step, as a cold sequence does. (Starting from all ``2k`` columns
    at once would cost ``2k`` HVPs per step and, measured, more HVPs in all.) The rest is :func:`lanczos_solve`'s code
    unchanged: a Ritz pair is accepted when ``||A y - theta y|| <= tol * max(|theta_max|, |theta_min|)`` (exact
    residuals, recomputed from stored products), and once the wanted set has converged (``k >= 2``) the
    multiplicity restarts from *random* blocks of ``block_size`` (then doubling) vectors settle each end by the
    same certificate (a converged deflated Ritz pair or the Kuczynski-Wozniakowski bound at
    ``failure_probability``). So a warm answer satisfies exactly what a cold one does; only the HVP count and the
    digits below the residual bound differ. A start close to the wanted eigenvectors makes the
    first sequence converge in fewer steps: each wanted direction it holds enters with weight about
    ``sqrt(block_size / 2k)`` instead of ``1 / sqrt(P)``. Krylov convergence is geometric, so this saves the steps
    that a random start spends finding the extremes, not those that resolve them to ``tol``; it pays most when
    consecutive operators differ little. A start orthogonal to the extremes converges to the wrong pairs at first,
    and the random restarts then find the missed ones (and restart again), as they would for a cold start.

    **Fallback.** The cold :func:`lanczos_solve` (same ``seed``, ``block_size``, ``max_iter``) gives the answer,
    and ``fallback`` says why, when ``start`` is ``None``, has the wrong shape, non-finite entries or no nonzero
    column, or the warm solve reaches ``warm_max_iter``
    HVPs before its stopping rule holds (those HVPs are counted in ``hvps``).

    Args:
        operator: real symmetric ``(P, P)`` operator (``LinearOperator``, ndarray or sparse matrix).
        k: eigenvalues wanted at each requested end.
        start: ``ndarray[P, c]`` (or ``[P]``) start block, any float dtype; dependent columns are dropped.
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        tol: relative residual tolerance (as in :func:`lanczos_solve`).
        seed: seed of the restart vectors and of the cold fallback.
        max_iter: HVP cap of the cold fallback (default as in :func:`lanczos_solve`); reaching it raises
            :class:`hessian_core.LanczosConvergenceError`.
        warm_max_iter: HVP budget of the warm attempt (default ``max_iter``).
        block_size: random start width of the cold fallback and first width of the multiplicity restarts.
        failure_probability: ``delta`` of the multiplicity certificate.
        progress: tqdm bar counting operator applications.
        blas_threads: numpy/scipy BLAS threads while solving (``None`` leaves them alone).
    Returns:
        :class:`WarmLanczosResult`: ``eigenvalues: ndarray[m]`` ascending, ``eigenvectors: ndarray[P, m]``,
        exact residual norms, HVPs, whether the warm start gave the answer and, if not, why.
    Raises:
        ValueError / TypeError: bad arguments (the message names the argument).
        LanczosConvergenceError: the cold fallback reached ``max_iter``.
    """
    apply, size = _prepare_operator(operator)
    settings = _check_settings(size, k, which=which, tol=tol, block_size=block_size, max_iter=max_iter,
                               failure_probability=failure_probability)
    n_wanted = settings["k"] * (int(settings["want_top"]) + int(settings["want_bottom"]))
    budget = settings["max_iter"] if warm_max_iter is None else min(
        _check_int("warm_max_iter", warm_max_iter, minimum=1), size)
    if budget < n_wanted:
        raise ValueError(f"warm_max_iter={warm_max_iter} must be >= the number of wanted eigenvalues ({n_wanted})")
    block, fallback = None, "no start block given"
    if start is not None:
        try:
            start_array = np.asarray(start, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"start must be an array of floats, got {type(start).__name__}") from error
        block, fallback = _start_problem(start_array, size)

    spent = 0
    if block is not None:
        solver = _WarmSolver(apply, size, **dict(settings, max_iter=budget), rng=np.random.default_rng(seed),
                             start_block=block)
        try:
            with blas_threads_limited(blas_threads), tqdm(total=budget, disable=not progress, desc="warm lanczos",
                                                          unit="HVP") as bar:
                solver.bar = bar
                final = solver.run(block_size)
                vectors = solver.vectors(final)
        except LanczosConvergenceError as error:
            spent = error.n_matvecs
            fallback = f"warm start did not converge within warm_max_iter={budget} HVPs"
        else:
            if np.all(final.residuals <= solver.threshold):
                return WarmLanczosResult(eigenvalues=_readonly(final.values.copy()), eigenvectors=_readonly(vectors),
                                         residual_norms=_readonly(final.residuals.copy()),
                                         threshold=solver.threshold, hvps=solver.n_matvecs,
                                         restart_hvps=solver.n_matvecs - solver.sequences[0].stop, warm=True,
                                         fallback="")
            spent = solver.n_matvecs  # defensive: the solver only returns certified pairs
            fallback = "warm residuals did not certify"
    cold = lanczos_solve(operator, k, which=which, tol=tol, seed=seed, return_vectors=True, max_iter=max_iter,
                         block_size=block_size, failure_probability=failure_probability, progress=progress,
                         blas_threads=blas_threads)
    return WarmLanczosResult(eigenvalues=cold.eigenvalues, eigenvectors=cold.eigenvectors,
                             residual_norms=cold.residual_norms, threshold=cold.threshold,
                             hvps=spent + cold.n_matvecs, restart_hvps=cold.restart_matvecs, warm=False,
                             fallback=fallback)
