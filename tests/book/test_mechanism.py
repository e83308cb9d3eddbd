"""hessian_book.mechanism on planted cases: a hand-built embedding with known frequencies, the planted circuit model
(whose ablation effects are known), curvature operators against dense references, probes on separable vs random
labels, and the random-subspace null."""

import numpy as np
import pytest
import torch
from torch import nn

from hessian_book.circuit import all_pairs, planted_circuit_model
from hessian_book.fourier import fourier_basis, fourier_norms
from hessian_book.mechanism import (ablate_subspace, block_masses, block_slices, bootstrap_interval,
                                    dominant_frequencies,
                                    component_effects, concept_labels, corrupt_a, curvature_eigenpairs, evaluate,
                                    frequency_ablation, frequency_rows, gauss_newton_operator,
                                    gradient_covariance_eigenpairs, intervened_logits, mlp_first_layer,
                                    mlp_layer_features, null_quantile, orthonormal_basis, probe_with_controls,
                                    random_block_basis, random_token_rows, ridge_probe, subspace_masses,
                                    token_masses, token_subspace_basis, transformer_components)
from hessian_book.models import ModAddMLP, ModAddTransformer
from hessian_core import full_hessian, gauss_newton

P, KEYS = 23, [3, 7]


@pytest.fixture(scope="module")
def planted():
    return planted_circuit_model(P, KEYS, seed=1)


def _all(p):
    tokens = all_pairs(p)
    return tokens, (tokens[:, 0] + tokens[:, 1]) % p


def test_planted_model_is_correct(planted):
    assert evaluate(planted, _all(P))["accuracy"] == 1.0


# ---- subspaces ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["W_E", "W_U"])
def test_token_subspace_basis_is_orthonormal_and_matches_fourier_norms(planted, block):
    rows = frequency_rows(P, [3])
    B = token_subspace_basis(planted, block, rows)
    n = dict(planted.named_parameters())[block].numel()
    assert B.shape == (n, 2 * planted.d_model)
    assert torch.allclose(B.T @ B, torch.eye(B.shape[1], dtype=torch.float64), atol=1e-12)
    # the squared norm of the block inside the frequency-3 subspace is fourier_norms' frequency-3 entry squared
    W = dict(planted.named_parameters())[block].detach().double()
    theta = W.reshape(-1)
    per_token = W[:P] if block == "W_E" else W.T
    assert float(((B.T @ theta) ** 2).sum()) == pytest.approx(float(fourier_norms(per_token, P)[3] ** 2), rel=1e-10)


def test_token_masses_equal_subspace_masses_with_the_basis(planted):
    rng = np.random.default_rng(0)
    n_params = sum(p.numel() for p in planted.parameters())
    V = rng.standard_normal((n_params, 4))
    sl = block_slices(planted)["W_E"]
    for rows in (frequency_rows(P, KEYS), random_token_rows(P, 4, rng)):
        B = token_subspace_basis(planted, "W_E", rows)
        expected = subspace_masses(V[sl], B) / (V[sl] ** 2).sum(0)
        assert np.allclose(token_masses(V, planted, "W_E", rows), expected, rtol=1e-10)


def test_random_token_rows_are_orthonormal_and_avoid_the_constant_and_the_excluded():
    rng = np.random.default_rng(1)
    exclude = frequency_rows(P, KEYS)
    Q = random_token_rows(P, 5, rng, exclude=exclude)
    assert torch.allclose(Q @ Q.T, torch.eye(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Q.sum(1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Q @ exclude.T, torch.zeros(5, 4, dtype=torch.float64), atol=1e-12)


def test_ablate_subspace_projects_out_and_is_idempotent(planted):
    B = random_block_basis(block_slices(planted)["W_U"].stop - block_slices(planted)["W_U"].start, 7,
                           np.random.default_rng(2))
    once = ablate_subspace(planted, "W_U", B)
    twice = ablate_subspace(once, "W_U", B)
    theta = once.W_U.detach().double().reshape(-1)
    assert float((B.T @ theta).abs().max()) < 1e-5  # float32 parameters
    assert torch.allclose(once.W_U, twice.W_U, atol=1e-6)
    assert torch.equal(once.W_E, planted.W_E) and not torch.equal(once.W_U, planted.W_U)


def test_frequency_ablation_of_the_planted_embedding(planted):
    """The planted W_E lives in the key frequencies' subspace: ablating it leaves chance accuracy, ablating random
    non-key frequencies is a no-op."""
    result = frequency_ablation(planted, KEYS, _all(P), block="W_E", n_draws=20, seed=0)
    assert result.clean["accuracy"] == 1.0
    assert result.key["accuracy"] <= 3 / P
    assert (result.random_accuracy == 1.0).all() and result.random_frequencies.shape == (20, 2)
    assert not set(result.random_frequencies.ravel()) & set(KEYS)
    assert result.below_every_draw


def test_hand_built_embedding_dominant_frequencies():
    """Vectors whose W_E part is a single frequency are assigned that frequency with share 1."""
    model = ModAddTransformer(p=P, d_model=4, n_heads=1, d_mlp=8, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    sl = block_slices(model)["W_E"]
    F = fourier_basis(P)
    V = np.zeros((n_params, 4))  # the fourth has no weight in W_E
    for i, k in enumerate([2, 5, 11]):
        W = torch.zeros(P + 1, 4, dtype=torch.float64)
        W[:P, i] = F[2 * k - 1] + 0.5 * F[2 * k]
        V[sl, i] = W.reshape(-1).numpy()
    V[sl.stop:sl.stop + 5] = 1.0  # weight outside W_E does not count
    freq, share = dominant_frequencies(V, model, "W_E")
    assert freq.tolist() == [2, 5, 11, 0] and np.allclose(share, [1.0, 1.0, 1.0, 0.0])


def test_the_null_passes_a_planted_subspace_and_not_a_random_one(planted):
    """A vector inside the key-frequency subspace scores above the null's 95th percentile; a random vector of the
    block does not (over a few seeds, at most its 5 % error rate)."""
    rng = np.random.default_rng(3)
    n_params = sum(p.numel() for p in planted.parameters())
    sl = block_slices(planted)["W_E"]
    key_rows = frequency_rows(P, KEYS)
    B = token_subspace_basis(planted, "W_E", key_rows).numpy()
    inside = np.zeros((n_params, 1))
    inside[sl, 0] = B @ rng.standard_normal(B.shape[1])
    share = token_masses(inside, planted, "W_E", key_rows)[0]
    null = [token_masses(inside, planted, "W_E", random_token_rows(P, 4, rng))[0] for _ in range(200)]
    assert share == pytest.approx(1.0) and null_quantile(null, share)[1]
    above = 0
    for _ in range(20):
        random_vector = np.zeros((n_params, 1))
        random_vector[sl, 0] = rng.standard_normal(sl.stop - sl.start)
        value = token_masses(random_vector, planted, "W_E", key_rows)[0]
        null = [token_masses(random_vector, planted, "W_E", random_token_rows(P, 4, rng))[0] for _ in range(100)]
        above += null_quantile(null, value)[1]
    assert above <= 4


def test_orthonormal_basis_drops_dependent_columns():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((30, 3))
    B = orthonormal_basis(np.concatenate([A, A[:, :1] + A[:, 1:2]], axis=1))
    assert B.shape == (30, 3) and torch.allclose(B.T @ B, torch.eye(3, dtype=torch.float64), atol=1e-12)


# ---- interventions --------------------------------------------------------------------------------------------

def test_intervention_with_the_clean_reference_changes_nothing(planted):
    tokens, _ = _all(P)
    groups = {"all neurons": list(range(planted.d_mlp))}
    clean = planted(tokens).double()
    from hessian_book.mechanism import _activations

    acts = _activations(planted, tokens)
    for c in transformer_components(planted, groups, KEYS):
        out = intervened_logits(planted, tokens, c, acts[c.site])
        assert torch.allclose(out, clean, atol=1e-4), c.name


def test_planted_component_effects(planted):
    """Known effects: mean-ablating attention or the embedding leaves chance accuracy; patching the embedding with
    a → a + 1 makes every answer wrong; the unembedding has no part outside the key frequencies, so ablating that part
    changes nothing; one frequency's neurons carry part of the correct logit and the other frequency still answers."""
    n_per = planted.d_mlp // len(KEYS)
    groups = {f"k{k}": list(range(i * n_per, (i + 1) * n_per)) for i, k in enumerate(KEYS)}
    components = transformer_components(planted, groups, KEYS)
    mean = {e.component: e for e in component_effects(planted, components, mode="mean", n_boot=200)}
    patch = {e.component: e for e in component_effects(planted, components, mode="patch", n_boot=200)}
    assert mean["attention"].accuracy_after <= 3 / P
    assert mean["embedding (a, b)"].accuracy_after <= 3 / P
    assert patch["embedding (a, b)"].accuracy_after == 0.0 and patch["embedding (a, b)"].accuracy_drop == 1.0
    other = mean["unembedding, other frequencies"]
    assert abs(other.accuracy_drop) == 0 and abs(other.logit_drop) < 1e-3
    for k in KEYS:
        e = mean[f"k{k}"]
        assert e.logit_low > 0 and e.accuracy_after > 0.9
        u = mean[f"unembedding, frequency {k}"]
        assert u.logit_drop == pytest.approx(e.logit_drop, rel=0.2)  # the same frequency, read at both ends
    assert patch["attention"].accuracy_after == 0.0  # attention carries the corrupted a


def test_corrupt_a_wraps():
    tokens = torch.tensor([[0, 1, 5], [4, 2, 5]])
    assert corrupt_a(tokens, 5).tolist() == [[1, 1, 5], [0, 2, 5]]


def test_bootstrap_interval_contains_the_mean_and_narrows():
    rng = np.random.default_rng(5)
    small, large = rng.standard_normal(50), rng.standard_normal(5000)
    lo_s, hi_s = bootstrap_interval(small, n_boot=500)
    lo_l, hi_l = bootstrap_interval(large, n_boot=500)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5


# ---- curvature ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_case():
    model = ModAddTransformer(p=5, d_model=4, n_heads=1, d_mlp=4, seed=0)
    tokens = all_pairs(5)[:12]
    return model, (tokens, (tokens[:, 0] + tokens[:, 1]) % 5)


def test_gauss_newton_operator_equals_the_dense_reference(tiny_case):
    model, batch = tiny_case
    G = gauss_newton(model, nn.CrossEntropyLoss(), batch).numpy()
    op = gauss_newton_operator(model, batch)
    X = np.random.default_rng(6).standard_normal((G.shape[0], 3))
    assert np.allclose(op.matmat(X), G @ X, atol=1e-10 * np.abs(G).max())


def test_gradient_covariance_equals_the_per_sample_reference(tiny_case):
    model, (x, y) = tiny_case
    m = ModAddTransformer(p=5, d_model=4, n_heads=1, d_mlp=4, seed=0).double()
    grads = []
    for i in range(len(y)):
        m.zero_grad()
        nn.functional.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    G = torch.stack(grads).numpy()
    C = np.cov(G.T, bias=True)
    values, vectors = gradient_covariance_eigenpairs(model, (x, y), 3)
    assert np.allclose(values, np.linalg.eigvalsh(C)[::-1][:3], rtol=1e-8, atol=1e-12)
    assert np.allclose(C @ vectors, vectors * values, atol=1e-9)


def test_curvature_eigenpairs_against_dense_matrices(tiny_case):
    model, batch = tiny_case
    H = full_hessian(model, nn.CrossEntropyLoss(), batch).numpy()
    k = 3
    h = curvature_eigenpairs(model, batch, "hessian", k=k, tol=1e-10)
    exact = np.linalg.eigvalsh(H)
    assert np.allclose(h.top_values, exact[::-1][:k], atol=1e-8) and np.allclose(h.bottom_values, exact[:k], atol=1e-8)
    assert np.allclose(H @ h.top_vectors, h.top_vectors * h.top_values, atol=1e-6)
    # block-diagonal Hessian per component: couplings between components removed
    slices = block_slices(model)
    from hessian_book.mechanism import COMPONENT_BLOCKS

    mask = np.zeros_like(H, dtype=bool)
    for tensors in COMPONENT_BLOCKS.values():
        index = np.concatenate([np.arange(H.shape[0])[slices[t]] for t in tensors if t in slices])
        mask[np.ix_(index, index)] = True
    b = curvature_eigenpairs(model, batch, "block_hessian", k=k, tol=1e-10)
    exact_b = np.linalg.eigvalsh(np.where(mask, H, 0.0))
    assert np.allclose(b.top_values, exact_b[::-1][:k], atol=1e-8)
    assert np.allclose(b.bottom_values, exact_b[:k], atol=1e-8)
    gn = curvature_eigenpairs(model, batch, "gauss_newton", k=k, tol=1e-10)
    G = gauss_newton(model, nn.CrossEntropyLoss(), batch).numpy()
    assert np.allclose(gn.top_values, np.linalg.eigvalsh(G)[::-1][:k], atol=1e-8) and gn.bottom_values.size == 0
    masses = block_masses(gn.top_vectors, model)
    assert np.allclose(sum(masses.values()), 1.0)


# ---- MLPs and probes ------------------------------------------------------------------------------------------

def test_mlp_layer_features_match_the_forward_pass():
    model = ModAddMLP(p=7, depth=2, width=6, seed=0)
    pairs = all_pairs(7)[:, :2]
    features = mlp_layer_features(model, pairs)
    assert list(features) == ["input", "hidden 1", "hidden 2", "logits"]
    assert torch.allclose(features["logits"], model(pairs).double(), atol=1e-6)
    E_a, E_b = mlp_first_layer(model)
    assert E_a.shape == E_b.shape == (7, 6)


def test_concept_labels():
    pairs = torch.tensor([[1, 2], [3, 4], [6, 6]])
    assert concept_labels("a mod 2", pairs, 7).tolist() == [1, 1, 0]
    assert concept_labels("(a + b) mod 2", pairs, 7).tolist() == [1, 1, 0]
    assert concept_labels("answer (a + b mod p)", pairs, 7).tolist() == [3, 0, 5]
    with pytest.raises(ValueError, match="concept="):
        concept_labels("b", pairs, 7)


def test_probes_separate_linear_labels_and_not_random_ones():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((800, 10))
    separable = (X @ rng.standard_normal(10) > 0).astype(int)
    random = rng.integers(0, 2, 800)
    index = rng.permutation(800)
    tr, te = index[:400], index[400:]
    assert ridge_probe(X, separable, tr, te)["test"] > 0.95
    assert abs(ridge_probe(X, random, tr, te)["test"] - 0.5) < 0.1
    scores = probe_with_controls(X, rng.standard_normal((800, 10)), separable, n_shuffles=2, seed=0)
    assert scores.trained > 0.95 and scores.at_init < 0.65 and scores.shuffled < 0.65
    assert 0.4 < scores.chance < 0.65


# ---- the mechanistic test: subspace-level alignment, the permutation null, controls, error rates ---------------

from hessian_book.mechanism import (CIRCUIT_TESTS, EPS_GRID, MAX_PLANTED_PAIRS, PLANTED_GAP,  # noqa: E402
                                    circuit_test, circuit_tests, decision_error_rates, eigen_clusters,
                                    frequency_alignment, frequency_set_draws, hessian_top_eigenpairs,
                                    planted_curvature_operator, planted_eigenpairs, principal_cosines)
from hessian_core import lanczos  # noqa: E402

CKEYS = [3, 7, 9]  # three key frequencies of the 11 at p = 23: 165 sets, so the permutation null is exact


@pytest.fixture(scope="module")
def small():
    return ModAddTransformer(P, 8, 1, 16, seed=0)


def test_alignment_is_a_subspace_measure(small):
    rng = np.random.default_rng(0)
    sl = block_slices(small)["W_E"]
    n = sl.stop - sl.start
    Q = torch.linalg.qr(torch.as_tensor(rng.standard_normal((n, 3))))[0]
    R = torch.linalg.qr(torch.as_tensor(rng.standard_normal((3, 3))))[0]
    a, cos = frequency_alignment(Q, small, "W_E")
    a_rot, cos_rot = frequency_alignment(Q @ R, small, "W_E")
    # any rotation inside the span leaves it unchanged (degenerate clusters have arbitrary Ritz vectors)
    assert np.allclose(a, a_rot, atol=1e-12) and np.allclose(cos, cos_rot, atol=1e-10, equal_nan=True)
    assert a.sum() <= 1 + 1e-12 and (a >= 0).all()
    # a plane inside frequency 7's subspace: alignment 1 there, 0 elsewhere, both principal cosines 1
    u = torch.zeros(8, dtype=torch.float64)
    u[2] = 1.0
    plane = token_subspace_basis(small, "W_E", frequency_rows(P, [7])) @ torch.kron(
        torch.eye(2, dtype=torch.float64), u.reshape(-1, 1))
    a, cos = frequency_alignment(plane, small, "W_E")
    assert a[7] == pytest.approx(1.0) and np.delete(a, 7).sum() == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(cos[7], 1.0)


def test_the_permutation_null_is_exact_for_small_sets_and_sampled_otherwise():
    sets, exact = frequency_set_draws(P, 3, 100, np.random.default_rng(0))
    assert exact and len(sets) == 165 and len({tuple(s) for s in sets}) == 165
    sets, exact = frequency_set_draws(113, 5, 200, np.random.default_rng(0))
    assert not exact and sets.shape == (200, 5) and all(len(set(s)) == 5 for s in sets)
    with pytest.raises(ValueError, match="size"):
        frequency_set_draws(P, 11, 10, np.random.default_rng(0))


def test_truncated_cluster_is_not_read(small):
    values, vectors = planted_eigenpairs(small, CKEYS, block="W_E", k=10, seed=0)
    values[-2:] = values[-3]                                       # the last cluster now holds the k-th value
    c = eigen_clusters(values, vectors, small, "W_E", 0.02)
    assert all(9 not in m for m in c.members)


@pytest.mark.parametrize("n_key", range(1, MAX_PLANTED_PAIRS + 1))
def test_planted_spectra_separate_every_pair_from_the_next_and_from_the_rest(small, n_key):
    """At every key-set size the controls use (the chapter plants up to six of the reference run's frequencies):
    each pair exactly degenerate and PLANTED_GAP from the next, the rest a full gap below the last pair (at five
    frequencies it once began at the fifth pair's value), so the clusters at every ε of the grid are the pairs;
    the planted operator's other eigenvalues 0.1 or more below its last plane (computed densely)."""
    key = [1, 2, 4, 5, 7, 10][:n_key]
    values, vectors = planted_eigenpairs(small, key, block="W_E", k=2 * n_key + 3, seed=0)
    pairs, rest = values[:2 * n_key], values[2 * n_key:]
    assert np.array_equal(pairs[0::2], pairs[1::2])
    gaps = -np.diff(np.r_[pairs[0::2], rest[0]])
    assert gaps.min() >= PLANTED_GAP - 1e-12 and rest.min() > 0, (pairs, rest)
    for eps in EPS_GRID:
        c = eigen_clusters(values, vectors, small, "W_E", eps)
        assert [sorted(m) for m in c.members[:n_key]] == [[2 * i, 2 * i + 1] for i in range(n_key)]
    op = planted_curvature_operator(small, key, block="W_E", seed=0)
    dense = op.matmat(np.eye(op.shape[0]))
    spectrum = np.linalg.eigvalsh((dense + dense.T) / 2)[::-1]
    assert np.allclose(spectrum[:2 * n_key], np.repeat(1 - PLANTED_GAP * np.arange(n_key), 2), atol=1e-10)
    assert spectrum[2 * n_key] <= spectrum[2 * n_key - 1] - 0.1 + 1e-10


def test_a_planted_spectrum_holds_at_most_six_pairs(small):
    key = [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="key="):
        planted_eigenpairs(small, key, block="W_E", k=20)
    with pytest.raises(ValueError, match="key="):
        planted_curvature_operator(small, key, block="W_E")
    with pytest.raises(ValueError, match="floor="):  # closer to the last plane than twice the largest ε
        planted_curvature_operator(small, [1, 2], block="W_E", floor=0.8)


@pytest.mark.parametrize("eps", EPS_GRID)
def test_positive_control_planted_curvature_answers_yes(small, eps):
    """A curvature operator on the model's parameters whose top eigenspaces are provably the key planes (see
    planted_curvature_operator): Lanczos finds them, and the test answers yes at every ε of the grid; the same
    spectrum on random planes (no frequency structure) answers no."""
    for structure, answer in ((True, "yes"), (False, "no")):
        op = planted_curvature_operator(small, CKEYS, block="W_E", structure=structure, seed=1)
        values, vectors = lanczos(op, 12, which="largest", tol=1e-10, return_vectors=True, progress=False)
        order = np.argsort(values)[::-1]
        values, vectors = np.asarray(values)[order], np.asarray(vectors)[:, order]
        assert np.allclose(values[:6], [1, 1, 0.85, 0.85, 0.7, 0.7], atol=1e-8)
        t = circuit_tests(values, vectors, small, CKEYS, block="W_E", eps_grid=[eps], n_draws=200)[0]
        assert t.exact and t.answer == answer, (structure, t)
        if structure:
            assert t.statistic["same-key pairs"] == 3 and t.statistic["clusters are key frequencies"] > 0.999


def _hessian_answers(model, key, batch, k=12):
    values, vectors = hessian_top_eigenpairs(model, batch, k, tol=1e-6)
    block = "W_E"
    return [t.answer for t in circuit_tests(values, vectors, model, key, block=block, n_draws=200)]


def test_negative_controls_answer_no(small):
    """The untrained model and a weight-decay-0 model trained to memorise a 30 % split answer "no" at every ε."""
    tokens = all_pairs(P)
    labels = (tokens[:, 0] + tokens[:, 1]) % P
    rng = np.random.default_rng(0)
    train = torch.as_tensor(rng.permutation(len(tokens))[: int(0.3 * len(tokens))])
    batch = (tokens[train], labels[train])
    assert _hessian_answers(small, CKEYS, batch) == ["no"] * len(EPS_GRID)
    memoriser = ModAddTransformer(P, 8, 1, 16, seed=0)
    opt = torch.optim.AdamW(memoriser.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(memoriser(batch[0]), batch[1]).backward()
        opt.step()
    assert evaluate(memoriser, batch)["accuracy"] > 0.9              # it memorised
    assert _hessian_answers(memoriser, CKEYS, batch) == ["no"] * len(EPS_GRID)


def test_decision_false_positive_rate_and_power(small):
    """At the draws the chapter uses: 1,000 rotated nulls (the planted spectrum, no frequency structure) and 200
    planted cases per strength. Each test's rejection rate on the nulls is at most 5 % within Monte-Carlo error
    (3 sd), the whole decision's is at most 5 %, and the planted effect at full strength is found every time."""
    rates = decision_error_rates(small, CKEYS, block="W_E", k=12, n_sims=1000, n_power=200, n_draws=200,
                                 eps=0.02, strengths=(1.0, 0.7, 0.5, 0.3))
    print(rates)
    bound = 0.05 + 3 * np.sqrt(0.05 * 0.95 / 1000)
    assert all(rates[f"fp_{name}"] <= bound for name in CIRCUIT_TESTS)
    assert rates["false_positive"] <= bound
    assert rates["power_1"] >= 0.95 and rates["power_0.7"] >= 0.8
    assert rates["power_0.3"] <= rates["power_0.5"] <= rates["power_0.7"] <= rates["power_1"]


def test_non_key_sets_are_not_a_valid_null(small):
    """Why the null is the permutation of frequency labels: sets of non-key frequencies reject far beyond 5 % on
    the rotated null (the key set is not exchangeable with them)."""
    rates = decision_error_rates(small, CKEYS, block="W_E", k=12, n_sims=300, n_power=1, n_draws=200, eps=0.02,
                                 strengths=(), draws="non-key")
    assert rates["fp_concentration"] > 0.10


def test_principal_cosines():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((30, 4))
    assert np.allclose(principal_cosines(A, A @ rng.standard_normal((4, 4))), 1.0)
    B = np.linalg.qr(rng.standard_normal((30, 30)))[0]
    assert np.allclose(principal_cosines(B[:, :3], B[:, 3:6]), 0.0, atol=1e-12)


def test_curvature_lanczos_retries_with_a_larger_cap_and_keeps_its_certificate(monkeypatch):
    """A dense spectrum whose 40 extreme pairs outlast the default cap (1,200 HVPs) is solved on the retry, to
    the same tolerance, and agrees with a dense eigendecomposition; without the retry it raises."""
    import hessian_book.mechanism as mechanism
    from hessian_book.mechanism import _lanczos_pairs
    from hessian_core import LanczosConvergenceError, lanczos
    from tests.cases import planted as planted_matrix

    monkeypatch.setattr(mechanism, "DENSE_FALLBACK_MAX", 1000)  # this 2,000-row case takes the retry, not eigh
    rng = np.random.default_rng(0)
    u = rng.uniform(-1, 1, 2000)
    matrix, _ = planted_matrix(np.sign(u) * np.abs(u) ** (1 / 8), seed=1)  # both ends crowded near ±1
    with pytest.raises(LanczosConvergenceError):
        lanczos(matrix, 20, which="both", tol=1e-10, return_vectors=True, progress=False)
    values, vectors = _lanczos_pairs(matrix, 20, which="both", tol=1e-10, seed=0, block_size=1)
    truth = np.linalg.eigvalsh(matrix)
    np.testing.assert_allclose(np.sort(values), np.r_[truth[:20], truth[-20:]], atol=1e-8)
    residuals = np.linalg.norm(matrix @ vectors - vectors * values, axis=0)
    assert residuals.max() <= 1e-10 * np.abs(truth).max() * 1.01


def test_curvature_pairs_fall_back_to_a_dense_solve_when_lanczos_never_finishes(monkeypatch):
    """When Lanczos runs out of iterations, an operator within DENSE_FALLBACK_MAX rows is solved from its dense
    matrix: the same extremes as eigvalsh, in lanczos's order; a larger one is retried, and raises when the retry
    fails too."""
    import hessian_book.mechanism as mechanism
    from hessian_core import LanczosConvergenceError
    from scipy.sparse.linalg import aslinearoperator
    from tests.cases import planted as planted_matrix

    def never(*args, **kwargs):
        raise LanczosConvergenceError("never", eigenvalues=np.zeros(1), residual_norms=np.ones(1), threshold=0.0,
                                      n_matvecs=10)

    monkeypatch.setattr(mechanism, "lanczos", never)
    matrix, _ = planted_matrix(np.random.default_rng(2).normal(size=300), seed=3)
    truth = np.linalg.eigvalsh(matrix)
    for which, expected in (("both", np.r_[truth[:5], truth[-5:]]), ("largest", truth[-5:])):
        values, vectors = mechanism._lanczos_pairs(aslinearoperator(matrix), 5, which=which, tol=1e-8, seed=0,
                                                   block_size=1)
        np.testing.assert_allclose(values, expected, atol=1e-10)
        np.testing.assert_allclose(matrix @ vectors, vectors * values, atol=1e-10)
    monkeypatch.setattr(mechanism, "DENSE_FALLBACK_MAX", 299)
    with pytest.raises(LanczosConvergenceError):
        mechanism._lanczos_pairs(aslinearoperator(matrix), 5, which="both", tol=1e-8, seed=0, block_size=1)
