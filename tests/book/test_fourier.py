"""Fourier tools for modular addition: the basis, per-frequency norms, key frequencies (planted cases and pure
noise against the Beta-derived threshold), the frequency projector and the Gini coefficient."""

import math

import numpy as np
import pytest
import torch

from hessian_book.fourier import (
    MAJORITY_SHARE, fourier_basis, fourier_norms, frequency_projector, frequency_shares, gini, key_frequencies,
    key_frequency_threshold, neuron_frequencies)

P = 113


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _planted_embedding(p, frequencies, d, seed):
    """``[p, d]``: each token's row is a random combination of cos/sin of the planted frequencies only."""
    g = _generator(seed)
    x = torch.arange(p, dtype=torch.float64)
    W = torch.zeros(p, d, dtype=torch.float64)
    for k in frequencies:
        w = 2 * math.pi * k / p
        W += torch.outer(torch.cos(w * x), torch.randn(d, generator=g, dtype=torch.float64))
        W += torch.outer(torch.sin(w * x), torch.randn(d, generator=g, dtype=torch.float64))
    return W


def _planted_neurons(p, frequencies, seed, noise=0.01):
    """``[p, p, n]`` activations: per planted frequency k (w = 2πk/p) the neurons
    ReLU(cos(w(a+b) + φ)), ReLU(cos(w a + φ1) + cos(w b + φ2)), cos(w a + φ1) cos(w b + φ2), plus 1% noise,
    and two dead neurons (all zero, constant 0.3)."""
    g = _generator(seed)
    a = torch.arange(p, dtype=torch.float64)[:, None]
    b = torch.arange(p, dtype=torch.float64)[None, :]
    neurons, truth = [], []
    for k in frequencies:
        w = 2 * math.pi * k / p
        for _ in range(2):
            phi = 2 * math.pi * torch.rand(3, generator=g, dtype=torch.float64)
            neurons += [torch.relu(torch.cos(w * (a + b) + phi[0])),
                        torch.relu(torch.cos(w * a + phi[1]) + torch.cos(w * b + phi[2])),
                        torch.cos(w * a + phi[1]) * torch.cos(w * b + phi[2])]
            truth += [k, k, k]
    A = torch.stack(neurons, dim=-1)
    A = A + noise * torch.randn(A.shape, generator=g, dtype=torch.float64)
    dead = torch.stack([torch.zeros(p, p, dtype=torch.float64), torch.full((p, p), 0.3, dtype=torch.float64)], -1)
    return torch.cat([A, dead], dim=-1), truth + [0, 0]


# ---------------------------------------------------------------- basis

@pytest.mark.parametrize("p", [3, 5, 7, P])
def test_basis_is_orthonormal_and_ordered(p):
    F = fourier_basis(p)
    assert F.shape == (p, p) and F.dtype == torch.float64
    assert torch.allclose(F @ F.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    x = torch.arange(p, dtype=torch.float64)
    assert torch.allclose(F[0], torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64), atol=1e-15, rtol=0)
    for k in range(1, (p - 1) // 2 + 1):
        assert torch.allclose(F[2 * k - 1], math.sqrt(2 / p) * torch.cos(2 * math.pi * k * x / p), atol=1e-12)
        assert torch.allclose(F[2 * k], math.sqrt(2 / p) * torch.sin(2 * math.pi * k * x / p), atol=1e-12)


@pytest.mark.parametrize("p", [4, 114, 2, 1, 0, -3])
def test_invalid_p_is_rejected_naming_p(p):
    with pytest.raises(ValueError, match=f"p={p}"):
        fourier_basis(p)
    with pytest.raises(ValueError, match=f"p={p}"):
        fourier_norms(torch.zeros(abs(p) + 1, 2), p)
    with pytest.raises(ValueError, match=f"p={p}"):
        frequency_projector(p, [])


def test_non_integer_p_is_rejected():
    for bad in (5.0, True, "5"):
        with pytest.raises(TypeError, match="p="):
            fourier_basis(bad)


# ---------------------------------------------------------------- norms

def test_fourier_norms_of_planted_embedding():
    planted = {3, 17, 41}
    W = _planted_embedding(P, planted, d=64, seed=0)
    norms = fourier_norms(W, P)
    assert norms.shape == ((P + 1) // 2,) and norms.dtype == torch.float64
    nonzero = {k for k in range(len(norms)) if norms[k] > 1e-10}
    assert nonzero == planted, f"nonzero at {sorted(nonzero)}"
    assert norms[sorted(planted)].min() > 1.0
    assert math.isclose((norms ** 2).sum().item(), (W ** 2).sum().item(), rel_tol=1e-12)
    # a constant offset shows up at index 0 only
    shifted = fourier_norms(W + 2.0, P)
    assert math.isclose(shifted[0].item(), 2.0 * math.sqrt(P * 64), rel_tol=1e-12)
    assert torch.allclose(shifted[1:], norms[1:], atol=1e-10)


def test_fourier_norms_parseval_on_random_matrix_and_vector():
    g = _generator(1)
    W = torch.randn(P, 32, generator=g, dtype=torch.float64)
    assert math.isclose((fourier_norms(W, P) ** 2).sum().item(), (W ** 2).sum().item(), rel_tol=1e-12)
    v = W[:, 0].numpy()                                     # a numpy vector [p] is accepted
    assert math.isclose((fourier_norms(v, P) ** 2).sum().item(), float((v ** 2).sum()), rel_tol=1e-12)
    # W_U transposed has the same layout; float32 input is promoted to float64
    assert fourier_norms(W.T.contiguous().T.float(), P).dtype == torch.float64


def test_fourier_norms_rejects_wrong_rows_naming_W():
    with pytest.raises(ValueError, match="W.shape=\\(114, 8\\)"):
        fourier_norms(torch.zeros(P + 1, 8), P)                 # W_E with the '=' row
    with pytest.raises(ValueError, match="W has non-finite"):
        fourier_norms(torch.full((P, 2), float("nan")), P)


# ---------------------------------------------------------------- key frequencies

def test_key_frequencies_of_planted_neurons():
    planted = [5, 14, 39]                  # rectification harmonics 10, 28, 78 ≡ -35 must not be called
    A, truth = _planted_neurons(P, planted, seed=2)
    assert key_frequencies(A) == planted
    frequency, share = neuron_frequencies(A)
    assert frequency.tolist() == truth
    alive = torch.tensor(truth) > 0
    assert share[alive].min() > 0.75, share
    assert share[~alive].tolist() == [0.0, 0.0]                 # dead neurons explain nothing
    # the product neurons live in the (k, k) block only
    assert share[2::3][: 2 * len(planted)].min() > 0.99
    shares = frequency_shares(A)
    assert shares.shape == (A.shape[-1], (P + 1) // 2)
    assert (shares[:, 0] == 0).all() and (shares.sum(dim=1) <= 1 + 1e-12).all()
    # the harmonic 2k of ReLU(cos(w(a+b)+φ)) holds ~0.15 of its variance: a key frequency only at a low threshold
    assert shares[0, 10] > 0.1
    assert set(key_frequencies(A, threshold=0.1)) == set(planted) | {10, 28, 35}


def test_key_frequencies_ignore_pure_noise():
    n = 512
    A = torch.randn(P, P, n, generator=_generator(3), dtype=torch.float64)
    shares = frequency_shares(A)[:, 1:]
    max_share = shares.max().item()
    threshold = key_frequency_threshold(P, n)
    noise_bound = key_frequency_threshold(P, n, floor=0.0)      # the Beta(4, (p²-9)/2) union bound alone
    assert threshold == MAJORITY_SHARE
    assert key_frequencies(A) == [], f"max share under noise {max_share:.3g} vs threshold {threshold:.3g}"
    # even the noise bound alone (no majority floor) is never reached: key_frequencies(A, threshold=noise_bound) == []
    assert max_share < noise_bound < threshold, \
        f"max share under noise {max_share:.3g} vs noise bound {noise_bound:.3g} (threshold {threshold:.3g})"
    # each frequency owns 8 of the p²-1 centred components: mean share 8/(p²-1), as Beta(4, (p²-9)/2)
    mean = shares.mean().item()
    assert abs(mean / (8 / (P * P - 1)) - 1) < 0.03, f"mean share {mean:.4g} vs 8/(p²-1) = {8 / (P * P - 1):.4g}"


def test_key_frequency_threshold_values():
    assert key_frequency_threshold(P, 512) == 0.5
    assert key_frequency_threshold(P, 512, floor=0.0) == pytest.approx(0.005135, rel=1e-3)
    assert key_frequency_threshold(199, 4096, floor=0.0) < key_frequency_threshold(P, 4096, floor=0.0) < 0.006
    # small p: noise alone can explain a lot, the Beta bound takes over from the majority floor
    assert 0.7 < key_frequency_threshold(7, 512) < 0.8
    assert key_frequency_threshold(3, 10) == 1.0
    # more tests (neurons) need a higher bound
    assert key_frequency_threshold(17, 64, floor=0.0) < key_frequency_threshold(17, 4096, floor=0.0)
    for kwargs, name in [({"n_neurons": 0}, "n_neurons="), ({"alpha": 0.0}, "alpha="), ({"floor": 1.5}, "floor=")]:
        args = {"p": P, "n_neurons": 8, **kwargs}
        p, n_neurons = args.pop("p"), args.pop("n_neurons")
        with pytest.raises(ValueError, match=name):
            key_frequency_threshold(p, n_neurons, **args)


def test_key_frequencies_at_p3_and_small_p():
    # p = 3: the one frequency owns every centred component of a live neuron
    A = torch.randn(3, 3, 4, generator=_generator(4), dtype=torch.float64)
    assert torch.allclose(frequency_shares(A)[:, 1], torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert key_frequencies(A) == [1]
    # p = 7, a planted frequency among noise neurons
    A, _ = _planted_neurons(7, [2], seed=5)
    assert key_frequencies(A) == [2]


def test_key_frequencies_validation():
    with pytest.raises(ValueError, match="activations.shape"):
        key_frequencies(torch.zeros(5, 7, 3))
    with pytest.raises(ValueError, match="p \\(activations.shape\\[0\\]\\)=6"):
        key_frequencies(torch.zeros(6, 6, 3))
    A, _ = _planted_neurons(7, [2], seed=5)
    for bad in (0.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="threshold="):
            key_frequencies(A, threshold=bad)


# ---------------------------------------------------------------- projector

def test_frequency_projector():
    planted = [3, 17, 41]
    Pr = frequency_projector(P, planted + [3])
    assert Pr.shape == (P, P) and Pr.dtype == torch.float64
    assert torch.allclose(Pr, Pr.T, atol=1e-13) and torch.allclose(Pr @ Pr, Pr, atol=1e-12)
    assert math.isclose(torch.trace(Pr).item(), 2 * len(planted), rel_tol=1e-12)
    W = _planted_embedding(P, planted, d=16, seed=6)
    assert torch.allclose(Pr @ W, W, atol=1e-11)
    R = torch.randn(P, 16, generator=_generator(7), dtype=torch.float64)
    norms = fourier_norms(R, P)
    assert math.isclose(((Pr @ R) ** 2).sum().item(), (norms[planted] ** 2).sum().item(), rel_tol=1e-12)
    with_constant = frequency_projector(P, planted, constant=True)
    assert math.isclose(torch.trace(with_constant).item(), 2 * len(planted) + 1, rel_tol=1e-12)
    assert torch.allclose(with_constant @ torch.ones(P, dtype=torch.float64), torch.ones(P, dtype=torch.float64))
    assert frequency_projector(P, []).abs().max() == 0
    for bad in (0, 57, -1, 2.0):
        with pytest.raises(ValueError, match="frequencies"):
            frequency_projector(P, [bad])


# ---------------------------------------------------------------- Gini

def test_gini():
    assert gini(torch.ones(10)) == pytest.approx(0.0, abs=1e-15)
    one_hot = np.zeros(7)
    one_hot[4] = 2.5
    assert gini(one_hot) == pytest.approx(1 - 1 / 7, abs=1e-15)
    # by hand: sum_{i,j} |x_i - x_j| = 2 (1 + 2 + 1) = 8, 2 n sum = 2·3·6 = 36
    assert gini([1.0, 2.0, 3.0]) == pytest.approx(8 / 36, abs=1e-15)
    assert gini([3.0, 0.0, 1.0, 2.0]) == pytest.approx(sum(abs(a - b) for a in [0, 1, 2, 3] for b in [0, 1, 2, 3])
                                                       / (2 * 4 * 6), abs=1e-15)
    x = torch.rand(50, generator=_generator(8), dtype=torch.float64)
    assert gini(x) == pytest.approx(gini(37.0 * x), abs=1e-14)
    assert gini([5.0]) == 0.0
    concentrated = fourier_norms(_planted_embedding(P, [3, 17, 41], d=64, seed=0), P)
    assert gini(concentrated) > 0.9


@pytest.mark.parametrize("bad, message", [([], "empty"), ([1.0, -0.5], "non-negative"), ([0.0, 0.0], "sums to 0"),
                                          ([[1.0, 2.0]], "1-D"), ([1.0, float("inf")], "non-finite")])
def test_gini_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        gini(bad)
