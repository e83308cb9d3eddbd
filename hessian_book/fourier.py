"""Fourier tools for models of addition modulo an odd ``p`` (Nanda et al. 2023, "Progress measures for grokking via
mechanistic interpretability").

A function on the tokens ``0, …, p−1`` is a vector of length ``p``; :func:`fourier_basis` gives the real orthonormal
basis of such vectors made of a constant and one cosine and one sine per frequency ``k = 1, …, (p−1)/2``. With it:

* :func:`fourier_norms` splits a per-token matrix (the token embedding ``W_E`` without the ``=`` row, or the
  unembedding ``W_U`` transposed) into its constant part and one part per frequency, and returns their norms;
* :func:`frequency_shares` takes the activations of ``n`` neurons over all ``p²`` inputs ``(a, b)``, transforms each
  neuron in both inputs, and returns the share of each neuron's centred variance that each frequency explains;
  :func:`neuron_frequencies` assigns each neuron its best frequency, and :func:`key_frequencies` lists the
  frequencies that explain at least a threshold of some neuron's variance. The default threshold
  (:func:`key_frequency_threshold`) is the larger of a majority (0.5) and a noise bound derived from the Beta
  distribution, so that pure noise essentially never yields a key frequency;
* :func:`frequency_projector` is the orthogonal projector in token space onto chosen frequencies;
* :func:`gini` measures how concentrated a non-negative vector (for instance the frequency norms) is.

All results are float64 (integer tensors and Python lists for frequencies). Frequencies are numbered as in the
basis: index ``0`` is the constant, ``k`` is the frequency whose cosine and sine are rows ``2k − 1`` and ``2k``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real

import torch
from torch import Tensor

__all__ = ["fourier_basis", "fourier_norms", "frequency_shares", "neuron_frequencies", "key_frequencies",
           "key_frequency_threshold", "frequency_projector", "gini", "MAJORITY_SHARE", "NOISE_ALPHA"]

#: Smallest default share for a key frequency: the frequency must explain the majority of a neuron's variance.
MAJORITY_SHARE = 0.5
#: Default family-wise probability that pure noise yields any key frequency (see :func:`key_frequency_threshold`).
NOISE_ALPHA = 1e-6
# Neurons whose centred RMS is at most this fraction of their largest absolute activation count as dead (constant).
_DEAD_RTOL = 1e-10
# Rounding slack when comparing shares with a threshold (a share that should be exactly 1 may come out 1 − 1e-16).
_SHARE_SLACK = 1e-12


def _check_p(p, *, name: str = "p") -> int:
    """Return ``p`` as an ``int`` after checking that it is an odd integer ``>= 3``."""
    if isinstance(p, bool) or not isinstance(p, Integral):
        raise TypeError(f"{name} must be an odd integer >= 3, got {name}={p!r} of type {type(p).__name__}")
    p = int(p)
    if p < 3 or p % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 3 (one cosine and one sine per frequency), got {name}={p}")
    return p


def fourier_basis(p: int, *, device: torch.device | str | None = None) -> Tensor:
    """The real orthonormal Fourier basis of functions on ``Z/p``, one basis vector per row.

    Rows, for ``x = 0, …, p−1`` and ``K = (p−1)/2``::

        row 0       1 / sqrt(p)                         (constant)
        row 2k − 1  sqrt(2/p) · cos(2π k x / p)         k = 1, …, K
        row 2k      sqrt(2/p) · sin(2π k x / p)         k = 1, …, K

    so the order is constant, cos 1, sin 1, cos 2, sin 2, …, cos K, sin K. For odd ``p`` these ``p`` rows are
    orthonormal (``F @ F.T = I``); for even ``p`` the frequency ``p/2`` has no sine and the basis would not be of
    this form, so even ``p`` is rejected.

    Args:
        p: the modulus, an odd integer ``>= 3``.
        device: where to build the basis (default: CPU).

    Returns:
        ``F``, float64 tensor of shape ``[p, p]``; ``F[i, x]`` is basis function ``i`` at token ``x``.

    Raises:
        ValueError: ``p`` is even or smaller than 3 (the message names ``p=``).
        TypeError: ``p`` is not an integer.
    """
    p = _check_p(p)
    x = torch.arange(p, dtype=torch.float64, device=device)
    k = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64, device=device)
    angle = 2 * math.pi * k[:, None] * x[None, :] / p                       # [K, p]
    scale = math.sqrt(2.0 / p)
    trig = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)        # [K, 2, p]: cos k, sin k
    constant = torch.full((1, p), 1.0 / math.sqrt(p), dtype=torch.float64, device=device)
    return torch.cat([constant, scale * trig.reshape(p - 1, p)], dim=0)


def _pair_sum(x: Tensor, *, dim: int) -> Tensor:
    """Sum the cos and sin entries of each frequency along ``dim`` (size ``p`` → ``(p + 1) // 2``)."""
    x = x.movedim(dim, 0)
    return torch.cat([x[:1], x[1::2] + x[2::2]], dim=0).movedim(0, dim)


def _as_float64(x, *, name: str) -> Tensor:
    """``x`` as a finite float64 tensor (on its own device if it already is a tensor)."""
    t = torch.as_tensor(x)
    if t.is_complex():
        raise ValueError(f"{name} must be real, got a complex tensor of dtype {t.dtype}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite entries (nan or inf)")
    return t


def fourier_norms(W, p: int) -> Tensor:
    """Norm of a per-token matrix's constant part and of its part at each frequency.

    ``W`` has one row per token ``0, …, p−1``: the token embedding ``W_E`` without the ``=`` row (shape
    ``[p, d_model]``), the unembedding transposed ``W_U.T`` (shape ``[p, d_model]``), or a single vector ``[p]``.
    In the basis ``F`` of :func:`fourier_basis` the coefficients are ``C = F @ W`` (shape ``[p, d]``); the result is

        norms[0] = ||C[0]||,    norms[k] = ||C[2k − 1 : 2k + 1]||_F    (cos k and sin k rows together).

    Because ``F`` is orthogonal, ``(norms ** 2).sum() == ||W||_F²``.

    Args:
        W: tensor or array of shape ``[p, d]`` or ``[p]``, real and finite.
        p: the modulus, an odd integer ``>= 3``; must equal ``W.shape[0]``.

    Returns:
        float64 tensor of shape ``[(p + 1) // 2]``: index 0 the constant, index ``k`` frequency ``k``.

    Raises:
        ValueError: ``p`` is invalid, or ``W`` is not 1-D/2-D with ``p`` rows, or has non-finite entries.
    """
    p = _check_p(p)
    W = _as_float64(W, name="W")
    if W.ndim == 1:
        W = W[:, None]
    if W.ndim != 2 or W.shape[0] != p:
        raise ValueError(f"W must have shape [p, d] or [p] with one row per token, got W.shape={tuple(W.shape)} "
                         f"for p={p} (drop the '=' row of W_E; transpose W_U)")
    C = fourier_basis(p, device=W.device) @ W                               # [p, d]
    power = _pair_sum((C ** 2).sum(dim=1), dim=0)                           # [(p+1)/2]
    return power.sqrt()


def _check_activations(activations) -> Tensor:
    """``activations`` as a float64 tensor of shape ``[p, p, n]`` with odd ``p >= 3`` and ``n >= 1``."""
    A = _as_float64(activations, name="activations")
    if A.ndim != 3 or A.shape[0] != A.shape[1] or A.shape[2] == 0:
        raise ValueError(f"activations must have shape [p, p, n] (indexed by a, b, neuron), "
                         f"got activations.shape={tuple(A.shape)}")
    _check_p(A.shape[0], name="p (activations.shape[0])")
    return A


def frequency_shares(activations) -> Tensor:
    """Share of each neuron's centred variance that each frequency explains.

    ``activations[a, b, j]`` is neuron ``j`` on input ``(a, b)``, over all ``p²`` inputs. Each neuron is centred
    (its mean over the ``p²`` inputs removed) and transformed in both inputs with the basis ``F`` of
    :func:`fourier_basis`: ``C_j = F @ A_j @ F.T`` (shape ``[p, p]``; ``C_j[0, 0] = 0`` after centring). Frequency
    ``k >= 1`` owns the components whose frequencies in ``(a, b)`` are ``(k, 0)``, ``(0, k)`` and ``(k, k)``: the
    1-D terms ``cos/sin(k a)`` (2 components), ``cos/sin(k b)`` (2) and the products
    ``cos/sin(k a) · cos/sin(k b)`` (4), 8 of the ``p² − 1`` centred components. Its share is the sum of their
    squares over ``||C_j||_F²`` (= the neuron's centred sum of squares). Components mixing two different non-zero
    frequencies belong to no frequency, so a neuron's shares sum to at most 1.

    Dead neurons (constant over all inputs, up to a relative tolerance of 1e-10 of their largest absolute value)
    explain nothing: all their shares are 0.

    Args:
        activations: tensor or array of shape ``[p, p, n]`` (odd ``p >= 3``), real and finite.

    Returns:
        float64 tensor ``shares`` of shape ``[n, (p + 1) // 2]``; ``shares[j, k]`` is the share of neuron ``j``
        explained by frequency ``k``. Column 0 (the constant) is 0 by construction, so the column index is the
        frequency.

    Raises:
        ValueError: ``activations`` has the wrong shape, an even ``p`` or ``p < 3``, or non-finite entries.
    """
    A = _check_activations(activations)
    p, _, n = A.shape
    F = fourier_basis(p, device=A.device)
    centred = A - A.mean(dim=(0, 1), keepdim=True)
    half = (F @ centred.reshape(p, p * n)).reshape(p, p, n)                 # transform in a: [i, b, j]
    C = F @ half                                                            # then in b:      [i, y, j]
    power = _pair_sum(_pair_sum(C ** 2, dim=0), dim=1)                      # by frequency pair: [f, g, n]
    total = power.sum(dim=(0, 1)) - power[0, 0]                             # [n]
    own = power[1:, 0] + power[0, 1:] + torch.diagonal(power, dim1=0, dim2=1).T[1:]   # [K, n]
    rms = (total / p ** 2).sqrt()                                           # centred RMS (F ⊗ F orthogonal)
    alive = (rms > _DEAD_RTOL * A.abs().amax(dim=(0, 1))) & (total > 0)
    shares = torch.zeros(n, (p + 1) // 2, dtype=torch.float64, device=A.device)
    shares[alive, 1:] = (own[:, alive] / total[alive]).T.clamp(0.0, 1.0)
    return shares


def neuron_frequencies(activations) -> tuple[Tensor, Tensor]:
    """Each neuron's best frequency and the share of its centred variance that frequency explains.

    Args:
        activations: tensor or array of shape ``[p, p, n]`` (see :func:`frequency_shares`).

    Returns:
        ``(frequency, share)``: int64 tensor of shape ``[n]`` with the frequency ``k >= 1`` of largest share, and
        float64 tensor of shape ``[n]`` with that share. Dead neurons get frequency 0 and share 0.

    Raises:
        ValueError: as :func:`frequency_shares`.
    """
    shares = frequency_shares(activations)
    share, frequency = shares.max(dim=1)
    frequency = torch.where(share > 0, frequency, torch.zeros_like(frequency))
    return frequency, share


def key_frequency_threshold(p: int, n_neurons: int, *, alpha: float = NOISE_ALPHA,
                            floor: float = MAJORITY_SHARE) -> float:
    """The default share a frequency must explain of some neuron's variance to be a key frequency.

    Returns ``max(floor, t_noise)`` where ``t_noise`` bounds what pure noise can reach.

    **Noise bound.** Let a neuron be i.i.d. Gaussian noise over the ``p²`` inputs. Centring removes one direction;
    in the orthonormal basis ``F ⊗ F`` the remaining ``p² − 1`` coefficients are i.i.d. ``N(0, σ²)``, so the share
    of the 8 components that a frequency owns (see :func:`frequency_shares`) is
    ``χ²₈ / (χ²₈ + χ²_{p²−9}) ~ Beta(4, (p² − 9)/2)``, with mean ``8/(p² − 1)`` (6.3e-4 at ``p = 113``). A union
    bound over the ``n_neurons · (p − 1)/2`` (neuron, frequency) pairs makes ``P(any share >= t) <= alpha`` for

        t_noise = Beta(4, (p² − 9)/2) upper quantile at  alpha / (n_neurons · (p − 1)/2).

    With ``alpha = 1e-6``: ``t_noise`` = 0.0051 at ``p = 113, n = 512``, 0.0055 at ``p = 113, n = 4096``, 0.0018 at
    ``p = 199, n = 4096``, 0.21 at ``p = 17, n = 4096``, 0.43 at ``p = 11, n = 4096``, 0.78 at ``p = 7`` and 0.97
    at ``p = 5``. For ``p = 3`` the single frequency owns all 8 centred components, every live neuron has share 1
    and no threshold can separate it from noise: ``t_noise`` is 1 there.

    **Majority floor.** i.i.d. noise is the weakest null: a neuron that reads the token embeddings without any
    frequency preference is additive, ``f(a) + g(b)``, and then a frequency's share is ``Beta(2, p − 3)``, whose
    1e-6 family-wise bound is 0.24 at ``p = 113`` and 0.43 at ``p = 53`` (``n = 4096``). Rectification also puts
    power at twice the frequency: ``ReLU(cos(w_k (a + b)))`` has share 0.84 at ``k`` and 0.15 at ``2k``, 0.61
    and 0.30 when a bias makes it fire a third of the time. Requiring the majority, ``floor = 0.5``, is above both
    nulls for ``p >= 53``, lets each neuron vouch for at most one frequency (shares of different frequencies use
    disjoint components and sum to at most 1), never calls the harmonic of a neuron whose fundamental dominates,
    and keeps the single-frequency neurons of trained models (``ReLU(cos(w a) + cos(w b))``: 0.96; shares of
    Nanda et al.'s key-frequency neurons are typically well above 0.5, most above 0.85).

    Args:
        p: the modulus, an odd integer ``>= 3``.
        n_neurons: number of neurons tested (``>= 1``).
        alpha: family-wise probability of a false key frequency under pure noise, in ``(0, 1)``.
        floor: smallest threshold returned, in ``[0, 1]``.

    Returns:
        The threshold, a float in ``[floor, 1]``.

    Raises:
        ValueError: ``p``, ``n_neurons``, ``alpha`` or ``floor`` out of range (the message names it).
    """
    from scipy.special import betainccinv

    p = _check_p(p)
    if isinstance(n_neurons, bool) or not isinstance(n_neurons, Integral) or n_neurons < 1:
        raise ValueError(f"n_neurons must be a positive integer, got n_neurons={n_neurons!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got alpha={alpha!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got floor={floor!r}")
    n_frequencies = (p - 1) // 2
    if p == 3:
        t_noise = 1.0
    else:
        t_noise = float(betainccinv(4.0, (p * p - 9) / 2.0, alpha / (int(n_neurons) * n_frequencies)))
    return max(float(floor), t_noise)


def key_frequencies(activations, *, threshold: float | None = None) -> list[int]:
    """The frequencies that explain at least ``threshold`` of some neuron's centred variance.

    Shares are those of :func:`frequency_shares` (components ``(k, 0)``, ``(0, k)``, ``(k, k)`` of the 2-D
    transform of the centred neuron); dead neurons are skipped.

    Args:
        activations: tensor or array of shape ``[p, p, n]`` (see :func:`frequency_shares`).
        threshold: share in ``(0, 1]``; default ``key_frequency_threshold(p, n)``, i.e. ``max(0.5, t_noise)``
            with ``t_noise`` the 1e-6 family-wise noise bound (0.5 for ``p >= 11`` and ``n`` up to thousands).
            Shares within 1e-12 below the threshold count as reaching it (rounding).

    Returns:
        Sorted list of the key frequencies (Python ints in ``1, …, (p − 1)/2``); empty if none.

    Raises:
        ValueError: ``activations`` is invalid (as :func:`frequency_shares`) or ``threshold`` is not in ``(0, 1]``.
    """
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, Real)
                                  or not 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be a share in (0, 1], got threshold={threshold!r}")
    shares = frequency_shares(activations)
    n, n_columns = shares.shape
    if threshold is None:
        threshold = key_frequency_threshold(2 * n_columns - 1, n)
    hit = (shares >= float(threshold) - _SHARE_SLACK).any(dim=0)
    hit[0] = False
    return [int(k) for k in torch.nonzero(hit).flatten().tolist()]


def frequency_projector(p: int, frequencies: Iterable[int], *, constant: bool = False,
                        device: torch.device | str | None = None) -> Tensor:
    """Orthogonal projector in token space onto the cosines and sines of the given frequencies.

    ``P = F_S.T @ F_S`` where ``F_S`` holds the rows ``2k − 1, 2k`` of :func:`fourier_basis` for each ``k`` in
    ``frequencies`` (and row 0 if ``constant``). ``P`` is symmetric, ``P @ P = P``, its trace is
    ``2 · |frequencies|`` (+1 with the constant), and for a per-token matrix ``W`` of shape ``[p, d]``,
    ``||P @ W||_F² = sum_k fourier_norms(W, p)[k]²`` over the chosen frequencies.

    Args:
        p: the modulus, an odd integer ``>= 3``.
        frequencies: integers in ``1, …, (p − 1)/2``; duplicates count once; may be empty.
        constant: also keep the constant function.
        device: where to build the projector (default: CPU).

    Returns:
        float64 tensor of shape ``[p, p]``.

    Raises:
        ValueError: ``p`` is invalid or a frequency is out of range or not an integer (the message names it).
    """
    p = _check_p(p)
    n_frequencies = (p - 1) // 2
    chosen = set()
    for k in frequencies:
        if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= int(k) <= n_frequencies:
            raise ValueError(f"frequencies must be integers in 1..{n_frequencies} for p={p}, got frequency {k!r}")
        chosen.add(int(k))
    rows = ([0] if constant else []) + [i for k in sorted(chosen) for i in (2 * k - 1, 2 * k)]
    F_S = fourier_basis(p, device=device)[rows]                              # [len(rows), p]
    return F_S.T @ F_S


def gini(x) -> float:
    """Gini coefficient of a non-negative vector: 0 when all entries are equal, ``1 − 1/n`` when one is non-zero.

    With the entries sorted ascending, ``x_(1) <= … <= x_(n)``::

        G = 2 · sum_i i · x_(i) / (n · sum_i x_i) − (n + 1) / n
          = sum_{i, j} |x_i − x_j| / (2 n · sum_i x_i).

    It is invariant under scaling ``x`` by a positive constant.

    Args:
        x: tensor, array or sequence of shape ``[n]``, ``n >= 1``, entries finite and ``>= 0``, not all 0.

    Returns:
        The coefficient, a float in ``[0, 1 − 1/n]``.

    Raises:
        ValueError: ``x`` is empty, not 1-D, has negative or non-finite entries, or sums to 0.
    """
    t = _as_float64(x, name="x")
    if t.ndim != 1:
        raise ValueError(f"x must be a 1-D vector, got x.shape={tuple(t.shape)}")
    n = t.numel()
    if n == 0:
        raise ValueError("x is empty; the Gini coefficient needs at least one entry")
    if (t < 0).any():
        raise ValueError(f"x must be non-negative, got min(x)={t.min().item()!r}")
    total = t.sum()
    if total <= 0:
        raise ValueError("x sums to 0; the Gini coefficient is undefined")
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=t.device)
    g = 2.0 * (ranks * torch.sort(t).values).sum() / (n * total) - (n + 1) / n
    return float(g.clamp(min=0.0))
