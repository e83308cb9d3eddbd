"""Dense spectra of Hessians: all eigenvalues plus the extreme eigenvectors, and summary statistics.

* :func:`eigendecomposition` -- every eigenvalue of a dense symmetric ``(P, P)`` matrix and the eigenvectors of
  the ``n_top`` largest and ``n_bottom`` smallest ones, as a frozen :class:`DenseSpectrum`. Every result is
  verified before it is returned: residuals ``||H v - lambda v||`` and orthonormality are measured and stored.
* :func:`spectrum_stats` -- trace, extremes, negative counts, spectral entropy and effective rank of a spectrum.

Why a custom route. LAPACK solves ``H = Q T Q^T`` in two phases: the reduction to a tridiagonal ``T`` costs
``4/3 P^3`` flops, half of them in matrix-vector products (memory bound), and everything after it is cheap *if
only a few eigenvectors are wanted*. Library calls cannot share that reduction: ``scipy.linalg.eigh`` with
``subset_by_index`` repeats it for each subset, and asking for all vectors costs several times more. The default
route here (``driver="two_stage"``) instead

1. reduces ``H`` to a symmetric band matrix ``B = Q^T H Q`` of half-bandwidth ``b`` with blocked Householder
   reflectors, all of whose work is matrix-matrix products (torch/MKL ``addmm`` on tiles of the lower triangle:
   ``4/3 P^3`` flops, compute bound);
2. gets all eigenvalues of ``B`` from LAPACK ``dsbev`` (band -> tridiagonal -> root-free QR, ``O(P^2 b)``);
3. gets the wanted eigenvectors of ``B`` by inverse iteration with the known eigenvalues as shifts (one banded LU,
   ``dgbtrf``, per vector, ``O(P b^2)``), orthogonalising each against the previous ones so that vectors of
   (nearly) repeated eigenvalues come out orthonormal;
4. maps them back, ``v = Q x``, by applying the stored reflectors (``O(P^2)`` per vector), and finishes with a
   Rayleigh-Ritz step on each end's block.

``benchmarks/bench_eigh.py`` measures this against the library routes. On the project's 2-core machine, for all
eigenvalues plus 50 + 50 extreme eigenvectors of a 5,994 x 5,994 Hessian-like matrix (median wall seconds, 2 / 1
threads): two_stage 6.5 / 9.9; tridiagonal 9.1 / 16.4; scipy.linalg.eigh with all vectors 21.0 / 32.5;
torch.linalg.eigh 25.7 / 50.3; scipy eigvalsh + two ``subset_by_index`` calls 23.4 / 41.6 -- against 4.9 / 8.2 for
the eigenvalues alone with ``torch.linalg.eigvalsh``. The simple references stay selectable (``driver="scipy"``,
``"torch"``, ``"tridiagonal"``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from numpy.typing import ArrayLike
from scipy.linalg import lapack
from tqdm.std import tqdm

from ._validation import check_int

__all__ = ["DenseSpectrum", "eigendecomposition", "spectrum_stats"]

Driver = Literal["auto", "two_stage", "tridiagonal", "scipy", "torch"]
_DRIVERS = ("auto", "two_stage", "tridiagonal", "scipy", "torch")

# Acceptance test of every returned decomposition (relative to ||H||_2 = max |lambda|): the "exact" contract.
_RESIDUAL_RTOL = 1e-10
_ORTHOGONALITY_TOL = 1e-10
# driver="auto": measured crossovers (1 thread, random symmetric matrices, 50 + 50 vectors). Below ~500 one
# LAPACK call with all vectors (scipy.linalg.eigh) is fastest; while H fits in cache the one-stage tridiagonal
# reduction is not memory bound and "tridiagonal" wins; from ~3000 on the two-stage route does
# (P = 1600: 0.94 / 0.25 / 0.41 s; P = 3000: 3.8 / 1.6 / 1.6 s for scipy / tridiagonal / two_stage).
_AUTO_TRIDIAGONAL_MIN_SIZE = 512
_AUTO_TWO_STAGE_MIN_SIZE = 2500
# Half-bandwidth of the intermediate band matrix. Wider bands make the dense->band products more efficient but
# the band eigensolver (O(P^2 b)) and the banded LU per eigenvector (O(P b^2)) dearer. At P = 5,994 widths 32,
# 48 and 64 were within 2% of each other (benchmarks/bench_eigh.py --band-widths); the W = A V T products run
# fastest at k = 48 (MKL, measured).
_BAND_WIDTH = 48
# Tiles of the lower triangle updated per matrix product. Tile boundaries sit at fixed multiples of this size, so
# every diagonal tile ever used is inside one fixed diagonal tile, which is always updated in full (the strictly
# upper tiles are never read or written).
_TILE = 1024
# Inverse iteration: stop when 1 / ||(B - sigma I)^{-1} x|| (a bound on the residual) is below this times ||B||,
# then do one more step; give up after _INVIT_MAX_STEPS (the final verification decides).
_INVIT_RTOL = 1e-13
_INVIT_MAX_STEPS = 6
# Products touching fewer rows than this run on one thread (see _one_thread).
_PARALLEL_MIN_ROWS = 1024


@dataclass(frozen=True, eq=False)
class DenseSpectrum:
    """All eigenvalues of a symmetric matrix and the eigenvectors of both ends of its spectrum.

    Attributes:
        eigenvalues: ``ndarray[P]`` float64, all eigenvalues in ascending order.
        top_vectors: ``ndarray[P, n_top]``; column ``i`` is the eigenvector of the ``(i+1)``-th *largest*
            eigenvalue, ``top_eigenvalues[i] = eigenvalues[P - 1 - i]`` (descending: column 0 belongs to
            ``lambda_max``).
        bottom_vectors: ``ndarray[P, n_bottom]``; column ``i`` is the eigenvector of the ``(i+1)``-th *smallest*
            eigenvalue, ``bottom_eigenvalues[i] = eigenvalues[i]`` (ascending: column 0 belongs to
            ``lambda_min``).
        driver: the route that produced the result (after a possible fallback, see :func:`eigendecomposition`);
            ``"zero_matrix"`` when ``H = 0`` (no solver runs: columns of the identity are returned).
        max_residual: ``max_i ||H v_i - lambda_i v_i||_2 / ||H||_2`` over all returned vectors (``0`` if none).
        orthogonality_error: ``max |V^T V - I|`` for ``V = [bottom_vectors, top_vectors]``.

    Each vector's sign is fixed so that its entry of largest magnitude is positive (a convention that makes
    results comparable across drivers and checkpoints; within a repeated eigenvalue the basis is arbitrary).
    All arrays are read-only.
    """

    eigenvalues: np.ndarray
    top_vectors: np.ndarray
    bottom_vectors: np.ndarray
    driver: str
    max_residual: float
    orthogonality_error: float

    @property
    def top_eigenvalues(self) -> np.ndarray:
        """``ndarray[n_top]``: the eigenvalues of ``top_vectors``' columns, descending."""
        n_top = self.top_vectors.shape[1]
        return self.eigenvalues[::-1][:n_top]

    @property
    def bottom_eigenvalues(self) -> np.ndarray:
        """``ndarray[n_bottom]``: the eigenvalues of ``bottom_vectors``' columns, ascending."""
        return self.eigenvalues[: self.bottom_vectors.shape[1]]


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def _as_matrix(H: object, symmetry_rtol: float) -> tuple[torch.Tensor, float]:
    """``(H_sym, max|H|)``: the symmetric part of ``H`` as a float64 CPU tensor, after validation.

    ``H_sym`` shares memory with ``H`` when ``H`` is exactly symmetric (the usual case: no copy).
    """
    if isinstance(H, torch.Tensor):
        if H.is_complex() or H.dtype == torch.bool:
            raise TypeError(f"H must be a real floating-point matrix, got dtype {H.dtype}")
        matrix = H.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(H, np.ndarray):
        if not (np.issubdtype(H.dtype, np.floating) or np.issubdtype(H.dtype, np.integer)):
            raise TypeError(f"H must be a real floating-point matrix, got dtype {H.dtype}")
        with warnings.catch_warnings():
            # A read-only array (e.g. a DenseSpectrum field) is fine: the tensor is never written to.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            matrix = torch.from_numpy(np.asarray(H, dtype=np.float64))
    else:
        raise TypeError(f"H must be a numpy.ndarray or torch.Tensor, got {type(H).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"H must be a square (P, P) matrix, got shape {tuple(matrix.shape)}")
    if matrix.shape[0] == 0:
        raise ValueError("H must have at least one row, got shape (0, 0)")
    matrix = matrix.contiguous()
    # min/max are NaN or inf exactly when H has a non-finite entry (torch propagates NaN): one pass, no temporary.
    smallest, largest = (float(x) for x in torch.aminmax(matrix))
    scale = max(-smallest, largest)
    if not math.isfinite(scale):
        bad = (~torch.isfinite(matrix)).nonzero()
        row, col = (int(i) for i in bad[0])
        raise ValueError(f"H has {bad.shape[0]} non-finite entries (NaN or inf), first at ({row}, {col}) = "
                         f"{float(matrix[row, col])}; a Hessian must be finite")
    # Row blocks against column blocks keep temporaries small (H can be 1 GB); exact symmetry, the usual case, is
    # confirmed by a cheap equality test.
    asymmetry = 0.0
    for start in range(0, matrix.shape[0], 1024):
        block, mirror = matrix[start:start + 1024], matrix[:, start:start + 1024].T
        if not torch.equal(block, mirror):
            asymmetry = max(asymmetry, float((block - mirror).abs().max()))
    relative_asymmetry = asymmetry / scale if scale > 0 else 0.0
    if relative_asymmetry > symmetry_rtol:
        raise ValueError(f"H is not symmetric: max|H - H^T| / max|H| = {relative_asymmetry:.3e} > "
                         f"symmetry_rtol={symmetry_rtol:.1e}")
    if asymmetry > 0:
        # The symmetric part is the matrix LAPACK would see anyway (up to rounding-level asymmetry).
        matrix = (matrix + matrix.T).mul_(0.5)
    return matrix, scale


# ----------------------------------------------------------------------------------------------------------------
# Two-stage route: dense -> band (torch BLAS-3), band eigenvalues (LAPACK), band inverse iteration, back-transform
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread(active: bool = True) -> Iterator[None]:
    """Run the enclosed torch/MKL calls on one thread (restoring the caller's setting afterwards).

    Small operations gain nothing from threads, and on a machine whose cores are busy with other processes a
    multi-threaded call waits for them at every barrier: one ``geqrf`` of a 6000 x 48 panel took 217 ms on 2
    threads against 1.5 ms on 1 thread under load. Large tile products keep the caller's thread count. (The
    setting is process-wide: torch used concurrently from another Python thread would also see 1 thread.)
    """
    previous = torch.get_num_threads()
    if not active or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _block_reflector_factor(reflectors: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``T: (k, k)`` upper triangular with ``H_1 H_2 ... H_k = I - V T V^T`` (LAPACK ``dlarft``, forward).

    ``reflectors`` is ``V: (m, k)`` unit lower trapezoidal, ``H_i = I - tau_i v_i v_i^T``. Recurrence:
    ``T_ii = tau_i``, ``T[:i, i] = -tau_i T[:i, :i] V[:, :i]^T v_i`` (also right when ``tau_i = 0``, ``H_i = I``).
    """
    k = reflectors.shape[1]
    gram = reflectors.T @ reflectors
    factor = torch.zeros(k, k, dtype=reflectors.dtype)
    for i in range(k):
        factor[i, i] = tau[i]
        if i > 0:
            factor[:i, i] = -tau[i] * (factor[:i, :i] @ gram[:i, i])
    return factor


def _tile_bounds(start: int, size: int, tile: int) -> list[int]:
    """``[start, next multiple of tile, ..., size]``: tiles aligned to global multiples of ``tile``."""
    return [start, *range((start // tile + 1) * tile, size, tile), size]


def _reduce_to_band(matrix: torch.Tensor, band_width: int, *, tile: int = _TILE,
                    progress: bool = True) -> tuple[np.ndarray, list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """Orthogonal reduction of a symmetric matrix to band form, ``B = Q^T A Q``, overwriting ``matrix``.

    Args:
        matrix: ``(P, P)`` float64 contiguous symmetric tensor; destroyed (its lower triangle is the workspace).
        band_width: half-bandwidth ``b >= 1`` of ``B``.
        tile: column-tile width of the blocked products.
        progress: show a progress bar over the panels.

    For each panel of ``b`` columns ``j..j+b-1`` the part below the band, ``A[s:, j:j+b]`` with ``s = j + b``, is
    QR-factorised (``geqrf``), ``= Q_p R``, and replaced by ``R``; the trailing matrix becomes ``Q_p^T A22 Q_p``
    through the symmetric rank-2b update (``Q_p = I - V T V^T``)

        ``W = A22 V T``,  ``Z = W - 1/2 V (T^T V^T W)``,  ``A22 <- A22 - Z V^T - V Z^T``,

    computed on tiles of the lower triangle only (``A22 V T`` reads the strictly lower tiles twice, once
    transposed), which halves the update work compared with full products.

    Returns:
        ``(band, reflectors)``: ``band: ndarray[b+1, P]``, LAPACK lower band storage, ``band[d, i] = B[i+d, i]``;
        ``reflectors``: list of ``(s, V: (P-s, k), T: (k, k))`` with ``Q = Q_1 Q_2 ... Q_last`` and ``Q_p`` acting
        on rows ``s:`` as ``I - V T V^T``.
    """
    size = matrix.shape[0]
    band_width = min(band_width, max(size - 1, 1))
    reflectors: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    # A panel with fewer than 2 rows below the band is already in band form.
    starts = [j for j in range(0, size, band_width) if size - (j + band_width) >= 2]
    for j in tqdm(starts, desc="dense -> band", unit="panel", disable=not progress, leave=False):
        s = j + band_width
        rows = size - s
        panel = matrix[s:, j:j + band_width]
        k = min(rows, band_width)
        with _one_thread():
            packed, tau = torch.geqrf(panel)
            vectors = torch.tril(packed[:, :k], -1)
            vectors.diagonal().fill_(1.0)
            factor = _block_reflector_factor(vectors, tau[:k])
            panel.copy_(torch.triu(packed))
            factor_vectors = (vectors @ factor).T.contiguous()
        bounds = _tile_bounds(s, size, tile)
        with _one_thread(rows < _PARALLEL_MIN_ROWS):
            # W = A22 @ (V T) from the lower triangle: diagonal tiles are full, the upper part enters via
            # transposes. Computed as W^T = (V T)^T A22: with a wide (k, rows) output MKL's gemm runs up to twice
            # as fast as with the tall-skinny (rows, k) one (measured, 1 thread: 44 vs 17-36 GFLOP/s).
            work_t = torch.zeros(k, rows, dtype=matrix.dtype)
            for c0, c1 in zip(bounds[:-1], bounds[1:]):
                work_t[:, c0 - s:].addmm_(factor_vectors[:, c0 - s:c1 - s], matrix[c0:, c0:c1].T)
                if c1 < size:
                    work_t[:, c0 - s:c1 - s].addmm_(factor_vectors[:, c1 - s:], matrix[c1:, c0:c1])
        with _one_thread():
            work = work_t.T
            update = work - 0.5 * (vectors @ (factor.T @ (vectors.T @ work)))
            left = torch.cat([update, vectors], dim=1)
            right = torch.cat([vectors, update], dim=1)
        with _one_thread(rows < _PARALLEL_MIN_ROWS):
            for c0, c1 in zip(bounds[:-1], bounds[1:]):
                matrix[c0:, c0:c1].addmm_(left[c0 - s:], right[c0 - s:c1 - s].T, alpha=-1.0)
        reflectors.append((s, vectors, factor))
    band = np.zeros((band_width + 1, size))
    for d in range(band_width + 1):
        band[d, :size - d] = torch.diagonal(matrix, offset=-d).numpy()
    return band, reflectors


def _apply_band_basis(reflectors: list[tuple[int, torch.Tensor, torch.Tensor]], block: np.ndarray) -> np.ndarray:
    """``Q X`` for the ``Q`` of :func:`_reduce_to_band` and ``X: ndarray[P, k]`` (maps band eigenvectors back)."""
    result = torch.from_numpy(np.array(block, dtype=np.float64, order="C"))
    # Q = Q_1 Q_2 ... Q_last, so the last reflector block acts first. Each product is small: one thread.
    with _one_thread():
        for start, vectors, factor in reversed(reflectors):
            part = result[start:]
            part.sub_(vectors @ (factor @ (vectors.T @ part)))
    return result.numpy()


def _general_band(band: np.ndarray) -> np.ndarray:
    """LAPACK general band storage ``(3b+1, P)`` for ``dgbtrf`` (``kl = ku = b``) of a symmetric lower band."""
    width = band.shape[0] - 1
    size = band.shape[1]
    general = np.zeros((3 * width + 1, size))
    # A(i, j) lives at general[2b + i - j, j]; the first b rows are LU fill-in space.
    general[2 * width:] = band
    for d in range(1, width + 1):
        general[2 * width - d, d:] = band[d, :size - d]
    return general


def _band_inverse_iteration(band: np.ndarray, shifts: np.ndarray, *, scale: float,
                            progress: bool = True) -> np.ndarray:
    """Orthonormal eigenvectors ``X: ndarray[P, k]`` of a symmetric band matrix for known eigenvalues ``shifts``.

    For each shift ``sigma``: factor ``B - sigma I = L U`` (``dgbtrf``, partial pivoting), then iterate
    ``x <- (B - sigma I)^{-1} x`` from a seeded random start, orthogonalising against all previously computed
    vectors (twice: classical Gram-Schmidt) and normalising. Since ``(B - sigma I) y = x`` with ``||x|| = 1``, the
    residual of ``y / ||y||`` is ``1 / ||y||``; stop one step after it drops below ``_INVIT_RTOL * scale``. The
    orthogonalisation is what makes vectors of a repeated or nearly repeated eigenvalue span its eigenspace
    instead of collapsing onto one vector (LAPACK ``dstein`` does the same on a tridiagonal matrix). An exactly
    singular factor (a zero pivot) is avoided by nudging ``sigma`` by a few ulps of ``scale``.
    """
    width = band.shape[0] - 1
    size = band.shape[1]
    general = _general_band(band)
    rng = np.random.default_rng(0)
    vectors = np.zeros((size, len(shifts)))
    threshold = 1.0 / (_INVIT_RTOL * scale)
    for column, shift in enumerate(tqdm(shifts, desc="band inverse iteration", unit="vector",
                                        disable=not progress, leave=False)):
        for attempt in range(8):
            shifted = general.copy()
            shifted[2 * width] -= shift
            lu, pivots, info = lapack.dgbtrf(shifted, width, width)
            if info == 0:
                break
            if info < 0:  # pragma: no cover - argument error inside LAPACK
                raise RuntimeError(f"dgbtrf failed with info={info}")
            shift = shift + (4.0 ** attempt) * np.finfo(np.float64).eps * scale
        previous = vectors[:, :column]
        x = rng.standard_normal(size)
        x /= np.linalg.norm(x)
        extra_steps = 1
        for _ in range(_INVIT_MAX_STEPS):
            y, info = lapack.dgbtrs(lu, width, width, x[:, None], pivots)
            y = y[:, 0]
            for _ in range(2):
                y -= previous @ (previous.T @ y)
            norm = np.linalg.norm(y)
            if not np.isfinite(norm) or norm == 0.0:
                # Only possible with a (nudged) singular factor; restart from a fresh random direction.
                x = rng.standard_normal(size)
                x -= previous @ (previous.T @ x)
                x /= np.linalg.norm(x)
                continue
            x = y / norm
            if norm >= threshold:
                if extra_steps == 0:
                    break
                extra_steps -= 1
        vectors[:, column] = x
    return vectors


def _two_stage(matrix: torch.Tensor, n_top: int, n_bottom: int, *, scale: float, band_width: int = _BAND_WIDTH,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(eigenvalues ascending, bottom vectors ascending, top vectors ascending)`` by the two-stage route."""
    size = matrix.shape[0]
    work = matrix.clone()
    band, reflectors = _reduce_to_band(work, band_width, progress=progress)
    del work
    eigenvalues, _, info = lapack.dsbev(band, compute_v=0, lower=1, overwrite_ab=0)
    if info != 0:
        raise RuntimeError(f"LAPACK dsbev failed to converge (info={info})")
    shifts = np.concatenate([eigenvalues[:n_bottom], eigenvalues[size - n_top:]])
    spectral_norm = max(abs(float(eigenvalues[0])), abs(float(eigenvalues[-1])), scale)
    band_vectors = _band_inverse_iteration(band, shifts, scale=spectral_norm, progress=progress)
    vectors = _apply_band_basis(reflectors, band_vectors)
    return eigenvalues, vectors[:, :n_bottom], vectors[:, n_bottom:]


def _rayleigh_ritz(matrix: torch.Tensor, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(X S, A X S)``: ``block = X`` (orthonormal columns) rotated to the Ritz vectors of ``A = matrix`` in its
    span (``X^T A X = S diag(theta) S^T``, ``theta`` ascending), and their products with ``A``."""
    with _one_thread(matrix.shape[0] < _PARALLEL_MIN_ROWS):
        product = (matrix @ torch.from_numpy(np.ascontiguousarray(block))).numpy()
    if block.shape[1] == 0:
        return block, product
    projected = block.T @ product
    _, rotation = scipy.linalg.eigh(0.5 * (projected + projected.T))
    return block @ rotation, product @ rotation


# ----------------------------------------------------------------------------------------------------------------
# Reference routes
# ----------------------------------------------------------------------------------------------------------------


def _tridiagonal_vectors(diagonal: np.ndarray, off_diagonal: np.ndarray, eigenvalues: np.ndarray, n_top: int,
                         n_bottom: int) -> np.ndarray:
    """Eigenvectors ``ndarray[P, n_bottom + n_top]`` of a tridiagonal matrix for its ``n_bottom`` smallest then
    ``n_top`` largest eigenvalues (ascending), by LAPACK ``dstebz`` (bisection) + ``dstein`` (inverse iteration).

    Both ends go through *one* ``dstein`` call so that its reorthogonalisation of close eigenvalues also covers a
    cluster that straddles the two ends. If the two ends touch (``lambda_{n_bottom} ~ lambda_{P - n_top + 1}``),
    separate index-range bisections could attribute one tied eigenvalue to both ends, so then all eigenvalues
    are bisected in one call and the wanted ranks are picked from it.
    """
    size = diagonal.shape[0]
    if n_top + n_bottom == 0:
        return np.zeros((size, 0))
    ranges = [(lo, hi) for lo, hi in [(1, n_bottom), (size - n_top + 1, size)] if hi >= lo]  # 1-based, inclusive
    norm = max(abs(float(eigenvalues[0])), abs(float(eigenvalues[-1])))
    touching = (n_bottom > 0 and n_top > 0
                and eigenvalues[size - n_top] - eigenvalues[n_bottom - 1] <= 1e-12 * norm)
    values, blocks = [], []
    if touching:
        m, w, iblock, isplit, info = lapack.dstebz(diagonal, off_diagonal, 2, 0.0, 1.0, 1, size, 0.0, b"B")
        if info != 0:
            raise RuntimeError(f"LAPACK dstebz failed (info={info})")
        ranks = np.argsort(w[:m], kind="stable")
        chosen = np.concatenate([ranks[:n_bottom], ranks[size - n_top:]])
        values.append(w[chosen])
        blocks.append(iblock[chosen])
    else:
        for lo, hi in ranges:
            m, w, iblock, isplit, info = lapack.dstebz(diagonal, off_diagonal, 2, 0.0, 1.0, lo, hi, 0.0, b"B")
            if info != 0:
                raise RuntimeError(f"LAPACK dstebz failed (info={info})")
            values.append(w[:m])
            blocks.append(iblock[:m])
    w_all, block_all = np.concatenate(values), np.concatenate(blocks)
    # dstein wants the eigenvalues grouped by split-off block, ascending within each block.
    block_order = np.lexsort((w_all, block_all))
    padded_blocks = np.zeros(size, dtype=block_all.dtype)
    padded_blocks[:block_order.size] = block_all[block_order]
    vectors, info = lapack.dstein(diagonal, off_diagonal, w_all[block_order], padded_blocks, isplit)
    if info != 0:
        raise RuntimeError(f"LAPACK dstein: {info} eigenvectors failed to converge" if info > 0
                           else f"LAPACK dstein failed (info={info})")
    ascending = np.argsort(w_all[block_order], kind="stable")
    return vectors[:, ascending]


def _tridiagonal(matrix: torch.Tensor, n_top: int, n_bottom: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-stage LAPACK route: ``dsytrd`` once, ``dsterf`` for all values, ``dstebz + dstein`` for the wanted
    tridiagonal vectors, ``dormqr`` (= ``dormtr``, lower) to map them back."""
    size = matrix.shape[0]
    if size == 1:
        return matrix.numpy().reshape(1).copy(), np.ones((1, n_bottom)), np.ones((1, n_top))
    lwork = int(lapack.dsytrd_lwork(size, lower=1)[0])
    # matrix is symmetric, so its transpose is the same matrix already in Fortran order (one copy, not two).
    packed, diagonal, off_diagonal, tau, info = lapack.dsytrd(matrix.numpy().T, lower=1, lwork=max(lwork, 1))
    if info != 0:  # pragma: no cover - argument error inside LAPACK
        raise RuntimeError(f"LAPACK dsytrd failed (info={info})")
    eigenvalues, info = lapack.dsterf(diagonal, off_diagonal)
    if info != 0:
        raise RuntimeError(f"LAPACK dsterf failed to converge (info={info})")
    tri_block = _tridiagonal_vectors(diagonal, off_diagonal, eigenvalues, n_top, n_bottom)
    # Q = H(1) ... H(n-1) with v_i(i+1) = 1 stored below the subdiagonal: a QR-type Q of A(2:n, 1:n-1).
    vectors = np.array(tri_block, order="F")
    if vectors.shape[1] > 0:
        reflector_block = np.asfortranarray(packed[1:, :size - 1])
        lwork = int(lapack.dormqr("L", "N", reflector_block, tau, vectors[1:], -1)[1][0])
        applied, _, info = lapack.dormqr("L", "N", reflector_block, tau, vectors[1:], max(lwork, 1))
        if info != 0:  # pragma: no cover - argument error inside LAPACK
            raise RuntimeError(f"LAPACK dormqr failed (info={info})")
        vectors[1:] = applied
    return eigenvalues, vectors[:, :n_bottom], vectors[:, n_bottom:]


def _full(matrix: torch.Tensor, n_top: int, n_bottom: int, driver: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All eigenvectors in one library call (``scipy.linalg.eigh`` or ``torch.linalg.eigh``), then sliced."""
    size = matrix.shape[0]
    if driver == "scipy":
        eigenvalues, eigenvectors = scipy.linalg.eigh(matrix.numpy(), check_finite=False)
    else:
        values, vectors = torch.linalg.eigh(matrix)
        eigenvalues, eigenvectors = values.numpy(), vectors.numpy()
    return eigenvalues, eigenvectors[:, :n_bottom], eigenvectors[:, size - n_top:]


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def _verify(matrix: torch.Tensor, eigenvalues: np.ndarray, vectors: np.ndarray, scale: float,
            products: np.ndarray | None = None) -> tuple[float, float]:
    """``(max_i ||A v_i - lambda_i v_i|| / scale, max |V^T V - I|)``; ``products = A V`` if already known."""
    if vectors.shape[1] == 0:
        return 0.0, 0.0
    if products is None:
        with _one_thread(matrix.shape[0] < _PARALLEL_MIN_ROWS):
            products = (matrix @ torch.from_numpy(np.ascontiguousarray(vectors))).numpy()
    residual = products - vectors * eigenvalues
    max_residual = float(np.linalg.norm(residual, axis=0).max()) / scale
    orthogonality = float(np.abs(vectors.T @ vectors - np.eye(vectors.shape[1])).max())
    return max_residual, orthogonality


def eigendecomposition(H: np.ndarray | torch.Tensor, *, n_top: int = 50, n_bottom: int = 50,
                       driver: Driver = "auto", symmetry_rtol: float = 1e-8,
                       progress: bool = True) -> DenseSpectrum:
    """All eigenvalues of a dense symmetric matrix and the eigenvectors of its ``n_top`` largest and ``n_bottom``
    smallest eigenvalues, verified.

    Args:
        H: ``(P, P)`` real symmetric matrix, ``numpy.ndarray`` or ``torch.Tensor`` (any real dtype and device;
            computed in float64 on the CPU). Its symmetric part ``(H + H^T) / 2`` is decomposed.
        n_top: number of largest eigenvalues whose eigenvectors are returned.
        n_bottom: number of smallest eigenvalues whose eigenvectors are returned; ``n_top + n_bottom <= P``.
        driver: the route (all are exact to rounding):

            * ``"two_stage"`` -- dense -> band reduction with matrix-matrix products, band eigenvalues (LAPACK
              ``dsbev``), band inverse iteration for the wanted vectors, back-transform, Rayleigh-Ritz (see the
              module docstring). Fastest measured for large ``P``.
            * ``"tridiagonal"`` -- LAPACK one-stage: ``dsytrd`` once, ``dsterf``, ``dstebz + dstein`` for the
              wanted vectors, ``dormqr`` back-transform.
            * ``"scipy"`` -- ``scipy.linalg.eigh`` (all vectors, LAPACK ``dsyevr``): the simple reference.
            * ``"torch"`` -- ``torch.linalg.eigh`` (all vectors, ``syevd``).
            * ``"auto"`` -- the fastest measured: ``"scipy"`` for ``P < 512``, ``"tridiagonal"`` for
              ``512 <= P < 2500`` (the matrix fits in cache), ``"two_stage"`` from ``P = 2500`` on.

        symmetry_rtol: largest accepted ``max|H - H^T| / max|H|``; larger asymmetry signals a wrong Hessian, not
            rounding, and raises.
        progress: show progress bars for the two-stage route.

    Returns:
        :class:`DenseSpectrum` with ``eigenvalues: ndarray[P]`` ascending, ``top_vectors: ndarray[P, n_top]``
        (column 0 = largest eigenvalue), ``bottom_vectors: ndarray[P, n_bottom]`` (column 0 = smallest), and the
        measured ``max_residual = max ||H v - lambda v|| / ||H||_2`` and ``orthogonality_error``.

    Every result is checked: residuals against the returned eigenvalues and orthonormality of all returned
    vectors together must be below ``1e-10``. If the two-stage route misses that (not observed; it would take a
    failed inverse iteration), a ``RuntimeWarning`` is issued and the ``"tridiagonal"`` route is used instead; a
    library route that misses it only warns (its numbers are in the result).

    Raises:
        TypeError: ``H`` is not a real ndarray/tensor; ``n_top``/``n_bottom`` are not ints.
        ValueError: ``H`` is not square, has NaN/inf entries, or is asymmetric beyond ``symmetry_rtol``;
            negative counts or ``n_top + n_bottom > P``; unknown ``driver``.
    """
    n_top = check_int("n_top", n_top, minimum=0)
    n_bottom = check_int("n_bottom", n_bottom, minimum=0)
    if driver not in _DRIVERS:
        raise ValueError(f"driver={driver!r} must be one of {_DRIVERS}")
    if not (isinstance(symmetry_rtol, (int, float)) and math.isfinite(symmetry_rtol) and symmetry_rtol >= 0):
        raise ValueError(f"symmetry_rtol={symmetry_rtol!r} must be a finite number >= 0")
    matrix, scale = _as_matrix(H, symmetry_rtol)
    size = matrix.shape[0]
    if n_top + n_bottom > size:
        raise ValueError(f"n_top + n_bottom = {n_top} + {n_bottom} = {n_top + n_bottom} must be <= P = {size}")

    if scale == 0.0:
        # The zero matrix: every orthonormal basis is an eigenbasis, and the routes' tolerances (relative to
        # ||H||) are undefined.
        basis = np.eye(size)
        return _make_spectrum(np.zeros(size), basis[:, size - n_top:], basis[:, :n_bottom],
                              driver="zero_matrix", scale=1.0, matrix=matrix)

    chosen = driver
    products: dict[str, np.ndarray] = {}
    if driver == "auto":
        chosen = ("two_stage" if size >= _AUTO_TWO_STAGE_MIN_SIZE
                  else "tridiagonal" if size >= _AUTO_TRIDIAGONAL_MIN_SIZE else "scipy")
    if chosen == "two_stage":
        eigenvalues, bottom, top = _two_stage(matrix, n_top, n_bottom, scale=scale, progress=progress)
        bottom, products["bottom_products"] = _rayleigh_ritz(matrix, bottom)
        top, products["top_products"] = _rayleigh_ritz(matrix, top)
    elif chosen == "tridiagonal":
        eigenvalues, bottom, top = _tridiagonal(matrix, n_top, n_bottom)
    else:
        eigenvalues, bottom, top = _full(matrix, n_top, n_bottom, chosen)

    spectral_norm = max(abs(float(eigenvalues[0])), abs(float(eigenvalues[-1])))
    spectrum = _make_spectrum(eigenvalues, top, bottom, driver=chosen, scale=spectral_norm, matrix=matrix,
                              **products)
    if spectrum.max_residual > _RESIDUAL_RTOL or spectrum.orthogonality_error > _ORTHOGONALITY_TOL:
        message = (f"eigendecomposition driver={chosen!r}: max residual {spectrum.max_residual:.2e} ||H||, "
                   f"orthogonality error {spectrum.orthogonality_error:.2e} (tolerance {_RESIDUAL_RTOL:.0e})")
        if chosen == "two_stage":
            warnings.warn(message + "; recomputing with driver='tridiagonal'", RuntimeWarning, stacklevel=2)
            eigenvalues, bottom, top = _tridiagonal(matrix, n_top, n_bottom)
            spectrum = _make_spectrum(eigenvalues, top, bottom, driver="tridiagonal", scale=spectral_norm,
                                      matrix=matrix)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    return spectrum


def _make_spectrum(eigenvalues: np.ndarray, top_ascending: np.ndarray, bottom: np.ndarray, *, driver: str,
                   scale: float, matrix: torch.Tensor, top_products: np.ndarray | None = None,
                   bottom_products: np.ndarray | None = None) -> DenseSpectrum:
    """Assemble, sign-fix, verify and freeze a :class:`DenseSpectrum`.

    ``top_ascending`` pairs with ``eigenvalues[P - n_top:]`` (ascending); ``*_products`` are ``matrix @ vectors``
    when already computed (they follow the same column order and sign flips as the vectors).
    """
    size = eigenvalues.shape[0]
    n_top, n_bottom = top_ascending.shape[1], bottom.shape[1]
    eigenvalues = np.array(eigenvalues, dtype=np.float64)
    vectors = np.concatenate([bottom, top_ascending[:, ::-1]], axis=1)
    values = np.concatenate([eigenvalues[:n_bottom], eigenvalues[size - n_top:][::-1]])
    products = None
    if top_products is not None and bottom_products is not None:
        products = np.concatenate([bottom_products, top_products[:, ::-1]], axis=1)
    # Sign convention: the entry of largest magnitude of each vector is positive.
    if vectors.shape[1] > 0:
        pivots = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
        signs = np.where(pivots < 0, -1.0, 1.0)
        vectors = vectors * signs
        products = None if products is None else products * signs
    max_residual, orthogonality = _verify(matrix, values, vectors, scale if scale > 0 else 1.0, products)
    bottom_vectors = np.ascontiguousarray(vectors[:, :n_bottom])
    top_vectors = np.ascontiguousarray(vectors[:, n_bottom:])
    for array in (eigenvalues, top_vectors, bottom_vectors):
        array.setflags(write=False)
    return DenseSpectrum(eigenvalues=eigenvalues, top_vectors=top_vectors, bottom_vectors=bottom_vectors,
                         driver=driver, max_residual=max_residual, orthogonality_error=orthogonality)


# ----------------------------------------------------------------------------------------------------------------
# Summary statistics
# ----------------------------------------------------------------------------------------------------------------


def spectrum_stats(eigenvalues: ArrayLike | torch.Tensor, *, zero_tol: float | None = None) -> dict[str, float]:
    """Summary statistics of a spectrum.

    Args:
        eigenvalues: ``ndarray[n]`` (or tensor / sequence) of real eigenvalues, any order, ``n >= 1``.
        zero_tol: eigenvalues with ``|lambda| <= zero_tol`` count as numerically zero. Default
            ``max|lambda| * n * eps`` (``eps`` = float64 machine epsilon), the convention of
            ``numpy.linalg.matrix_rank``: the size of rounding errors of a dense eigensolver.

    Returns:
        dict of Python floats/ints:

        * ``n`` -- number of eigenvalues.
        * ``trace`` -- ``sum_i lambda_i``.
        * ``lambda_max``, ``lambda_min`` -- largest and smallest (signed) eigenvalue.
        * ``spectral_norm`` -- ``max_i |lambda_i|``; ``frobenius_norm`` -- ``sqrt(sum_i lambda_i^2)``.
        * ``n_negative`` -- ``#{i : lambda_i < 0}``, every strictly negative value, however tiny (it counts
          rounding noise around zero as well).
        * ``n_negative_tol`` -- ``#{i : lambda_i < -zero_tol}``, the negative eigenvalues that are significant.
        * ``n_positive_tol`` -- ``#{i : lambda_i > zero_tol}``.
        * ``n_near_zero`` / ``frac_near_zero`` -- ``#{i : |lambda_i| <= zero_tol}`` and that count divided by
          ``n``. With ``n_negative_tol`` and ``n_positive_tol`` this partitions the spectrum.
        * ``negative_mass_fraction`` -- ``sum_{lambda_i < 0} |lambda_i| / sum_i |lambda_i|`` (0 for the zero
          spectrum).
        * ``spectral_entropy`` -- Shannon entropy, natural log, of ``p_i = |lambda_i| / sum_j |lambda_j|``:
          ``S = -sum_i p_i log p_i`` with ``0 log 0 = 0``. ``S = log n`` when all ``|lambda_i|`` are equal and
          ``S = 0`` when one eigenvalue carries all the mass. The zero spectrum (all ``lambda_i = 0``) has no
          distribution; by convention ``S = 0`` there.
        * ``effective_rank`` -- ``exp(S)`` (Roy & Vetterli 2007), in ``[1, n]`` for a nonzero spectrum; the zero
          spectrum gets ``0`` (it has no direction of curvature), the one exception to ``exp(S)``.
        * ``zero_tol`` -- the threshold used.

    Raises:
        ValueError: ``eigenvalues`` is empty, not 1-D, or has NaN/inf; ``zero_tol`` is negative or not finite.
        TypeError: ``eigenvalues`` is not real.
    """
    if isinstance(eigenvalues, torch.Tensor):
        eigenvalues = eigenvalues.detach().cpu().numpy()
    values = np.asarray(eigenvalues)
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise TypeError(f"eigenvalues must be real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"eigenvalues must be a non-empty 1-D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"eigenvalues has {int((~np.isfinite(values)).sum())} non-finite entries (NaN or inf)")
    size = values.size
    magnitudes = np.abs(values)
    spectral_norm = float(magnitudes.max())
    if zero_tol is None:
        zero_tol = spectral_norm * size * np.finfo(np.float64).eps
    elif isinstance(zero_tol, bool) or not isinstance(zero_tol, (int, float, np.floating, np.integer)):
        raise TypeError(f"zero_tol={zero_tol!r} must be a number")
    zero_tol = float(zero_tol)
    if not (math.isfinite(zero_tol) and zero_tol >= 0):
        raise ValueError(f"zero_tol={zero_tol} must be finite and >= 0")

    total_mass = float(magnitudes.sum())
    if total_mass > 0:
        weights = magnitudes / total_mass
        positive = weights[weights > 0]
        entropy = float(-(positive * np.log(positive)).sum())
        effective_rank = math.exp(entropy)
        negative_mass_fraction = float(magnitudes[values < 0].sum()) / total_mass
    else:
        entropy, effective_rank, negative_mass_fraction = 0.0, 0.0, 0.0
    # <= makes n_negative_tol + n_near_zero + n_positive_tol = n (a partition), also for zero_tol = 0.
    n_near_zero = int((magnitudes <= zero_tol).sum())
    return {
        "n": int(size),
        "trace": float(values.sum()),
        "lambda_max": float(values.max()),
        "lambda_min": float(values.min()),
        "spectral_norm": spectral_norm,
        "frobenius_norm": float(np.linalg.norm(values)),
        "n_negative": int((values < 0).sum()),
        "n_negative_tol": int((values < -zero_tol).sum()),
        "n_positive_tol": int((values > zero_tol).sum()),
        "n_near_zero": n_near_zero,
        "frac_near_zero": n_near_zero / size,
        "negative_mass_fraction": negative_mass_fraction,
        "spectral_entropy": entropy,
        "effective_rank": effective_rank,
        "zero_tol": zero_tol,
    }
