"""Eigenvalue dendrogram: single-linkage coarse-graining of a 1-D spectrum.

At resolution ``eps`` two eigenvalues belong to the same cluster when a chain of
eigenvalues joins them in which every step is at most ``eps`` apart (single
linkage on the distances ``|lambda_i - lambda_j|``).  As ``eps`` grows the
clusters merge into a dendrogram whose branch points are the spectral gaps.

In one dimension single linkage is fully determined by the sorted spectrum
``s_0 <= s_1 <= ... <= s_{n-1}`` and its consecutive gaps ``g_k = s_{k+1} - s_k``:

* every cluster is a run of consecutive sorted eigenvalues;
* the minimum spanning tree is the chain ``s_0 - s_1 - ... - s_{n-1}``, so the
  merge heights are exactly the gaps ``g_k`` (sorted ascending);
* the cophenetic distance of ``lambda_i`` and ``lambda_j`` is the largest gap
  between them.

Tie convention (the same as :func:`scipy.cluster.hierarchy.fcluster` with
``criterion="distance"``, which keeps two observations together when their
cophenetic distance is ``<= t``): a gap equal to ``eps`` does *not* separate
clusters, so

    n(eps) = 1 + #{k : g_k > eps}.

Everything here costs ``O(n log n)`` time and ``O(n)`` memory (one sort plus a
union of adjacent runs), never the ``O(n^2)`` of a distance matrix, so spectra
with ``n = 12,000`` (or far more) eigenvalues, exact ties and huge near-zero
bulks are cheap.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "eigen_linkage",
    "merge_heights",
    "cluster_counts",
    "cluster_labels",
    "spectral_gaps",
]


def _as_spectrum(values: Any, *, name: str = "eigenvalues") -> NDArray[np.float64]:
    """Validate a 1-D, finite, non-empty real spectrum and return it as float64."""
    if hasattr(values, "detach"):  # torch tensor: any float dtype (bf16 too), any device
        if values.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"{name} must be finite, found {bad} NaN/inf value(s)")
    return array


def _as_eps(eps: Any, *, name: str = "eps") -> NDArray[np.float64]:
    """Validate resolutions: real, non-NaN, non-negative (``+inf`` is allowed)."""
    array = np.asarray(eps)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"{name} must be real, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if np.any(np.isnan(array)):
        raise ValueError(f"{name} must not be NaN")
    if np.any(array < 0):
        raise ValueError(f"{name} must be >= 0, got min {float(array.min())!r}")
    return array


def _sorted_gaps(spectrum: NDArray[np.float64]) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Stable sort order of the spectrum and its consecutive gaps (length n-1)."""
    order = np.argsort(spectrum, kind="stable")
    gaps = np.diff(spectrum[order])
    return order, gaps


def eigen_linkage(eigenvalues: ArrayLike) -> NDArray[np.float64]:
    """Single-linkage dendrogram of a spectrum as a scipy linkage matrix, in O(n log n).

    Args:
        eigenvalues: ndarray[n] (or anything ``np.asarray`` accepts, incl. a CPU
            torch tensor), real and finite, ``n >= 2``. Ties are allowed.

    Returns:
        Z: ndarray[n-1, 4] in :func:`scipy.cluster.hierarchy.linkage` format.
        Observations ``0..n-1`` are the eigenvalues in INPUT order; row ``i``
        creates cluster ``n + i`` by merging clusters ``Z[i, 0] < Z[i, 1]`` at
        height ``Z[i, 2]`` and ``Z[i, 3]`` is the new cluster's size.

    Maths:
        Sort the spectrum (stably), ``s = sort(eigenvalues)``, with gaps
        ``g_k = s_{k+1} - s_k``.  The single-linkage minimum spanning tree of
        points on a line is the chain of consecutive points, so Kruskal's
        algorithm reduces to visiting the gaps in ascending order and joining
        the two runs of sorted eigenvalues that meet at gap ``k``.  Merge heights
        are therefore the sorted gaps (the matrix is monotonic), and the
        cophenetic distance of two eigenvalues is the largest gap between them.

        This equals ``scipy.cluster.hierarchy.linkage(eigenvalues[:, None],
        "single")`` in merge heights, cophenetic distances and every flat
        clustering.  When several gaps are equal the order of the tied merges
        (and hence the cluster ids ``>= n``) may differ from scipy's; here tied
        gaps are merged left to right in eigenvalue order.

    Raises:
        ValueError: if ``eigenvalues`` is not 1-D, has fewer than 2 values, or
            holds NaN/inf (scipy's own ``linkage`` also refuses ``n = 1``).
        TypeError: if ``eigenvalues`` is not real.
    """
    spectrum = _as_spectrum(eigenvalues)
    n = spectrum.size
    if n < 2:
        raise ValueError(f"eigenvalues must hold at least 2 values to form a linkage, got n={n}")
    order, gaps = _sorted_gaps(spectrum)
    # Stable sort: equal gaps are merged left to right, a deterministic tie rule.
    merge_positions = np.argsort(gaps, kind="stable")

    # Runs of sorted positions [a, b] are tracked by their two ends only:
    # run_start[b] = a and run_end[a] = b, and run_id[a] is the run's cluster id.
    # Plain Python lists: scalar access on them is several times faster than on arrays.
    run_start = list(range(n))
    run_end = list(range(n))
    run_id = order.tolist()  # a singleton run at sorted position p is observation order[p]
    first = [0] * (n - 1)
    second = [0] * (n - 1)
    sizes = [0] * (n - 1)
    for step, k in enumerate(merge_positions.tolist()):
        a = run_start[k]  # left run is [a, k]
        b = run_end[k + 1]  # right run is [k+1, b]
        left_id = run_id[a]
        right_id = run_id[k + 1]
        if left_id < right_id:
            first[step], second[step] = left_id, right_id
        else:
            first[step], second[step] = right_id, left_id
        sizes[step] = b - a + 1
        run_id[a] = n + step
        run_end[a] = b
        run_start[b] = a

    linkage = np.empty((n - 1, 4), dtype=np.float64)
    linkage[:, 0] = first
    linkage[:, 1] = second
    linkage[:, 2] = gaps[merge_positions]
    linkage[:, 3] = sizes
    return linkage


def merge_heights(eigenvalues: ArrayLike) -> NDArray[np.float64]:
    """Merge heights of the eigenvalue dendrogram: the sorted consecutive gaps.

    Args:
        eigenvalues: ndarray[n], real and finite, ``n >= 1``.

    Returns:
        heights: ndarray[n-1], ascending; equal to ``eigen_linkage(eigenvalues)[:, 2]``
        (empty for ``n = 1``).
    """
    spectrum = _as_spectrum(eigenvalues)
    return np.sort(np.diff(np.sort(spectrum)))


def cluster_counts(eigenvalues: ArrayLike, eps: ArrayLike) -> NDArray[np.int64]:
    """Number of single-linkage clusters n(eps) of a spectrum at each resolution.

    Args:
        eigenvalues: ndarray[n], real and finite, ``n >= 1``.
        eps: resolutions, any shape (scalar allowed), each ``>= 0``; ``+inf`` is
            allowed (one cluster).

    Returns:
        counts: int64 ndarray with the shape of ``eps`` (shape ``()`` for a
        scalar ``eps``), ``counts[...] = 1 + #{k : g_k > eps[...]}`` where ``g_k``
        are the consecutive gaps of the sorted spectrum.  A gap exactly equal to
        ``eps`` does not split (same as ``fcluster(Z, t=eps, criterion="distance")``).

    Cost:
        ``O((n + m) log n)`` for ``m`` resolutions: a sort of the gaps and one
        ``searchsorted``.
    """
    spectrum = _as_spectrum(eigenvalues)
    resolutions = _as_eps(eps)
    sorted_gaps = np.sort(np.diff(np.sort(spectrum)))
    # Gaps <= eps lie left of the "right" insertion point; the rest split clusters.
    n_not_splitting = np.searchsorted(sorted_gaps, resolutions, side="right")
    counts = 1 + (sorted_gaps.size - n_not_splitting)
    return np.asarray(counts, dtype=np.int64).reshape(resolutions.shape)


def cluster_labels(eigenvalues: ArrayLike, eps: float) -> NDArray[np.int64]:
    """Flat single-linkage clusters of a spectrum at one resolution ``eps``.

    Args:
        eigenvalues: ndarray[n], real and finite, ``n >= 1``.
        eps: resolution, a real scalar ``>= 0`` (``+inf`` gives one cluster).

    Returns:
        labels: int64 ndarray[n], one label per eigenvalue in INPUT order.
        Labels run over ``0 .. n(eps)-1`` and are numbered in increasing
        eigenvalue order (label 0 holds the smallest eigenvalues).  Two
        eigenvalues share a label iff no consecutive gap ``> eps`` lies between
        them, i.e. the same partition as
        ``fcluster(linkage(eigenvalues[:, None], "single"), t=eps, criterion="distance")``
        (whose label numbering differs).
    """
    spectrum = _as_spectrum(eigenvalues)
    resolution = _as_eps(eps)
    if resolution.ndim != 0:
        raise ValueError(f"eps must be a scalar, got shape {resolution.shape}")
    order, gaps = _sorted_gaps(spectrum)
    sorted_labels = np.zeros(spectrum.size, dtype=np.int64)
    # A new cluster starts after every gap that is strictly larger than eps.
    np.cumsum(gaps > float(resolution), out=sorted_labels[1:])
    labels = np.empty_like(sorted_labels)
    labels[order] = sorted_labels
    return labels


def spectral_gaps(eigenvalues: ArrayLike, top: int = 10) -> NDArray[np.float64]:
    """The ``top`` largest gaps between consecutive distinct eigenvalues.

    Args:
        eigenvalues: ndarray[n], real and finite, ``n >= 1``.
        top: how many gaps to return, an integer ``>= 1``.

    Returns:
        gaps: ndarray[k, 3] with rows ``(gap, lower eigenvalue, upper eigenvalue)``,
        ``gap = upper - lower > 0``, sorted by decreasing gap (equal gaps: lower
        eigenvalue ascending).  Only gaps between *distinct* consecutive values
        count (a tie is not a gap), so ``k = min(top, #distinct values - 1)``,
        which may be less than ``top`` (``k = 0`` for a constant spectrum).
        These are the branch points of the dendrogram, highest first.
    """
    spectrum = _as_spectrum(eigenvalues)
    if isinstance(top, (bool, np.bool_)) or not isinstance(top, numbers.Integral):
        raise TypeError(f"top must be an integer, got {type(top).__name__}")
    if top < 1:
        raise ValueError(f"top={top} must be >= 1")
    distinct = np.unique(spectrum)  # sorted
    gaps = np.diff(distinct)
    # Stable sort of -gap: largest first, equal gaps in increasing eigenvalue order.
    chosen = np.argsort(-gaps, kind="stable")[: int(top)]
    return np.column_stack([gaps[chosen], distinct[chosen], distinct[chosen + 1]])
