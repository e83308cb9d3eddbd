"""Comparing a partition of the parameters with the model's own structure (layers, tensors).

Used to read a Fiedler dendrogram: cut it into clusters, then ask how the clusters line up with the layers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import comb
from torch import nn

__all__ = ["parameter_labels", "adjusted_rand_index", "composition", "top_clusters", "largest_component"]


def parameter_labels(model: nn.Module, *, by: str = "layer") -> tuple[NDArray[np.int64], list[str]]:
    """A label per scalar parameter, in flattened ``model.parameters()`` order (the Hessian's index order).

    Args:
        model: the network.
        by: ``"tensor"`` (one label per parameter tensor, e.g. ``0.weight`` and ``0.bias`` apart) or ``"layer"``
            (tensors of one module together: the name without its last component, so ``0.weight`` and ``0.bias``
            are layer ``0``; a parameter held directly by the root module, like ``W_E``, is its own layer).
    Returns:
        ``labels: int64[P]`` and ``names: list[str]`` with ``names[labels[i]]`` naming parameter ``i``'s group, in
        order of first appearance.
    """
    if by not in ("layer", "tensor"):
        raise ValueError(f"by={by!r} must be 'layer' or 'tensor'")
    names: list[str] = []
    parts = []
    for name, param in model.named_parameters():
        group = name if by == "tensor" or "." not in name else re.sub(r"\.[^.]+$", "", name)
        if group not in names:
            names.append(group)
        parts.append(np.full(param.numel(), names.index(group), dtype=np.int64))
    return np.concatenate(parts), names


def largest_component(Z: ArrayLike) -> int:
    """Node id of the largest connected component of a :func:`hessian_core.fiedler_linkage` tree of a
    *disconnected* graph (``algebraic_connectivity == 0``).

    Such a tree joins its connected components at the disconnected height, strictly above every other merge; this
    returns the largest cluster among the children of those top merges. Only call it for a disconnected graph: in
    a connected one the top merge is an ordinary split. Use it with ``top_clusters(Z, k, root=...)`` to read the
    top splits of the largest component instead of a tree whose top merges only attach isolated parameters.
    """
    Z = np.asarray(Z, dtype=float)
    n = Z.shape[0] + 1
    top_rows = np.flatnonzero(Z[:, 2] == Z[:, 2].max())
    tops = {n + i for i in top_rows}
    children = [int(c) for c in Z[top_rows, :2].ravel() if int(c) not in tops]
    return max(children, key=lambda c: 1.0 if c < n else Z[c - n, 3])


def _as_labels(labels: ArrayLike, name: str) -> NDArray[np.int64]:
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of labels, got shape {array.shape}")
    return np.unique(array, return_inverse=True)[1].reshape(-1)


def adjusted_rand_index(labels_a: ArrayLike, labels_b: ArrayLike) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two partitions of the same items.

    1 for identical partitions (up to renaming), 0 in expectation for independent random ones, negative when they
    agree less than chance. Computed from the contingency table ``n_ij``::

        ARI = (sum_ij C(n_ij, 2) - E) / (max - E),  E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2),
        max = (sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2.

    If both partitions are trivial in the same way (``max == E``: e.g. both one cluster) the index is 1.
    """
    a, b = _as_labels(labels_a, "labels_a"), _as_labels(labels_b, "labels_b")
    if a.shape != b.shape:
        raise ValueError(f"labels_a and labels_b must label the same items, got {a.shape} and {b.shape}")
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    pairs = comb(table, 2).sum()
    rows, cols = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum()
    expected = rows * cols / comb(len(a), 2) if len(a) > 1 else 0.0
    maximum = 0.5 * (rows + cols)
    if maximum == expected:
        return 1.0
    return float((pairs - expected) / (maximum - expected))


def composition(clusters: ArrayLike, groups: ArrayLike, n_groups: int | None = None,
                cluster_order: Sequence[int] | None = None) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """For each cluster, the fraction of its members from each group (e.g. each layer).

    Args:
        clusters: ``int[P]`` cluster label of each item.
        groups: ``int[P]`` group label of each item, in ``[0, n_groups)``.
        n_groups: number of groups (default ``max(groups) + 1``).
        cluster_order: the cluster labels to report, in order (default: all, largest cluster first).
    Returns:
        ``fractions: float[C, n_groups]`` (rows sum to 1) and ``sizes: int[C]``, rows in ``cluster_order``.
    """
    clusters, groups = np.asarray(clusters), np.asarray(groups)
    if clusters.shape != groups.shape or clusters.ndim != 1:
        raise ValueError(f"clusters {clusters.shape} and groups {groups.shape} must be 1-D of the same length")
    n_groups = int(groups.max()) + 1 if n_groups is None else n_groups
    if groups.min() < 0 or groups.max() >= n_groups:
        raise ValueError(f"groups must lie in [0, n_groups={n_groups})")
    labels, sizes = np.unique(clusters, return_counts=True)
    if cluster_order is None:
        cluster_order = labels[np.argsort(-sizes, kind="stable")]
    fractions, out_sizes = [], []
    for label in cluster_order:
        members = groups[clusters == label]
        if members.size == 0:
            raise ValueError(f"cluster {label!r} has no members")
        fractions.append(np.bincount(members, minlength=n_groups) / members.size)
        out_sizes.append(members.size)
    return np.array(fractions), np.array(out_sizes)


def top_clusters(Z: ArrayLike, k: int, *, root: int | None = None) -> NDArray[np.int64]:
    """Cut a linkage into ``k`` clusters by undoing its top merges, highest first.

    Unlike ``fcluster(Z, k, "maxclust")``, which cuts at one height and returns fewer clusters when several merges
    tie at the top, this walks down the tree: starting from the root, it repeatedly splits the current cluster whose
    merge is highest (ties: the larger cluster first), so exactly ``min(k, P)`` clusters come out.

    Args:
        Z: ``[P-1, 4]`` scipy linkage.
        k: number of clusters wanted (>= 1).
        root: cut only the subtree under this node id (scipy numbering: ``P + row``); its members get labels in
            ``[0, k)``, every other item the label ``-1``. Default: the whole tree.
    Returns:
        ``int64[P]`` labels in ``[0, k)``, numbered in order of first appearance in ``0..P-1``.
    """
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or Z.shape[1] != 4:
        raise ValueError(f"Z must be a [P-1, 4] linkage matrix, got shape {Z.shape}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")
    n = Z.shape[0] + 1

    def size(node: int) -> float:
        return 1.0 if node < n else Z[node - n, 3]

    def height(node: int) -> float:
        return -np.inf if node < n else Z[node - n, 2]

    if root is None:
        root = 2 * n - 2
    if not 0 <= root <= 2 * n - 2:
        raise ValueError(f"root={root} must be a node id in [0, {2 * n - 2}]")
    clusters = [int(root)]
    while len(clusters) < min(k, int(size(root))):
        node = max(clusters, key=lambda c: (height(c), size(c)))
        clusters.remove(node)
        clusters += [int(Z[node - n, 0]), int(Z[node - n, 1])]
    labels = np.full(n, -1, dtype=np.int64)
    for label, node in enumerate(clusters):
        stack = [node]
        while stack:  # members of the subtree, iteratively (trees can be deep)
            c = stack.pop()
            if c < n:
                labels[c] = label
            else:
                stack += [int(Z[c - n, 0]), int(Z[c - n, 1])]
    # Renumber by first appearance, so labels do not depend on the order clusters were split.
    inside = labels >= 0
    _, first = np.unique(labels[inside], return_index=True)
    order = np.argsort(np.argsort(first))
    labels[inside] = order[labels[inside]]
    return labels
