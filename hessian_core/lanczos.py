"""Lanczos for symmetric ``LinearOperator``s: the extreme eigenvalues (and vectors) of a Hessian.

Everything here touches the operator only through products ``A @ X`` (``operator.matmat`` on blocks, ``matvec``
for a single vector), so it works for any real symmetric ``scipy.sparse.linalg.LinearOperator`` of shape
``(P, P)``; the intended one is a neural-net Hessian where one column of ``A @ X`` is one Hessian-vector product
(HVP). All arithmetic is float64.

* :func:`lanczos` / :func:`lanczos_solve` -- the ``k`` largest and/or smallest eigenvalues (and vectors) from one
  Krylov space, with full reorthogonalisation, a residual-based stopping rule, and restarts that recover exactly
  repeated eigenvalues with their full multiplicity.
* :func:`top_eigenvalue` -- the largest *signed* eigenvalue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
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

__all__ = ["LanczosConvergenceError", "LanczosResult", "lanczos", "lanczos_solve", "top_eigenvalue"]

Which = Literal["largest", "smallest", "both"]

# A direction whose norm drops below this fraction of its norm before orthogonalisation carries no reliable new
# information (cancellation) and is replaced by a random direction.
_BREAKDOWN = 1e-10
# Kuczynski & Wozniakowski (1992), Lanczos with a random start on a PSD matrix of dimension N:
#   Prob[ theta_max(K_j) <= (1 - eps) lambda_max ] <= 1.648 sqrt(N) exp(-sqrt(eps) (2 j - 1)).
_KW_CONSTANT = 1.648


def _project_out(block: np.ndarray, bases: list[np.ndarray]) -> np.ndarray:
    """``block`` minus its components in the spans of the orthonormal ``bases`` (one classical GS pass)."""
    for basis in bases:
        if basis.shape[1]:
            block = block - basis @ (basis.T @ block)
    return block


def _orthonormalise(block: np.ndarray, bases: list[np.ndarray], rng: np.random.Generator | None, *,
                    reference_norms: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal columns spanning ``block``'s component orthogonal to the orthonormal ``bases``.

    Block classical Gram-Schmidt applied twice ("twice is enough") against ``bases``, then column by column
    within the block. A column that cancels (``||after|| <= 1e-10 ||before||``: the Krylov space has become
    invariant) is replaced by a random direction orthogonal to everything when ``rng`` is given (that only
    enlarges the search space, never corrupts it), and dropped otherwise.

    Args:
        block: ``ndarray[P, b]``.
        bases: orthonormal ``ndarray[P, n_i]`` blocks (``n_i`` may be 0), mutually orthogonal.
        rng: source of replacement directions, or ``None`` to drop cancelled columns.
        reference_norms: ``ndarray[b]`` given when ``block`` has already had one Gram-Schmidt pass against
            ``bases``: the column norms before that pass. Only the second pass is then done here.
    Returns:
        ``ndarray[P, b']`` with orthonormal columns orthogonal to ``bases`` (``b' = b`` when ``rng`` is given).
    """
    size, width = block.shape
    if reference_norms is None:
        reference, projected = np.linalg.norm(block, axis=0), _project_out(_project_out(block, bases), bases)
    else:
        reference, projected = reference_norms, _project_out(block, bases)
    accepted = np.zeros((size, width))
    count = 0
    for column in range(width):
        vector, scale = projected[:, column], reference[column]
        for _attempt in range(5):
            for _pass in range(2):
                vector = vector - accepted[:, :count] @ (accepted[:, :count].T @ vector)
            norm = np.linalg.norm(vector)
            if scale > 0 and norm > _BREAKDOWN * scale:
                accepted[:, count] = vector / norm
                count += 1
                break
            if rng is None:
                break
            vector = rng.standard_normal(size)
            scale = np.linalg.norm(vector)
            vector = _project_out(_project_out(vector, bases), bases)
        else:
            raise RuntimeError("could not extend the orthonormal basis: the space is exhausted")
    return accepted[:, :count]


# ----------------------------------------------------------------------------------------------------------------
# Lanczos eigensolver
# ----------------------------------------------------------------------------------------------------------------


class LanczosConvergenceError(RuntimeError):
    """``max_iter`` operator applications were spent before the stopping rule was met.

    Attributes:
        eigenvalues: ``ndarray[m]`` current Ritz values of the wanted set, ascending (not trustworthy).
        residual_norms: ``ndarray[m]`` their residual-norm estimates ``||A y - theta y||``.
        threshold: the residual threshold ``tol * max(|theta_max|, |theta_min|)`` they had to meet.
        n_matvecs: operator applications (HVPs) spent.
    """

    def __init__(self, message: str, *, eigenvalues: np.ndarray, residual_norms: np.ndarray, threshold: float,
                 n_matvecs: int):
        super().__init__(message)
        self.eigenvalues = eigenvalues
        self.residual_norms = residual_norms
        self.threshold = threshold
        self.n_matvecs = n_matvecs

    def __reduce__(self):
        # The keyword-only attributes must survive pickling: a worker process that raises this error sends it to
        # its parent, and an error that cannot be rebuilt there breaks the whole process pool.
        return (_rebuild_convergence_error, (self.args[0] if self.args else "", self.eigenvalues,
                                             self.residual_norms, self.threshold, self.n_matvecs))


def _rebuild_convergence_error(message, eigenvalues, residual_norms, threshold, n_matvecs):
    return LanczosConvergenceError(message, eigenvalues=eigenvalues, residual_norms=residual_norms,
                                   threshold=threshold, n_matvecs=n_matvecs)


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Output of :func:`lanczos_solve`.

    Attributes:
        eigenvalues: ``ndarray[m]`` ascending (``m = k`` for one end; ``2k`` for ``"both"``, smallest first).
        eigenvectors: ``ndarray[P, m]`` orthonormal Ritz vectors, column ``i`` belongs to ``eigenvalues[i]``;
            ``None`` unless requested.
        residual_norms: ``ndarray[m]`` exact ``||A y_i - theta_i y_i||``, recomputed from the stored products.
        threshold: ``tol * max(|theta_max|, |theta_min|)``; every residual is below it.
        n_matvecs: operator applications (HVPs) used.
        n_restarts: random restarts made by the multiplicity check (0 if none was needed).
        restart_matvecs: the part of ``n_matvecs`` spent after the first Krylov sequence had converged.
        settled_by: for each end (``"largest"``/``"smallest"``), why the search stopped there: ``"k == 1"``,
            ``"search space is the whole space"``, ``"deflated Ritz pair converged outside the wanted set"`` or
            ``"probability <= 1e-06 (Kuczynski-Wozniakowski bound)"`` (the last restart's certificate).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    residual_norms: np.ndarray
    threshold: float
    n_matvecs: int
    n_restarts: int
    restart_matvecs: int
    settled_by: dict[str, str] = field(default_factory=dict)


def _default_max_iter(size: int, n_wanted: int) -> int:
    return min(size, max(1000, 30 * n_wanted))


def _kw_epsilon(krylov_dimension: int, dimension: int, width: int, failure_probability: float) -> float | None:
    """Relative accuracy ``eps`` that Lanczos certifies with probability ``1 - failure_probability``.

    Kuczynski & Wozniakowski (1992): for PSD ``B`` of dimension ``N`` and a start ``x`` uniform on the sphere,
    ``Prob[theta_max(K_j(B, x)) <= (1 - eps) lambda_max(B)] <= 1.648 sqrt(N) exp(-sqrt(eps) (2 j - 1))``. With
    ``r`` independent random starts in one block space (which contains each one's Krylov space) the bound is
    raised to the power ``r``. We use ``j = krylov_dimension - 1``, one step fewer than we have, to be safe
    about the paper's step counting. Returns ``None`` while the bound certifies nothing (``eps >= 1``).
    """
    steps = krylov_dimension - 1
    if 2 * steps - 1 <= 0:
        return None
    root = (math.log(_KW_CONSTANT) + 0.5 * math.log(max(dimension, 1)) - math.log(failure_probability) / width)
    epsilon = (root / (2 * steps - 1)) ** 2
    return epsilon if epsilon < 1 else None


@dataclass
class _Sequence:
    """One Krylov sequence: basis columns ``start:stop``, block-tridiagonal projection of band ``bandwidth``."""

    start: int
    stop: int
    width: int  # vectors per block (the random start block's width)
    steps: int = 1  # blocks so far = Krylov dimension per start vector
    frontier: np.ndarray = field(default_factory=lambda: np.arange(0))  # global columns of the last block

    @property
    def bandwidth(self) -> int:
        # Within a block the Gram-Schmidt order fixes the band to `width`; a replaced (broken-down) column can
        # couple one block further, so 2 width - 1 is always safe.
        return 2 * self.width - 1


@dataclass(frozen=True)
class _Candidates:
    """Ritz pairs from the ends of one or more sequences, ascending by value."""

    values: np.ndarray  # [c]
    owners: np.ndarray  # [c] sequence index
    coefficients: list[np.ndarray]  # c vectors, each in its owner's local coordinates
    residuals: np.ndarray  # [c] exact residual norms


def _banded_ritz(matrix: np.ndarray, bandwidth: int, n_bottom: int, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_bottom`` smallest and ``n_top`` largest eigenpairs of symmetric ``matrix: ndarray[m, m]``.

    Only the ``bandwidth`` diagonals above the main one are read: a Krylov sequence's projection is block
    tridiagonal up to rounding, thanks to full reorthogonalisation. LAPACK's banded solver costs ``O(m^2 b)``
    instead of ``O(m^3)`` and needs no multithreaded BLAS-3.

    Returns:
        ``(values: ndarray[c], vectors: ndarray[m, c])``, ascending, the two index sets merged (no repeats).
    """
    size = matrix.shape[0]
    bandwidth = max(min(bandwidth, size - 1), 0)
    band = np.zeros((bandwidth + 1, size))
    for offset in range(bandwidth + 1):
        band[bandwidth - offset, offset:] = np.diagonal(matrix, offset)
    n_bottom, n_top = min(n_bottom, size), min(n_top, size)
    if n_bottom + n_top >= size:
        return scipy.linalg.eig_banded(band, lower=False, check_finite=False)
    values, vectors = [], []
    for low, high in ((0, n_bottom - 1), (size - n_top, size - 1)):
        if high >= low:
            part_values, part_vectors = scipy.linalg.eig_banded(band, lower=False, select="i",
                                                                select_range=(low, high), check_finite=False)
            values.append(part_values)
            vectors.append(part_vectors)
    return np.concatenate(values), np.concatenate(vectors, axis=1)


def _check_settings(size: int, k: object, *, which: object, tol: object, block_size: object, max_iter: object,
                    failure_probability: object) -> dict:
    """Validated :class:`_LanczosSolver` settings for a ``(size, size)`` operator (errors name the argument)."""
    if which not in ("largest", "smallest", "both"):
        raise ValueError(f"which={which!r} must be one of 'largest', 'smallest', 'both'")
    k = _check_int("k", k, minimum=1)
    if which == "both" and k > size // 2:
        raise ValueError(f"k={k} must be <= P//2={size // 2} for which='both'")
    if k > size:
        raise ValueError(f"k={k} must be <= P={size}")
    tol = _check_positive_float("tol", tol)
    block_size = _check_int("block_size", block_size, minimum=1)
    if block_size > size:
        raise ValueError(f"block_size={block_size} must be <= P={size}")
    failure_probability = _check_positive_float("failure_probability", failure_probability)
    if failure_probability >= 1:
        raise ValueError(f"failure_probability={failure_probability} must be < 1")
    want_top = which in ("largest", "both")
    want_bottom = which in ("smallest", "both")
    n_wanted = k * (int(want_top) + int(want_bottom))
    if max_iter is None:
        max_iter = _default_max_iter(size, n_wanted)
    max_iter = min(_check_int("max_iter", max_iter, minimum=1), size)
    if max_iter < max(n_wanted, block_size):
        raise ValueError(f"max_iter={max_iter} must be >= the number of wanted eigenvalues ({n_wanted}) and "
                         f">= block_size={block_size}")
    return dict(k=k, want_top=want_top, want_bottom=want_bottom, tol=tol, max_iter=max_iter,
                failure_probability=failure_probability)


def lanczos_solve(
    operator: LinearOperator | ArrayLike,
    k: int,
    *,
    which: Which = "both",
    tol: float = 1e-8,
    seed: int = 0,
    return_vectors: bool = False,
    max_iter: int | None = None,
    block_size: int = 1,
    failure_probability: float = 1e-6,
    progress: bool = True,
    blas_threads: int | None = 1,
) -> LanczosResult:
    """Extreme eigenpairs of a real symmetric operator by (block) Lanczos with full reorthogonalisation.

    **Method.** Build an orthonormal basis ``V`` of the Krylov space ``span{X, A X, A^2 X, ..}`` from a random
    ``P x block_size`` start ``X``, one block per step; each new block is orthogonalised twice against all of
    ``V`` (full reorthogonalisation: no spurious copies). The products ``W = A V`` are stored and the projected
    matrix ``H = V^T A V`` is formed from them; its extreme eigenpairs ``(theta_i, s_i)`` give Ritz pairs
    ``(theta_i, y_i = V s_i)``. ``H`` is block tridiagonal up to rounding, so Rayleigh-Ritz uses LAPACK's banded
    solver (``O(n^2 b)``, not ``O(n^3)``). Both ends come from the same space: ``which="both"`` pays for one.

    **Stopping rule.** With ``scale = max(|theta_max|, |theta_min|)`` over all Ritz values (an estimate of
    ``||A||_2``), a Ritz pair is converged when::

        ||A y_i - theta_i y_i||_2 <= tol * scale.

    While iterating, residuals are read off the Krylov relation (``A V - V H`` is nonzero only on the last
    block); before anything is accepted they are recomputed exactly as ``||W s_i - theta_i V s_i||`` (no extra
    HVPs). An accepted eigenvalue is within ``tol * scale`` of an eigenvalue of ``A`` (and within
    ``residual^2 / gap`` once its neighbours are resolved).

    **Multiplicity.** In exact arithmetic a Krylov space started from ``b`` vectors holds only ``min(b, m)``
    directions of an eigenvalue of multiplicity ``m``. So once the wanted set has converged (and ``k >= 2``; with
    ``k == 1`` a missing copy cannot change the answer), the solver *restarts*: it freezes the current sequence
    and starts a new Krylov sequence from ``r`` (at first ``block_size``) random vectors orthogonal to ``D`` =
    (all bases so far) + (the directions ``(I - V V^T) A V_last`` through which frozen sequences would have
    grown). The new sequence is exactly Lanczos on the deflated operator ``Q = (I - D D^T) A (I - D D^T)``, and ``V^T A U = 0`` for its basis
    ``U``, so Rayleigh-Ritz on the union is Rayleigh-Ritz on each sequence. Any eigenvector ``z`` of ``A`` that
    the search missed (``z`` orthogonal to all bases) is orthogonal to ``D`` too, hence an eigenvector of ``Q``
    with the same eigenvalue. Each end is *settled* when either

    * the extreme Ritz pair of ``Q`` on the new sequence has converged (``||Q u - theta u|| <= tol * scale``),
      so ``Q``'s extreme eigenvalue is known (the usual Lanczos caveat applies); or
    * a probabilistic bound shows that ``Q`` has no eigenvalue beyond the wanted set's edge ``t`` (the ``k``-th
      largest wanted value; mirrored at the bottom). Kuczynski & Wozniakowski (1992): for PSD ``B`` of
      dimension ``N`` and a start vector uniform on the sphere, ``j`` Lanczos steps give
      ``Prob[theta_max <= (1 - eps) lambda_max(B)] <= 1.648 sqrt(N) exp(-sqrt(eps) (2 j - 1))``. With
      ``B = Q - a I`` (``a <= lambda_min(Q)``), ``N = dim D^perp``, ``r`` random start vectors (the bound is
      raised to the power ``r``) and ``j`` counted one step short for safety, choosing ``eps`` so that the bound
      equals ``failure_probability / 4`` yields ``lambda_max(Q) <= a + (theta_max - a) / (1 - eps)``. The shift
      ``a`` is first the crude ``theta_min - residual`` of the whole search, then the same kind of bound on
      ``lambda_min(Q)`` (whose own shift is ``theta_max + residual``); the smallest end is the mirror image.
      Four such statements, each failing with probability ``<= failure_probability / 4``. Each statement's
      failure event is "the start block's weight on ``Q``'s extreme eigenspace is below a threshold", the same
      event at every step, so checking after every step needs no union bound over steps.

    If the new sequence contributes a converged Ritz pair beyond the previous wanted edge (by more than
    ``tol * scale``), it found missing copies, and another restart follows with ``2 r`` random vectors; the solver
    stops when a restart finds nothing. **Guarantee** (exact arithmetic; the Ritz values are accurate to the
    residual rule; aside from the caveat shared by every Krylov method that a start vector nearly orthogonal to
    an eigenvector delays it): exactly repeated extreme eigenvalues are returned with their full multiplicity,
    except with probability at most ``failure_probability`` when an end was settled by the bound.
    ``settled_by`` records the route taken at each end. In floating point the first sequence usually picks up
    some copies by itself (rounding seeds them), which only makes the restarts' job smaller.

    Args:
        operator: real symmetric ``LinearOperator`` (or ndarray / sparse matrix) of shape ``(P, P)``, applied
            only through ``matmat`` on blocks (``matvec`` for single vectors).
        k: eigenvalues per end: ``1 <= k <= P`` for ``"largest"``/``"smallest"``, ``1 <= k <= P // 2`` for
            ``"both"``.
        which: ``"largest"`` (algebraically largest), ``"smallest"`` (most negative) or ``"both"`` (``k`` of
            each from one Krylov space).
        tol: relative residual tolerance of the stopping rule above.
        seed: seed of the random start and restart vectors.
        return_vectors: also return the Ritz vectors.
        max_iter: cap on operator applications (= basis size; memory ``16 P max_iter`` bytes); default
            ``min(P, max(1000, 30 m))`` with ``m`` the number of wanted eigenvalues. Reaching it raises
            :class:`LanczosConvergenceError`: results are never returned unconverged.
        block_size: start vectors of the first sequence (block Lanczos). 1 uses the fewest HVPs; larger blocks
            let ``matmat`` batch HVPs.
        failure_probability: ``delta`` of the multiplicity certificate.
        progress: show a tqdm bar counting operator applications.
        blas_threads: numpy/scipy BLAS threads while the solver runs (restored afterwards; ``None`` leaves them
            alone). One by default: the solver's own BLAS work is small, and idle multi-threaded BLAS slows the
            Hessian-vector products in between (see :mod:`hessian_core._threads`).
    Returns:
        :class:`LanczosResult`: ``eigenvalues: ndarray[m]`` ascending, ``eigenvectors: ndarray[P, m]`` or
        ``None``, exact residual norms, HVP count, restart record.
    Raises:
        ValueError / TypeError: bad arguments (the message names the argument).
        LanczosConvergenceError: ``max_iter`` reached before the stopping rule (incl. the multiplicity check) held.
    """
    apply, size = _prepare_operator(operator)
    settings = _check_settings(size, k, which=which, tol=tol, block_size=block_size, max_iter=max_iter,
                               failure_probability=failure_probability)
    solver = _LanczosSolver(apply, size, **settings, rng=np.random.default_rng(seed))
    with blas_threads_limited(blas_threads), tqdm(total=settings["max_iter"], disable=not progress, desc="lanczos",
                                                  unit="HVP") as bar:
        solver.bar = bar
        final = solver.run(block_size)
        eigenvectors = solver.vectors(final) if return_vectors else None
    return LanczosResult(
        eigenvalues=_readonly(final.values.copy()),
        eigenvectors=_readonly(eigenvectors) if eigenvectors is not None else None,
        residual_norms=_readonly(final.residuals.copy()),
        threshold=solver.threshold,
        n_matvecs=solver.n_matvecs,
        n_restarts=solver.n_restarts,
        restart_matvecs=solver.n_matvecs - (solver.sequences[0].stop - solver.sequences[0].start),
        settled_by=solver.settled_by,
    )


class _LanczosSolver:
    """State of one :func:`lanczos_solve` call (basis, products, projections, sequences, certificates)."""

    def __init__(self, apply: Callable[[np.ndarray], np.ndarray], size: int, *, k: int, want_top: bool,
                 want_bottom: bool, tol: float, max_iter: int, failure_probability: float,
                 rng: np.random.Generator):
        self.apply, self.size, self.k = apply, size, k
        self.want_top, self.want_bottom = want_top, want_bottom
        self.n_wanted = k * (int(want_top) + int(want_bottom))
        self.ends = [end for end, wanted in (("largest", want_top), ("smallest", want_bottom)) if wanted]
        self.tol, self.max_iter, self.failure_probability, self.rng = tol, max_iter, failure_probability, rng
        self.basis = np.empty((size, max_iter))  # V: all sequences side by side
        self.images = np.empty((size, max_iter))  # W = A V
        self.projected = np.zeros((max_iter, max_iter))  # block diagonal: each sequence's V_s^T A V_s
        self.excluded = np.zeros((size, 0))  # D minus V: directions frozen sequences would have grown into
        self.n = 0
        self.n_extra_matvecs = 0  # products with `excluded`, only when the whole space is needed
        self.sequences: list[_Sequence] = []
        self.cache: dict[int, _Candidates] = {}  # end candidates of frozen sequences (they no longer change)
        self.n_restarts = 0
        self.threshold = 0.0
        self.settled_by: dict[str, str] = {}
        self.status = (np.zeros(0), np.zeros(0), 0.0)  # (wanted values, residual estimates, threshold)
        self.extremes = (0.0, 0.0, 0.0, 0.0)  # union's theta_min, its residual, theta_max, its residual
        self.whole_space_basis = np.zeros((size, 0))
        self.last_coefficients = np.zeros((0, 0))  # V^T A V_last for the block appended last
        self.bar: tqdm | None = None

    @property
    def n_matvecs(self) -> int:
        return self.n + self.n_extra_matvecs

    # -- building the basis ------------------------------------------------------------------------------------

    def _append(self, block: np.ndarray, sequence: _Sequence) -> None:
        """Append orthonormal ``block`` to ``sequence``, apply A once, grow its projection."""
        width, n = block.shape[1], self.n
        new = slice(n, n + width)
        self.basis[:, new] = block
        self.images[:, new] = self.apply(block)
        # V^T A V_new against the whole basis: the sequence's own rows grow H, and all of it is the first
        # Gram-Schmidt pass of the next block (see `_outside`), so it is computed once.
        self.last_coefficients = self.basis[:, : n + width].T @ self.images[:, new]
        coupling = self.last_coefficients[sequence.start:]
        own = slice(sequence.start, n + width)
        self.projected[own, new] = coupling
        self.projected[new, own] = coupling.T
        self.projected[new, new] = 0.5 * (coupling[-width:] + coupling[-width:].T)
        self.n = n + width
        sequence.stop, sequence.frontier = self.n, np.arange(n, self.n)
        if self.bar is not None:
            self.bar.update(width)

    def _outside(self, sequence: _Sequence) -> np.ndarray:
        """``(I - D D^T) A V_frontier``: where the sequence grows next, and the source of its residuals."""
        images = self.images[:, sequence.frontier]
        # The frontier is always the block appended last, whose coefficients `_append` kept.
        outside = images - self.basis[:, : self.n] @ self.last_coefficients
        return _project_out(outside, [self.excluded])

    def _room(self) -> int:
        return min(self.max_iter - self.n, self.size - self.n - self.excluded.shape[1])

    def _start_sequence(self, width: int) -> _Sequence:
        width = min(width, self._room())
        sequence = _Sequence(start=self.n, stop=self.n, width=width)
        block = _orthonormalise(self.rng.standard_normal((self.size, width)),
                                [self.basis[:, : self.n], self.excluded], self.rng)
        self.sequences.append(sequence)
        self._append(block, sequence)
        return sequence

    # -- Rayleigh-Ritz -----------------------------------------------------------------------------------------

    def _sequence_ritz(self, sequence: _Sequence, n_bottom: int, n_top: int) -> tuple[np.ndarray, np.ndarray]:
        own = slice(sequence.start, sequence.stop)
        return _banded_ritz(self.projected[own, own], sequence.bandwidth, n_bottom, n_top)

    def _candidates(self, index: int) -> _Candidates:
        """End Ritz pairs of sequence ``index`` with exact residuals (cached once the sequence is frozen)."""
        if index in self.cache:
            return self.cache[index]
        sequence = self.sequences[index]
        own = slice(sequence.start, sequence.stop)
        values, vectors = self._sequence_ritz(sequence, self.k if self.want_bottom else 1,
                                              self.k if self.want_top else 1)
        residual = self.images[:, own] @ vectors - (self.basis[:, own] @ vectors) * values
        candidates = _Candidates(values=values, owners=np.full(len(values), index),
                                 coefficients=list(vectors.T), residuals=np.linalg.norm(residual, axis=0))
        if index < len(self.sequences) - 1:
            self.cache[index] = candidates
        return candidates

    def _union(self) -> _Candidates:
        """Rayleigh-Ritz on all sequences (block diagonal), restricted to the wanted set; sets the threshold."""
        parts = [self._candidates(index) for index in range(len(self.sequences))]
        values = np.concatenate([part.values for part in parts])
        owners = np.concatenate([part.owners for part in parts])
        residuals = np.concatenate([part.residuals for part in parts])
        coefficients = [vector for part in parts for vector in part.coefficients]
        order = np.argsort(values, kind="stable")
        self.threshold = self.tol * max(abs(values[order[0]]), abs(values[order[-1]]))
        self.extremes = (values[order[0]], residuals[order[0]], values[order[-1]], residuals[order[-1]])
        chosen = np.unique(np.concatenate([order[: self.k] if self.want_bottom else np.arange(0, dtype=int),
                                           order[-self.k:] if self.want_top else np.arange(0, dtype=int)]))
        chosen = chosen[np.argsort(values[chosen], kind="stable")]
        union = _Candidates(values=values[chosen], owners=owners[chosen],
                            coefficients=[coefficients[i] for i in chosen], residuals=residuals[chosen])
        self.status = (union.values, union.residuals, self.threshold)
        return union

    def vectors(self, union: _Candidates) -> np.ndarray:
        """Ritz vectors ``ndarray[P, m]`` of ``union``."""
        out = np.empty((self.size, len(union.values)))
        for column, (owner, coefficients) in enumerate(zip(union.owners, union.coefficients)):
            if owner < 0:  # from the whole-space solve: coordinates in [V, excluded]
                out[:, column] = self.whole_space_basis @ coefficients
            else:
                sequence = self.sequences[owner]
                out[:, column] = self.basis[:, sequence.start: sequence.stop] @ coefficients
        return out

    def _whole_space(self) -> _Candidates:
        """Every direction is in ``[V, excluded]``: dense Rayleigh-Ritz there is exact (reached for small P only).

        Costs ``excluded.shape[1]`` more HVPs (their products were never needed before).
        """
        full = np.hstack([self.basis[:, : self.n], self.excluded])
        images = np.hstack([self.images[:, : self.n], self.apply(self.excluded)])
        self.n_extra_matvecs = self.excluded.shape[1]
        projected = full.T @ images
        theta, vectors = scipy.linalg.eigh(0.5 * (projected + projected.T), check_finite=False)
        residual = np.linalg.norm(images @ vectors - (full @ vectors) * theta, axis=0)
        self.threshold = self.tol * max(abs(theta[0]), abs(theta[-1]))
        n = len(theta)
        chosen = np.unique(np.concatenate([np.arange(self.k) if self.want_bottom else np.arange(0, dtype=int),
                                           np.arange(n - self.k, n) if self.want_top else np.arange(0, dtype=int)]))
        self.settled_by = {end: "search space is the whole space" for end in self.ends}
        self.whole_space_basis = full
        return _Candidates(values=theta[chosen], owners=np.full(len(chosen), -1),
                           coefficients=list(vectors[:, chosen].T), residuals=residual[chosen])

    # -- the iteration -----------------------------------------------------------------------------------------

    def _not_converged(self, stage: str) -> LanczosConvergenceError:
        values, estimates, threshold = self.status
        return LanczosConvergenceError(
            f"lanczos: max_iter={self.max_iter} operator applications reached before {stage} "
            f"({int(np.sum(estimates <= threshold))}/{len(estimates)} wanted Ritz pairs within the residual "
            f"threshold {threshold:.3g}); increase max_iter or loosen tol",
            eigenvalues=np.asarray(values).copy(), residual_norms=np.asarray(estimates).copy(),
            threshold=threshold, n_matvecs=self.n_matvecs)

    def run(self, block_size: int) -> _Candidates:
        """Iterate until the wanted set has converged and a restart finds nothing new; return the wanted set."""
        sequence = self._start_sequence(block_size)
        restart_edges: tuple[float, float] | None = None  # wanted-set edges when the current restart began
        steps_since_check = 0
        while True:
            outside = self._outside(sequence)
            room = self._room()
            steps_since_check += 1
            # Banded Rayleigh-Ritz costs O(n^2 b): past n = 400 do it every ceil(n / 400) steps (overshoot
            # below 0.25 % of the HVPs).
            if steps_since_check >= math.ceil(self.n / 400) or room == 0:
                steps_since_check = 0
                if restart_edges is None:
                    done = self._main_converged(sequence, outside)
                else:
                    done = self._restart_settled(sequence, outside, restart_edges)
                # The cheap estimates say yes: confirm with exact residuals of the whole union.
                union = self._union() if done else None
                if union is not None and bool(np.all(union.residuals <= self.threshold)):
                    if restart_edges is None and self.k == 1:
                        self.settled_by = {end: "k == 1" for end in self.ends}
                        return union
                    if restart_edges is not None and not self._found_new(union, restart_edges):
                        return union
                    # First restart, or the last one found missing copies: restart with twice the width.
                    self.excluded = np.hstack([self.excluded, _orthonormalise(
                        outside, [self.basis[:, : self.n], self.excluded], None,
                        reference_norms=np.linalg.norm(self.images[:, sequence.frontier], axis=0))])
                    width = block_size if restart_edges is None else 2 * sequence.width
                    restart_edges = (self._edge("smallest", union), self._edge("largest", union))
                    if self._room() > 0:
                        self.n_restarts += 1
                        sequence = self._start_sequence(width)
                        continue
                    room = 0
                if room == 0:
                    explored = self.n + self.excluded.shape[1]
                    if explored == self.size and explored <= self.max_iter:  # nothing left: finish exactly
                        return self._whole_space()
                    raise self._not_converged("convergence" if restart_edges is None else
                                              "the multiplicity check finished")
            norms = np.linalg.norm(self.images[:, sequence.frontier[:room]], axis=0)
            block = _orthonormalise(outside[:, :room], [self.basis[:, : self.n], self.excluded], self.rng,
                                    reference_norms=norms)
            self._append(block, sequence)
            sequence.steps += 1
            if self.bar is not None and not self.bar.disable:
                values, estimates, threshold = self.status
                self.bar.set_postfix(converged=int(np.sum(estimates <= threshold)), wanted=self.n_wanted)

    def _edge(self, end: str, union: _Candidates) -> float:
        """The wanted set's inner edge at ``end``: the k-th smallest or k-th largest wanted value."""
        values = union.values
        if end == "smallest":
            return float(values[self.k - 1]) if self.want_bottom else -math.inf
        return float(values[-self.k]) if self.want_top else math.inf

    def _found_new(self, union: _Candidates, edges: tuple[float, float]) -> bool:
        """Did the newest sequence put a pair into the wanted set strictly beyond the old edges?"""
        newest = union.owners == len(self.sequences) - 1
        lower, upper = edges
        beyond = (union.values < lower - self.threshold) | (union.values > upper + self.threshold)
        return bool(np.any(newest & beyond))

    def _main_converged(self, sequence: _Sequence, outside: np.ndarray) -> bool:
        """Residual estimates of the first sequence's wanted pairs all below ``tol * scale``?"""
        values, vectors = self._sequence_ritz(sequence, self.k if self.want_bottom else 1,
                                              self.k if self.want_top else 1)
        rows = sequence.frontier - sequence.start
        estimates = np.linalg.norm(outside @ vectors[rows], axis=0)
        threshold = self.tol * max(abs(values[0]), abs(values[-1]))
        count = len(values)
        wanted = np.unique(np.concatenate([np.arange(min(self.k, count)) if self.want_bottom else
                                           np.arange(0, dtype=int),
                                           np.arange(max(count - self.k, 0), count) if self.want_top else
                                           np.arange(0, dtype=int)]))
        self.status = (values[wanted], estimates[wanted], threshold)
        return self.n >= self.n_wanted and bool(np.all(estimates[wanted] <= threshold))

    def _restart_settled(self, sequence: _Sequence, outside: np.ndarray, edges: tuple[float, float]) -> bool:
        """Has the restart sequence settled every wanted end (see :func:`lanczos_solve`)? Records the reasons."""
        values, vectors = self._sequence_ritz(sequence, 1, 1)
        rows = sequence.frontier - sequence.start
        q_residuals = np.linalg.norm(outside @ vectors[rows], axis=0)  # residuals for the deflated operator Q
        q_low, q_high = float(values[0]), float(values[-1])
        lowest, lowest_residual, highest, highest_residual = self.extremes
        # Crude ends of Q's spectrum (Q is a compression of A), then two rounds of Kuczynski-Wozniakowski
        # bounds, each end's bound using the other end's as its PSD shift. Four statements, each allowed
        # failure_probability / 4.
        low_0 = min(lowest - lowest_residual, q_low - q_residuals[0])
        high_0 = max(highest + highest_residual, q_high + q_residuals[-1])
        dimension = self.size - sequence.start - self.excluded.shape[1]
        epsilon = _kw_epsilon(sequence.steps, dimension, sequence.width, self.failure_probability / 4)
        upper_bound, lower_bound = math.inf, -math.inf
        if epsilon is not None:
            def upper(shift: float) -> float:  # lambda_max(Q) <= this, given lambda_min(Q) >= shift
                return shift + (q_high - shift) / (1 - epsilon)

            def lower(shift: float) -> float:  # lambda_min(Q) >= this, given lambda_max(Q) <= shift
                return shift - (shift - q_low) / (1 - epsilon)

            high_1, low_1 = upper(low_0), lower(high_0)
            upper_bound, lower_bound = min(high_1, upper(low_1)), max(low_1, lower(high_1))
        settled: dict[str, str] = {}
        for end in self.ends:
            top = end == "largest"
            q_value, q_residual = (q_high, q_residuals[-1]) if top else (q_low, q_residuals[0])
            beyond = q_value - edges[1] if top else edges[0] - q_value  # > 0: inside the wanted set
            if q_residual <= self.threshold:
                settled[end] = ("deflated Ritz pair converged outside the wanted set" if beyond <= self.threshold
                                else "deflated Ritz pair converged inside the wanted set")
            elif (upper_bound < edges[1]) if top else (lower_bound > edges[0]):
                settled[end] = f"probability <= {self.failure_probability:.0e} (Kuczynski-Wozniakowski bound)"
        if all(end in settled for end in self.ends):
            self.settled_by = settled
            return True
        return False


def lanczos(
    operator: LinearOperator | ArrayLike,
    k: int,
    *,
    which: Which = "both",
    tol: float = 1e-8,
    seed: int = 0,
    return_vectors: bool = False,
    max_iter: int | None = None,
    block_size: int = 1,
    failure_probability: float = 1e-6,
    progress: bool = True,
    blas_threads: int | None = 1,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest and/or smallest eigenvalues of a symmetric operator; see :func:`lanczos_solve`.

    Same arguments and guarantees as :func:`lanczos_solve` (stopping rule: every returned pair has
    ``||A y - theta y|| <= tol * max(|theta_max|, |theta_min|)``; exactly repeated extreme eigenvalues come with
    full multiplicity; ``max_iter`` reached raises :class:`LanczosConvergenceError`).

    Returns:
        ``eigenvalues: ndarray[m]`` ascending (``m = k``, or ``2k`` for ``which="both"``: the ``k`` smallest then
        the ``k`` largest), or ``(eigenvalues, eigenvectors: ndarray[P, m])`` when ``return_vectors=True``.
    """
    result = lanczos_solve(operator, k, which=which, tol=tol, seed=seed, return_vectors=return_vectors,
                           max_iter=max_iter, block_size=block_size, failure_probability=failure_probability,
                           progress=progress, blas_threads=blas_threads)
    if return_vectors:
        return result.eigenvalues, result.eigenvectors
    return result.eigenvalues


def top_eigenvalue(
    operator: LinearOperator | ArrayLike,
    *,
    tol: float = 1e-6,
    seed: int = 0,
    max_iter: int | None = None,
    progress: bool = True,
) -> float:
    """The largest *signed* eigenvalue ``lambda_max(A)`` (not the largest ``|lambda|``).

    Single-vector Lanczos, ``k = 1``, ``which="largest"`` (no multiplicity check is needed: a missing copy of
    ``lambda_max`` has the same value). Stops when the top Ritz pair has
    ``||A y - theta y|| <= tol * max(|theta_max|, |theta_min|)``; ``theta`` is a lower bound on ``lambda_max``
    within that residual of an eigenvalue.

    Args:
        operator: real symmetric ``(P, P)`` operator.
        tol: relative residual tolerance.
        seed: start-vector seed.
        max_iter: cap on HVPs (see :func:`lanczos_solve`); reaching it raises :class:`LanczosConvergenceError`.
        progress: tqdm bar.
    Returns:
        ``lambda_max`` as a float.
    """
    values = lanczos(operator, 1, which="largest", tol=tol, seed=seed, max_iter=max_iter, progress=progress)
    return float(values[-1])
