"""Subsamples of modular-addition training pairs that cover the task.

The Hessian of the grokking chapter is computed on a subsample of the training pairs. A plain seeded subsample
of 200 of the 3,831 pairs (p = 113) leaves some input tokens out entirely -- their embedding rows then get zero
Hessian rows (exact zero eigenvalues and a disconnected coupling graph) -- and misses some answer classes.
:func:`stratified_pairs` draws a subsample in which every token and every answer class appears;
:func:`coverage` says how well a subsample covers the task.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["stratified_pairs", "coverage"]


def _columns(inputs: Tensor, labels: Tensor, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a``, ``b`` and the labels as int64 numpy arrays, after checking shapes and ranges."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ValueError(f"p={p!r} must be an integer >= 2")
    if inputs.ndim != 2 or inputs.shape[1] not in (2, 3):
        raise ValueError(f"inputs must be [N, 2] or [N, 3] (a, b[, =]), got shape {tuple(inputs.shape)}")
    if labels.shape != (inputs.shape[0],):
        raise ValueError(f"labels {tuple(labels.shape)} must be [N] with N = {inputs.shape[0]}")
    a, b = inputs[:, 0].long().cpu().numpy(), inputs[:, 1].long().cpu().numpy()
    y = labels.long().cpu().numpy()
    for name, x in (("tokens", np.concatenate([a, b])), ("labels", y)):
        if x.size and (x.min() < 0 or x.max() >= p):
            raise ValueError(f"{name} must lie in [0, {p - 1}], found [{x.min()}, {x.max()}]")
    return a, b, y


def coverage(inputs: Tensor, labels: Tensor, p: int) -> dict:
    """How well pairs cover the task ``(a + b) mod p``.

    Args:
        inputs: ``LongTensor[N, 2 or 3]``, columns ``a, b`` (and the ``=`` token, ignored).
        labels: ``LongTensor[N]``, answer classes in ``0 … p - 1``.
        p: the modulus.
    Returns:
        ``{"n", "tokens", "classes", "min_per_class", "min_per_token", "missing_tokens", "missing_classes"}``:
        the number of pairs; how many of the ``p`` tokens appear as ``a`` or ``b``; how many of the ``p``
        classes appear among the labels; the smallest number of pairs of any class and of any token (0 when one
        is missing); the missing tokens and classes (ascending lists).
    """
    a, b, y = _columns(inputs, labels, p)
    per_token = np.bincount(a, minlength=p) + np.bincount(b[b != a], minlength=p)  # pairs holding the token
    per_class = np.bincount(y, minlength=p)
    return {"n": int(len(y)), "tokens": int((per_token > 0).sum()), "classes": int((per_class > 0).sum()),
            "min_per_class": int(per_class.min()), "min_per_token": int(per_token.min()),
            "missing_tokens": np.flatnonzero(per_token == 0).tolist(),
            "missing_classes": np.flatnonzero(per_class == 0).tolist()}


def stratified_pairs(inputs: Tensor, labels: Tensor, n: int, *, p: int, seed: int) -> Tensor:
    """``n`` distinct indices into the pairs such that every token ``0 … p - 1`` appears (as ``a`` or ``b``) and
    every answer class ``0 … p - 1`` appears among the labels.

    A greedy cover comes first: while some class or token is uncovered, pick a pair that covers an uncovered
    class and, among those, as many uncovered tokens as possible (a pair covers one class and up to two tokens);
    ties are broken at random. Since every pick covers a new class, the cover takes ``p`` picks when the
    tokens are covered along the way (always, in practice: the picks offer ``2p`` token slots for ``p`` tokens),
    and a few more otherwise. The remaining ``n - picks`` indices are drawn uniformly at random without
    replacement from the other pairs.

    Args:
        inputs: ``LongTensor[N, 2 or 3]``, columns ``a, b`` (and ``=``), e.g. the training split.
        labels: ``LongTensor[N]``.
        n: subsample size, ``p <= n <= N``.
        p: the modulus (tokens and classes are ``0 … p - 1``).
        seed: the random seed (a numpy generator; the result is deterministic given it).
    Returns:
        ``LongTensor[n]``, distinct indices, ascending.
    Raises:
        ValueError: ``n < p`` (then no subsample can hold every class) or ``n > N``; the pairs themselves miss
            tokens or classes (named); the cover needs more than ``n`` pairs.
    """
    a, b, y = _columns(inputs, labels, p)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n={n!r} must be an integer")
    if n < p:
        raise ValueError(f"n={n} is smaller than p={p}: a subsample of n pairs cannot cover all {p} answer classes")
    if n > len(y):
        raise ValueError(f"n={n} exceeds the {len(y)} pairs")
    whole = coverage(inputs, labels, p)
    if whole["missing_tokens"] or whole["missing_classes"]:
        raise ValueError(f"the {len(y)} pairs do not cover the task: missing tokens {whole['missing_tokens']}, "
                         f"missing classes {whole['missing_classes']}")

    rng = np.random.default_rng(seed)
    token_open = np.ones(p, dtype=np.int64)
    class_open = np.ones(p, dtype=np.int64)
    available = np.ones(len(y), dtype=bool)
    distinct = a != b
    picked: list[int] = []
    while True:
        new_tokens = token_open[a] + token_open[b] * distinct
        gain = np.where(available, 3 * class_open[y] + new_tokens, 0)  # a new class outranks two new tokens
        best = gain.max()
        if best == 0:
            break
        i = int(rng.choice(np.flatnonzero(gain == best)))
        picked.append(i)
        available[i] = False
        token_open[a[i]] = token_open[b[i]] = 0
        class_open[y[i]] = 0
    if len(picked) > n:
        raise ValueError(f"n={n}: the greedy cover of every token and class needed {len(picked)} pairs")
    rest = rng.choice(np.flatnonzero(available), size=n - len(picked), replace=False)
    return torch.from_numpy(np.sort(np.concatenate([np.array(picked, dtype=np.int64), rest.astype(np.int64)])))
