"""Nanda et al.'s progress measures: the residual stream against ``forward``, the closed-form key-frequency split
against brute-force projections, planted and random logits tables, a hand-built circuit model, and a randomly
initialised model run end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from hessian_book.circuit import (
    DIRECTIONS, all_pairs, embedding_gini, excluded_loss, excluded_loss_from_logits, logit_components, logits_table,
    mlp_activations, planted_circuit_model, progress_measures, residual_stream, restricted_loss,
    restricted_loss_from_logits, unembedding_gini)
from hessian_book.data import modular_addition_split
from hessian_book.fourier import fourier_basis
from hessian_book.models import ModAddTransformer


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _grid(p):
    i = torch.arange(p, dtype=torch.float64)
    return i[:, None, None], i[None, :, None], i[None, None, :]


def _perfect_circuit(p, alphas):
    """``L[a, b, c] = Σ_k α_k cos(w_k (a + b − c))``."""
    a, b, c = _grid(p)
    return sum(alpha * torch.cos(2 * math.pi * k / p * (a + b - c)) for k, alpha in alphas.items())


def _brute_force_restricted(L, p, frequencies, directions):
    """Orthogonal projection of the centred table onto explicitly built direction vectors (QR, no closed form)."""
    Lc = (L - L.mean(dim=2, keepdim=True)).reshape(-1)
    a, b, c = _grid(p)
    vectors = []
    for k in frequencies:
        w = 2 * math.pi * k / p
        if directions == "a+b-c":
            vectors += [torch.cos(w * (a + b - c)), torch.sin(w * (a + b - c))]
        else:  # cos/sin(w (a + b)) times an indicator of each class c
            for c0 in range(p):
                on = (c == c0).to(torch.float64)
                vectors += [torch.cos(w * (a + b)) * on, torch.sin(w * (a + b)) * on]
    V = torch.stack([v.expand(p, p, p).reshape(-1) for v in vectors], dim=1)
    Q, _ = torch.linalg.qr(V)
    return (Q @ (Q.T @ Lc)).reshape(p, p, p)


def _reference_style_restricted(L, p, frequencies):
    """The reference code's construction: for each class, project the [p², p] logits on the normalised
    ``(cos_a cos_b − sin_a sin_b)/√2`` and ``(sin_a cos_b + cos_a sin_b)/√2`` 2-D Fourier directions."""
    Fb = fourier_basis(p)
    flat = L.reshape(p * p, p)
    out = torch.zeros_like(flat)
    for k in frequencies:
        cc, ss = torch.outer(Fb[2 * k - 1], Fb[2 * k - 1]), torch.outer(Fb[2 * k], Fb[2 * k])
        sc, cs = torch.outer(Fb[2 * k], Fb[2 * k - 1]), torch.outer(Fb[2 * k - 1], Fb[2 * k])
        for u in ((cc - ss).reshape(-1) / math.sqrt(2), (sc + cs).reshape(-1) / math.sqrt(2)):
            out += u[:, None] @ (u[None, :] @ flat)
    return out.reshape(p, p, p)


def _random_model(p=11, d_model=8, d_mlp=16, n_heads=1, seed=0):
    return ModAddTransformer(p=p, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, seed=seed).double()


# ---------------------------------------------------------------------------------------------------------------
# Evaluating the model
# ---------------------------------------------------------------------------------------------------------------

def test_all_pairs_is_a_major():
    pairs = all_pairs(5)
    assert pairs.shape == (25, 3) and pairs.dtype == torch.long
    assert pairs[5 * 3 + 4].tolist() == [3, 4, 5]
    assert torch.equal(pairs[:, 0] * 5 + pairs[:, 1], torch.arange(25)) and (pairs[:, 2] == 5).all()


@pytest.mark.parametrize("n_heads, d_mlp", [(1, 16), (2, 16), (1, None)])
def test_residual_stream_reproduces_forward(n_heads, d_mlp):
    p = 7
    model = _random_model(p=p, n_heads=n_heads, d_mlp=d_mlp, seed=3)
    tokens = all_pairs(p)
    acts = residual_stream(model, tokens)
    torch.testing.assert_close(acts["logits"], model(tokens), rtol=0, atol=1e-12)
    assert acts["embed"].shape == (p * p, 3, 8) and acts["attn_pattern"].shape == (p * p, n_heads, 3)
    torch.testing.assert_close(acts["attn_pattern"].sum(-1), torch.ones(p * p, n_heads, dtype=torch.float64))
    torch.testing.assert_close(acts["resid_mid"], acts["embed"][:, -1] + acts["attn_out"], rtol=0, atol=1e-14)
    if d_mlp is None:
        assert "mlp_post" not in acts
        with pytest.raises(ValueError, match="d_mlp"):
            mlp_activations(model)
    else:
        assert torch.equal(acts["mlp_post"], torch.relu(acts["mlp_pre"]))
        torch.testing.assert_close(acts["resid_final"], acts["resid_mid"] + acts["mlp_out"], rtol=0, atol=1e-14)
        neurons = mlp_activations(model, p)
        assert neurons.shape == (p, p, d_mlp) and neurons.dtype == torch.float64
        assert torch.equal(neurons[2, 5], acts["mlp_post"][2 * p + 5])
    table = logits_table(model, p)
    assert table.shape == (p, p, p)
    torch.testing.assert_close(table[4, 1], model(torch.tensor([[4, 1, p]]))[0].detach(), rtol=0, atol=1e-12)


def test_model_argument_errors():
    model = _random_model(p=7)
    with pytest.raises(ValueError, match="p=11"):
        logits_table(model, 11)
    with pytest.raises(TypeError, match="model"):
        mlp_activations(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="tokens"):
        residual_stream(model, torch.zeros(4, 2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------
# The key-frequency split
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("directions", DIRECTIONS)
def test_components_sum_to_centred_logits_and_match_brute_force_projection(directions):
    p, frequencies = 7, [1, 3]
    L = torch.randn(p, p, p, generator=_generator(0), dtype=torch.float64) + _perfect_circuit(p, {1: 2.0, 3: -1.0})
    restricted, excluded = logit_components(L, frequencies, directions=directions)
    centred = L - L.mean(dim=2, keepdim=True)
    torch.testing.assert_close(restricted + excluded, centred, rtol=0, atol=1e-12)
    assert abs(float((restricted * excluded).sum())) < 1e-10
    torch.testing.assert_close(restricted, _brute_force_restricted(L, p, frequencies, directions), rtol=0, atol=1e-11)
    torch.testing.assert_close(restricted.mean(dim=(0, 1)), torch.zeros(p, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(restricted.mean(dim=2), torch.zeros(p, p, dtype=torch.float64), rtol=0, atol=1e-12)
    # the uncentred table has the same components (the per-input mean is orthogonal to every direction)
    torch.testing.assert_close(logit_components(centred, frequencies, directions=directions)[0], restricted,
                               rtol=0, atol=1e-12)


def test_a_plus_b_directions_match_the_reference_construction():
    p, frequencies = 7, [2, 3]
    L = torch.randn(p, p, p, generator=_generator(1), dtype=torch.float64)
    restricted, _ = logit_components(L, frequencies, directions="a+b")
    centred = L - L.mean(dim=2, keepdim=True)
    torch.testing.assert_close(restricted, _reference_style_restricted(centred, p, frequencies), rtol=0, atol=1e-12)
    # the a+b-c span sits inside the a+b span
    inner, _ = logit_components(L, frequencies, directions="a+b-c")
    again, _ = logit_components(inner, frequencies, directions="a+b")
    torch.testing.assert_close(again, inner, rtol=0, atol=1e-12)
    assert float(restricted.norm()) > float(inner.norm())


@pytest.mark.parametrize("directions", DIRECTIONS)
def test_planted_perfect_circuit_is_all_restricted(directions):
    p, alphas = 11, {2: 3.0, 5: 2.0}
    L = _perfect_circuit(p, alphas)
    restricted, excluded = logit_components(L, alphas, directions=directions)
    assert float(excluded.abs().max()) < 1e-12
    torch.testing.assert_close(restricted, L, rtol=0, atol=1e-12)
    # per-input offsets and a per-class bias leave the restricted loss equal to the full loss
    g = _generator(2)
    shifted = L + torch.randn(p, p, 1, generator=g, dtype=torch.float64) \
        + 0.5 * torch.randn(1, 1, p, generator=g, dtype=torch.float64)
    train = modular_addition_split(p, 0.4, seed=0)["train"]
    for inputs, labels in ((None, None), train):
        index = torch.arange(p * p) if inputs is None else inputs[:, 0] * p + inputs[:, 1]
        target = (index // p + index % p) % p if labels is None else labels
        full = float(F.cross_entropy(shifted.reshape(p * p, p)[index], target))
        got = restricted_loss_from_logits(shifted, alphas, inputs=inputs, labels=labels, directions=directions)
        assert got == pytest.approx(full, rel=1e-12, abs=1e-14)
    # without its key components the pure circuit leaves nothing: chance-level loss
    excluded_value = excluded_loss_from_logits(L, alphas, directions=directions)
    assert excluded_value == pytest.approx(math.log(p), abs=1e-12)
    assert restricted_loss_from_logits(L, [1], directions=directions) == pytest.approx(math.log(p), abs=1e-12)


def test_random_table_restricted_loss_is_near_chance():
    p, frequencies = 31, [1, 4, 9]
    L = torch.randn(p, p, p, generator=_generator(3), dtype=torch.float64)
    assert restricted_loss_from_logits(L, frequencies) == pytest.approx(math.log(p), abs=0.01)
    assert restricted_loss_from_logits(L, frequencies, directions="a+b") == pytest.approx(math.log(p), abs=0.05)
    full = float(F.cross_entropy(L.reshape(p * p, p), (torch.arange(p * p) // p + torch.arange(p * p) % p) % p))
    assert excluded_loss_from_logits(L, frequencies) == pytest.approx(full, abs=0.01)


def test_empty_frequencies_and_single_frequency_removal():
    p = 7
    L = torch.randn(p, p, p, generator=_generator(4), dtype=torch.float64)
    full = float(F.cross_entropy(L.reshape(p * p, p), (torch.arange(p * p) // p + torch.arange(p * p) % p) % p))
    assert excluded_loss_from_logits(L, []) == pytest.approx(full, rel=1e-12)
    assert restricted_loss_from_logits(L, [], bias_correction=False) == pytest.approx(math.log(p), rel=1e-12)
    # excluding one frequency = subtracting its own component
    restricted, _ = logit_components(L, [2])
    manual = float(F.cross_entropy((L - restricted).reshape(p * p, p),
                                   (torch.arange(p * p) // p + torch.arange(p * p) % p) % p))
    assert excluded_loss_from_logits(L, [2, 2]) == pytest.approx(manual, rel=1e-12)


def test_split_argument_errors():
    L = torch.zeros(7, 7, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="logits"):
        logit_components(torch.zeros(7, 7, 5), [1])
    with pytest.raises(ValueError, match="logits.shape"):
        logit_components(torch.zeros(6, 6, 6), [1])
    with pytest.raises(ValueError, match="frequenc"):
        logit_components(L, [4])
    with pytest.raises(ValueError, match="directions"):
        logit_components(L, [1], directions="a-b")
    with pytest.raises(ValueError, match="inputs"):
        restricted_loss_from_logits(L, [1], inputs=torch.tensor([[0, 7, 7]]))
    with pytest.raises(ValueError, match="labels"):
        excluded_loss_from_logits(L, [1], inputs=torch.tensor([[0, 1, 7]]), labels=torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

def test_random_model_progress_measures_are_finite_and_decompose_its_logits():
    p = 11
    model = _random_model(p=p, d_model=8, d_mlp=16, seed=5)
    split = modular_addition_split(p, 0.3, seed=1)
    out = progress_measures(model, p, train=split["train"], test=split["test"])
    assert set(out) == {"key_frequencies", "train_loss", "restricted_loss", "restricted_loss_all", "excluded_loss",
                        "gini_embedding", "gini_unembedding", "test_loss"}
    assert isinstance(out["key_frequencies"], list)
    assert all(math.isfinite(v) for k, v in out.items() if k != "key_frequencies")
    inputs, labels = split["train"]
    assert out["train_loss"] == pytest.approx(float(F.cross_entropy(model(inputs).detach(), labels)), rel=1e-12)
    # given frequencies are used as they are, on the model's real logits
    given = progress_measures(model, p, train=split["train"], frequencies=[3, 1, 3])
    assert given["key_frequencies"] == [1, 3]
    table = logits_table(model)
    restricted, excluded = logit_components(table, [1, 3])
    torch.testing.assert_close(restricted + excluded, table - table.mean(dim=2, keepdim=True), rtol=0, atol=1e-12)
    assert given["excluded_loss"] == pytest.approx(excluded_loss(model, p, [1, 3], inputs=inputs, labels=labels))
    assert given["restricted_loss_all"] == pytest.approx(restricted_loss(model, p, [1, 3]))
    for value in (out["gini_embedding"], out["gini_unembedding"]):
        assert 0.0 <= value <= 1 - 2 / (p - 1)
    with pytest.raises(ValueError, match="train"):
        progress_measures(model, p, train=split["train"][0])


def test_planted_circuit_model_recovers_its_frequencies():
    p, planted = 13, [2, 5]
    model = planted_circuit_model(p, planted, d_model=12, d_mlp=20, seed=0).double()
    table = logits_table(model)
    answers = (torch.arange(p)[:, None] + torch.arange(p)[None, :]) % p
    assert torch.equal(table.argmax(dim=2), answers)
    split = modular_addition_split(p, 0.3, seed=0)
    out = progress_measures(model, p, train=split["train"])
    assert out["key_frequencies"] == planted
    assert out["train_loss"] < 0.2
    assert out["restricted_loss"] < out["train_loss"]            # the key components carry the whole answer
    assert out["excluded_loss"] > math.log(p)                     # and without them nothing is left
    n = (p - 1) // 2
    assert out["gini_embedding"] == pytest.approx(1 - len(planted) / n, abs=1e-6)
    assert out["gini_unembedding"] == pytest.approx(1 - len(planted) / n, abs=1e-6)
    assert embedding_gini(model, constant=True) == pytest.approx(1 - len(planted) / (n + 1), abs=1e-6)
    assert unembedding_gini(model) == out["gini_unembedding"]
    with pytest.raises(ValueError, match="d_model"):
        planted_circuit_model(p, planted, d_model=7)
    with pytest.raises(ValueError, match="frequenc"):
        planted_circuit_model(p, [7])


def test_progress_measures_rejects_bad_frequencies_and_modulus():
    p = 7
    model = _random_model(p=p)
    train = modular_addition_split(p, 0.5, seed=0)["train"]
    with pytest.raises(ValueError, match="frequenc"):
        progress_measures(model, p, train=train, frequencies=[1.5])
    with pytest.raises(ValueError, match="p=9"):
        progress_measures(model, 9, train=train)
