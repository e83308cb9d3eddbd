"""What a trained modular-addition model computes, and whether curvature sees it: ablations with controls,
activation patching, curvature eigenvectors projected onto parameter blocks and Fourier subspaces, and linear
probes with controls.

**Subspaces and their ablation (one definition).** A parameter *block* is one parameter tensor of a model, flattened
in ``model.parameters()`` order (``W_E`` is ``[p + 1, d]`` row-major, ``W_U`` is ``[d, p]``). A subspace of a block
is given by an orthonormal basis ``B: [n_block, r]``; *ablating* it projects it out of the block's parameters,
``θ_block ← θ_block − B Bᵀ θ_block`` (:func:`ablate_subspace`). The Fourier subspace of frequencies ``K`` in ``W_E``
(or ``W_U``) is the set of blocks whose per-token rows (columns) are combinations of the cosines and sines of ``K``
(any residual direction): ``B = kron(F_Kᵀ, I_d)`` with ``F_K`` the rows of :func:`hessian_book.fourier.fourier_basis`
(:func:`token_subspace_basis`); its dimension is ``2 |K| d``. Embedding Fourier ablation (key frequencies, or
random non-key ones as the control) and the ablation of an eigenvalue cluster's subspace are the same operation.

**Nulls.** A subspace is compared with random subspaces *of the same dimension inside the same block* (a null over
all parameters would make concentration on a block trivial): :func:`random_token_rows` draws a random orthonormal
set of ``r`` token functions (so the random subspace has the Fourier subspace's form and dimension), and
:func:`random_block_basis` a Haar-random ``r``-dimensional subspace of a block (for an arbitrary cluster subspace).

**Interventions.** :func:`intervened_logits` runs :class:`~hessian_book.models.ModAddTransformer` exactly as its
``forward`` (only the ``=`` query) and replaces one component of one activation: ``A ← A − Π A + Π A_ref`` with
``Π`` the component's selector (positions of the embedding, the attention output, a set of MLP neurons, or the
class-space Fourier projector of the logits, i.e. the unembedding's part at some frequencies) and ``A_ref`` the mean
over inputs (mean-ablation) or the activation on a corrupted input (activation patching, ``a → a + 1``).

**Curvature matrices** (:func:`curvature_eigenpairs`): the Hessian (Lanczos with vectors), the generalised
Gauss–Newton matrix ``Jᵀ Λ J`` (= the Fisher for the cross-entropy; matrix-free ``J v``, ``Λ``, ``Jᵀ u``), the
block-diagonal Hessian per component (Lanczos on each diagonal block), and the centred gradient covariance
(per-sample gradients, by SVD).

**The mechanistic test** (:func:`circuit_tests`): is a cluster of top Hessian eigenvalues a circuit? Clusters are
read as subspaces of a per-token block (:func:`eigen_clusters`, :func:`frequency_alignment`: principal angles with
each frequency's plane, invariant under rotations inside a degenerate cluster); three declared statistics
(:data:`CIRCUIT_TESTS`, :func:`frequency_scores`) against a permutation null over frequency labels
(:func:`frequency_set_draws`, exact when small), Holm across the three. Its controls: :func:`planted_eigenpairs`
and :func:`planted_curvature_operator` (known answers) and :func:`decision_error_rates` (false-positive rate and
power by simulation).

**Probes** (:func:`ridge_probe`, :func:`probe_with_controls`): ridge least-squares classifiers on held-out pairs,
against the same network at initialisation and against shuffled concept labels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn

from hessian_core import LanczosConvergenceError, hessian_operator, lanczos

from .circuit import all_pairs
from .fourier import fourier_basis, frequency_projector
from .models import ModAddMLP, ModAddTransformer

__all__ = ["FOURIER_BLOCKS", "block_slices", "token_subspace_basis", "random_token_rows", "random_block_basis",
           "ablate_subspace", "frequency_rows", "evaluate", "frequency_ablation", "FrequencyAblation",
           "bootstrap_interval", "Component", "transformer_components", "intervened_logits", "component_effects",
           "ComponentEffect", "corrupt_a", "block_masses", "subspace_masses", "token_masses", "null_quantile",
           "CurvatureEigenpairs", "curvature_eigenpairs", "gauss_newton_operator", "gradient_covariance_eigenpairs",
           "CURVATURES", "COMPONENT_BLOCKS", "dominant_frequencies", "orthonormal_basis", "mlp_layer_features",
           "CONCEPTS", "concept_labels", "ridge_probe", "probe_with_controls", "ProbeScores", "mlp_first_layer",
           "EPS_GRID", "PAIR_SHARE", "CIRCUIT_TESTS", "frequency_alignment", "EigenClusters", "eigen_clusters",
           "frequency_scores", "circuit_statistics", "frequency_set_draws", "EXACT_SETS", "non_key_draws",
           "CircuitTest", "circuit_test", "circuit_tests",
           "block_of_top_vectors", "planted_eigenpairs", "planted_curvature_operator", "decision_error_rates",
           "PLANTED_GAP", "MAX_PLANTED_PAIRS",
           "hessian_top_eigenpairs", "principal_cosines"]

#: The per-token blocks that have a Fourier subspace, with the axis that indexes the tokens.
FOURIER_BLOCKS = {"W_E": 0, "W_U": 1}
#: The curvature matrices :func:`curvature_eigenpairs` knows.
CURVATURES = ("hessian", "gauss_newton", "block_hessian", "gradient_covariance")
#: The transformer's components (groups of parameter tensors), for the block-diagonal Hessian and block shares.
COMPONENT_BLOCKS = {"embed": ("W_E", "W_pos"), "attention": ("W_Q", "W_K", "W_V", "W_O"),
                    "MLP": ("W_in", "b_in", "W_out", "b_out"), "unembed": ("W_U",)}


# ---------------------------------------------------------------------------------------------------------------
# Blocks, subspaces and their ablation


def block_slices(model: nn.Module) -> dict[str, slice]:
    """Name → slice of each parameter tensor in the flattened parameter vector (``model.parameters()`` order)."""
    out, start = {}, 0
    for name, param in model.named_parameters():
        out[name] = slice(start, start + param.numel())
        start += param.numel()
    return out


def frequency_rows(p: int, frequencies: Iterable[int]) -> Tensor:
    """The cosine and sine rows of ``frequencies`` in :func:`fourier_basis`: orthonormal ``Tensor[2|K|, p]``."""
    ks = sorted({int(k) for k in frequencies})
    if any(not 1 <= k <= (p - 1) // 2 for k in ks):
        raise ValueError(f"frequencies must lie in 1..{(p - 1) // 2} for p={p}, got {ks}")
    rows = [i for k in ks for i in (2 * k - 1, 2 * k)]
    return fourier_basis(p)[rows]


def token_subspace_basis(model: ModAddTransformer, block: str, rows: Tensor) -> Tensor:
    """Orthonormal basis ``[n_block, r · d]`` (float64) of the subspace of ``block`` (``"W_E"`` or ``"W_U"``) whose
    per-token rows (``W_E[:p]``; columns of ``W_U``) are combinations of the orthonormal token functions ``rows``
    (``Tensor[r, p]``), in any residual direction; the ``=`` row of ``W_E`` is not in it."""
    if block not in FOURIER_BLOCKS:
        raise ValueError(f"block={block!r} must be one of {list(FOURIER_BLOCKS)} (a per-token block)")
    p, d = model.p, model.d_model
    rows = torch.as_tensor(rows, dtype=torch.float64)
    if rows.ndim != 2 or rows.shape[1] != p:
        raise ValueError(f"rows must have shape [r, p={p}], got {tuple(rows.shape)}")
    eye = torch.eye(d, dtype=torch.float64)
    if block == "W_E":
        padded = torch.cat([rows.T.contiguous(), torch.zeros(1, rows.shape[0], dtype=torch.float64)])  # [(p + 1), r]
        return torch.kron(padded, eye)                                                     # index t·d + j
    return torch.kron(eye, rows.T.contiguous())                                                       # index j·p + c


def random_token_rows(p: int, r: int, rng: np.random.Generator, *, exclude: Tensor | None = None) -> Tensor:
    """``r`` random orthonormal token functions ``Tensor[r, p]`` (Haar), orthogonal to the constant and, if given,
    to the rows of ``exclude`` (so that a null subspace never overlaps what it is compared with)."""
    against = [torch.full((1, p), 1 / math.sqrt(p), dtype=torch.float64)]
    if exclude is not None and len(exclude):
        against.append(torch.as_tensor(exclude, dtype=torch.float64))
    A = torch.cat(against)                                                   # orthonormal rows
    X = torch.as_tensor(rng.standard_normal((p, r)))
    X = X - A.T @ (A @ X)
    Q, _ = torch.linalg.qr(X)
    return Q.T.contiguous()


def random_block_basis(n_block: int, r: int, rng: np.random.Generator) -> Tensor:
    """A Haar-random ``r``-dimensional subspace of an ``n_block``-dimensional block: orthonormal ``[n_block, r]``."""
    if not 1 <= r <= n_block:
        raise ValueError(f"r={r} must lie in [1, n_block={n_block}]")
    Q, R = torch.linalg.qr(torch.as_tensor(rng.standard_normal((n_block, r))))
    return Q * torch.sign(torch.diagonal(R))


def orthonormal_basis(vectors, *, rtol: float = 1e-8) -> Tensor:
    """An orthonormal basis ``[n, r]`` of the column span of ``vectors: [n, m]`` (SVD; directions with singular value
    below ``rtol`` × the largest are dropped)."""
    V = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
    if V.ndim == 1:
        V = V[:, None]
    U, S, _ = torch.linalg.svd(V, full_matrices=False)
    keep = S > rtol * S.max() if S.numel() and S.max() > 0 else torch.zeros_like(S, dtype=torch.bool)
    return U[:, keep]


def ablate_subspace(model: nn.Module, block: str, basis: Tensor) -> nn.Module:
    """A copy of ``model`` with the subspace ``basis`` (orthonormal ``[n_block, r]``) projected out of ``block``:
    ``θ_block ← θ_block − B Bᵀ θ_block`` (the chapter's one definition of ablating a subspace)."""
    import copy

    out = copy.deepcopy(model)
    param = dict(out.named_parameters())[block]
    B = torch.as_tensor(basis, dtype=torch.float64)
    if B.ndim != 2 or B.shape[0] != param.numel():
        raise ValueError(f"basis must have shape [{param.numel()}, r] for block {block!r}, got {tuple(B.shape)}")
    with torch.no_grad():
        theta = param.detach().reshape(-1).to(torch.float64)
        param.copy_((theta - B @ (B.T @ theta)).reshape(param.shape).to(param.dtype))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Evaluation, frequency ablation


def _split(data) -> tuple[Tensor, Tensor]:
    inputs, labels = data
    return torch.as_tensor(inputs), torch.as_tensor(labels)


def evaluate(model: nn.Module, data) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` on ``data = (inputs, labels)`` (float64 cross-entropy)."""
    inputs, labels = _split(data)
    with torch.no_grad():
        logits = model(inputs).double()
    return {"loss": float(F.cross_entropy(logits, labels)),
            "accuracy": float((logits.argmax(1) == labels).double().mean())}


@dataclass(frozen=True)
class FrequencyAblation:
    """The key-frequency ablation of a per-token block and its control.

    Attributes:
        block: ``"W_E"`` or ``"W_U"``. frequencies: the ablated key frequencies.
        clean: ``{"loss", "accuracy"}`` of the unablated model.
        key: the same after ablating the key frequencies' subspace (dimension ``2 |K| d``).
        random_frequencies: ``[n_draws, |K|]`` the non-key frequencies of each control draw.
        random_accuracy, random_loss: ``ndarray[n_draws]``, after ablating each draw.
    """

    block: str
    frequencies: list
    clean: dict
    key: dict
    random_frequencies: np.ndarray
    random_accuracy: np.ndarray
    random_loss: np.ndarray

    @property
    def below_every_draw(self) -> bool:
        """Key ablation leaves lower accuracy than every random draw (and higher loss than every draw)."""
        return bool(len(self.random_accuracy) and self.key["accuracy"] < self.random_accuracy.min()
                     and self.key["loss"] > self.random_loss.max())


def frequency_ablation(model: ModAddTransformer, frequencies: Sequence[int], data, *, block: str = "W_E",
                       n_draws: int = 20, seed: int = 0) -> FrequencyAblation:
    """Ablate the key frequencies' subspace of ``block`` and, as the control, ``n_draws`` sets of the same number of
    random non-key frequencies (drawn without replacement within a set), each with :func:`ablate_subspace`."""
    p = model.p
    ks = sorted({int(k) for k in frequencies})
    others = [k for k in range(1, (p - 1) // 2 + 1) if k not in ks]
    if not ks:
        raise ValueError("frequencies is empty: there is nothing to ablate")
    if len(others) < len(ks):
        raise ValueError(f"only {len(others)} non-key frequencies for a control of {len(ks)} (p={p} too small)")
    rng = np.random.default_rng(seed)

    def ablated(kset) -> dict:
        return evaluate(ablate_subspace(model, block, token_subspace_basis(model, block, frequency_rows(p, kset))),
                        data)

    draws = np.array([np.sort(rng.choice(others, size=len(ks), replace=False)) for _ in range(n_draws)], dtype=int)
    results = [ablated(d.tolist()) for d in draws]
    return FrequencyAblation(block=block, frequencies=ks, clean=evaluate(model, data), key=ablated(ks),
                             random_frequencies=draws,
                             random_accuracy=np.array([r["accuracy"] for r in results]),
                             random_loss=np.array([r["loss"] for r in results]))


# ---------------------------------------------------------------------------------------------------------------
# Interventions on activations


def bootstrap_interval(values, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                       chunk: int = 200) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values: [n]`` (resampling the entries, e.g. input pairs)."""
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(chunk, n_boot - i), x.size))].mean(1)
                            for i in range(0, n_boot, chunk)])
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass(frozen=True)
class Component:
    """A component of the transformer's computation: the activation ``site`` and the selector ``Π`` applied to it.

    ``site`` is ``"embed"`` (``[N, 3, d]``), ``"attn_out"`` (``[N, d]``), ``"mlp_post"`` (``[N, d_mlp]``) or
    ``"logits"`` (``[N, p]``). ``select(A)`` returns ``Π A`` (same shape), a linear projection.
    """

    name: str
    site: str
    select: Callable[[Tensor], Tensor]


def transformer_components(model: ModAddTransformer, neuron_groups: Mapping[str, Sequence[int]],
                           key_frequencies: Sequence[int]) -> list[Component]:
    """The components the chapter ablates and patches: the token embeddings of ``a`` and ``b``, the attention
    output, each group of MLP neurons (``neuron_groups``: name → neuron indices), and the unembedding's part at each
    key frequency and at all other frequencies (the logits' class-space Fourier components)."""
    out = [Component("embedding (a, b)", "embed", lambda A: A * _position_mask(A)),
           Component("attention", "attn_out", lambda A: A)]
    for name, neurons in neuron_groups.items():
        mask = torch.zeros(model.d_mlp, dtype=torch.float64)
        mask[list(neurons)] = 1.0
        out.append(Component(name, "mlp_post", lambda A, m=mask: A * m.to(A.dtype)))
    p = model.p
    for k in key_frequencies:
        P_k = frequency_projector(p, [k])
        out.append(Component(f"unembedding, frequency {k}", "logits", lambda A, P=P_k: A @ P.to(A.dtype)))
    rest = torch.eye(p, dtype=torch.float64) - frequency_projector(p, list(key_frequencies), constant=True)
    out.append(Component("unembedding, other frequencies", "logits", lambda A, P=rest: A @ P.to(A.dtype)))
    return out


def _position_mask(A: Tensor) -> Tensor:
    mask = torch.zeros(1, 3, 1, dtype=A.dtype)
    mask[0, :2] = 1.0
    return mask


def _activations(model: ModAddTransformer, tokens: Tensor, edit: Callable[[str, Tensor], Tensor] | None = None
                 ) -> dict[str, Tensor]:
    """The forward pass of :class:`ModAddTransformer` (float64, no gradients), each site passed through ``edit``."""
    edit = edit or (lambda site, A: A)
    m = model
    with torch.no_grad():
        W = {name: param.detach().double() for name, param in m.named_parameters()}
        x = edit("embed", W["W_E"][tokens] + W["W_pos"])
        n, _, d = x.shape
        h, dh = m.n_heads, d // m.n_heads
        q = (x[:, -1] @ W["W_Q"]).view(n, h, dh)
        k = (x @ W["W_K"]).view(n, 3, h, dh)
        v = (x @ W["W_V"]).view(n, 3, h, dh)
        attn = torch.softmax(torch.einsum("nhd,nshd->nhs", q, k) / math.sqrt(dh), dim=-1)
        attn_out = edit("attn_out", torch.einsum("nhs,nshd->nhd", attn, v).reshape(n, d) @ W["W_O"])
        resid = x[:, -1] + attn_out
        out = {"embed": x, "attn_out": attn_out}
        if m.d_mlp is not None:
            post = edit("mlp_post", torch.relu(resid @ W["W_in"] + W["b_in"]))
            resid = resid + post @ W["W_out"] + W["b_out"]
            out["mlp_post"] = post
        out["logits"] = edit("logits", resid @ W["W_U"])
    return out


def intervened_logits(model: ModAddTransformer, tokens: Tensor, component: Component, reference: Tensor) -> Tensor:
    """Logits ``[N, p]`` (float64) with ``component`` replaced: ``A ← A − Π A + Π reference`` at its site
    (``reference`` broadcastable to the site's activation, e.g. its mean over inputs, or the activations on
    corrupted inputs)."""
    def edit(site: str, A: Tensor) -> Tensor:
        if site != component.site:
            return A
        return A - component.select(A) + component.select(reference.to(A.dtype).expand_as(A))

    return _activations(model, tokens, edit)["logits"]


def corrupt_a(tokens: Tensor, p: int, shift: int = 1) -> Tensor:
    """The corrupted inputs of activation patching: ``[a + shift mod p, b, =]``."""
    out = tokens.clone()
    out[:, 0] = (out[:, 0] + shift) % p
    return out


@dataclass(frozen=True)
class ComponentEffect:
    """The effect of one intervention, averaged over input pairs, with bootstrap intervals over pairs.

    ``accuracy_drop``: clean accuracy minus intervened (fraction); ``logit_drop``: drop of the correct class's
    centred logit (its logit minus the mean logit over classes, which the softmax does not see).
    """

    component: str
    mode: str
    accuracy_drop: float
    accuracy_low: float
    accuracy_high: float
    logit_drop: float
    logit_low: float
    logit_high: float
    accuracy_after: float


def _centred_correct(logits: Tensor, labels: Tensor) -> Tensor:
    return logits.gather(1, labels[:, None])[:, 0] - logits.mean(1)


def component_effects(model: ModAddTransformer, components: Sequence[Component], *, mode: str,
                      tokens: Tensor | None = None, n_boot: int = 1000, seed: int = 0) -> list[ComponentEffect]:
    """Mean-ablation (``mode="mean"``: each component replaced by its mean over ``tokens``) or activation patching
    (``mode="patch"``: by its value on the corrupted input ``a → a + 1``, :func:`corrupt_a`) of every component,
    on ``tokens`` (default all ``p²`` pairs, labels ``(a + b) mod p``)."""
    if mode not in ("mean", "patch"):
        raise ValueError(f"mode={mode!r} must be 'mean' or 'patch'")
    p = model.p
    tokens = all_pairs(p) if tokens is None else torch.as_tensor(tokens)
    labels = (tokens[:, 0] + tokens[:, 1]) % p
    clean = _activations(model, tokens)
    clean_correct = (clean["logits"].argmax(1) == labels).double()
    clean_logit = _centred_correct(clean["logits"], labels)
    corrupted = _activations(model, corrupt_a(tokens, p)) if mode == "patch" else None
    out = []
    for i, c in enumerate(components):
        reference = clean[c.site].mean(0, keepdim=True) if mode == "mean" else corrupted[c.site]
        logits = intervened_logits(model, tokens, c, reference)
        acc = clean_correct - (logits.argmax(1) == labels).double()
        logit = clean_logit - _centred_correct(logits, labels)
        a_low, a_high = bootstrap_interval(acc.numpy(), n_boot=n_boot, seed=seed + i)
        l_low, l_high = bootstrap_interval(logit.numpy(), n_boot=n_boot, seed=seed + i)
        out.append(ComponentEffect(component=c.name, mode=mode, accuracy_drop=float(acc.mean()), accuracy_low=a_low,
                                   accuracy_high=a_high, logit_drop=float(logit.mean()), logit_low=l_low,
                                   logit_high=l_high, accuracy_after=float((logits.argmax(1) == labels)
                                                                           .double().mean())))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Eigenvectors on blocks and subspaces


def block_masses(vectors, model: nn.Module, groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """Share of each vector's squared norm in each group of parameter tensors: name → ``ndarray[m]``
    (``vectors: [P, m]``; default one group per tensor)."""
    V = np.asarray(vectors, dtype=float)
    slices = block_slices(model)
    groups = groups or {name: (name,) for name in slices}
    total = (V ** 2).sum(0)
    return {g: sum((V[slices[t]] ** 2).sum(0) for t in tensors) / total for g, tensors in groups.items()}


def subspace_masses(vectors, basis) -> np.ndarray:
    """``||Bᵀ v||²`` for each column ``v`` of ``vectors: [n, m]`` (``basis: [n, r]`` orthonormal): ``ndarray[m]``."""
    V = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
    return ((torch.as_tensor(basis, dtype=torch.float64).T @ V) ** 2).sum(0).numpy()


def token_masses(vectors, model: ModAddTransformer, block: str, rows: Tensor) -> np.ndarray:
    """The squared norm of each vector's ``block`` part inside the token subspace of ``rows`` (``[r, p]``
    orthonormal), as a share of the vector's squared norm *in that block*: ``ndarray[m]`` (NaN where a vector has
    no weight in the block). The same as :func:`subspace_masses` with :func:`token_subspace_basis`, computed without
    forming the basis."""
    V = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
    part = V[block_slices(model)[block]]                                      # [n_block, m]
    p, d, m = model.p, model.d_model, V.shape[1]
    Q = torch.as_tensor(rows, dtype=torch.float64)
    if block == "W_E":
        coefficients = torch.einsum("rt,tjm->rjm", Q, part.reshape(p + 1, d, m)[:p])
    elif block == "W_U":
        coefficients = torch.einsum("rc,jcm->rjm", Q, part.reshape(d, p, m))
    else:
        raise ValueError(f"block={block!r} must be one of {list(FOURIER_BLOCKS)}")
    inside, total = (coefficients ** 2).sum((0, 1)), (part ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total.numpy() > 0, inside.numpy() / np.maximum(total.numpy(), 1e-300), np.nan)


def null_quantile(null: np.ndarray, value: float, q: float = 0.95) -> tuple[float, bool]:
    """The null's ``q`` quantile and whether ``value`` lies above it."""
    threshold = float(np.quantile(np.asarray(null, dtype=float), q))
    return threshold, bool(value > threshold)


def dominant_frequencies(vectors, model: ModAddTransformer, block: str) -> tuple[np.ndarray, np.ndarray]:
    """For each vector, the frequency whose token subspace in ``block`` holds the largest share of the vector's
    block part, and that share: ``(int ndarray[m], float ndarray[m])``; frequency 0 (share 0) for a vector with no
    weight in the block."""
    p = model.p
    shares = np.stack([token_masses(vectors, model, block, frequency_rows(p, [k]))
                       for k in range(1, (p - 1) // 2 + 1)])                 # [K, m]
    shares = np.nan_to_num(shares)
    best = shares.max(0)
    return np.where(best > 0, shares.argmax(0) + 1, 0), best


# ---------------------------------------------------------------------------------------------------------------
# Curvature matrices and their extreme eigenvectors


@dataclass(frozen=True)
class CurvatureEigenpairs:
    """The extreme eigenpairs of one curvature matrix at one checkpoint.

    Attributes:
        matrix: one of :data:`CURVATURES`.
        top_values: ``ndarray[k]`` descending; top_vectors: ``ndarray[P, k]`` (columns in that order).
        bottom_values: ``ndarray[k_b]`` ascending (``k_b = 0`` for positive semidefinite matrices);
            bottom_vectors: ``ndarray[P, k_b]``.
        products: matrix-vector products (or per-sample gradients) spent; seconds: wall time.
        source: ``"lanczos"``, ``"dense"`` (read from a stored full spectrum) or ``"svd"``.
    """

    matrix: str
    top_values: np.ndarray
    top_vectors: np.ndarray
    bottom_values: np.ndarray
    bottom_vectors: np.ndarray
    products: int
    seconds: float
    source: str


def _functional(model: nn.Module):
    """``(names, shapes, theta0 [P] float64, f(theta, inputs) -> outputs)`` for a float64 copy of ``model``."""
    import copy

    m = copy.deepcopy(model).double().eval()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    sizes = [p.numel() for _, p in m.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in m.named_parameters()])

    def f(theta: Tensor, inputs: Tensor) -> Tensor:
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return torch.func.functional_call(m, params, (inputs,))

    return theta0, f


def gauss_newton_operator(model: nn.Module, batch) -> LinearOperator:
    """The generalised Gauss–Newton matrix ``G = Jᵀ Λ J`` of the mean cross-entropy on ``batch`` as a
    ``LinearOperator [P, P]`` (float64): ``J v`` by a forward-mode product, ``Λ`` the softmax's Hessian
    ``(diag(s) − s sᵀ)/N`` per sample, ``Jᵀ u`` by a vector–Jacobian product. For the cross-entropy ``G`` is the
    Fisher information of the model's predictive distribution."""
    inputs, _ = _split(batch)
    theta0, f = _functional(model)
    outputs, vjp_fn = torch.func.vjp(lambda t: f(t, inputs), theta0)
    s = torch.softmax(outputs.detach(), dim=1)
    n = outputs.shape[0]
    P = theta0.numel()
    count = [0]

    def matvec(v):
        tangent = torch.as_tensor(np.asarray(v).reshape(-1), dtype=torch.float64)
        u = torch.func.jvp(lambda t: f(t, inputs), (theta0,), (tangent,))[1]
        lam_u = (s * u - s * (s * u).sum(1, keepdim=True)) / n
        count[0] += 1
        return vjp_fn(lam_u)[0].detach().numpy()

    def matmat(V):
        V = np.asarray(V)
        return np.stack([matvec(V[:, i]) for i in range(V.shape[1])], axis=1)

    op = LinearOperator((P, P), matvec=matvec, matmat=matmat, dtype=np.float64)
    op.count = count
    return op


def gradient_covariance_eigenpairs(model: nn.Module, batch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` eigenpairs of the centred gradient covariance ``C = (1/N) Σ (g_i − ḡ)(g_i − ḡ)ᵀ`` of the
    per-sample cross-entropy gradients ``g_i`` on ``batch`` (float64; exact, by the SVD of the ``[N, P]`` matrix of
    centred gradients): ``(values ndarray[k] descending, vectors ndarray[P, k])``."""
    inputs, labels = _split(batch)
    theta0, f = _functional(model)

    def loss_one(theta, x, y):
        return F.cross_entropy(f(theta, x[None]), y[None])

    grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(theta0, inputs, labels)  # [N, P]
    centred = (grads - grads.mean(0, keepdim=True)) / math.sqrt(grads.shape[0])
    _, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, S.numel())
    return (S[:k] ** 2).numpy(), Vh[:k].T.numpy()


def _restricted(op: LinearOperator, index: np.ndarray) -> LinearOperator:
    """The diagonal block ``A[index, index]`` of an operator."""
    n, P = len(index), op.shape[0]

    def matmat(X):
        X = np.asarray(X).reshape(n, -1)
        full = np.zeros((P, X.shape[1]))
        full[index] = X
        return op.matmat(full)[index]

    return LinearOperator((n, n), matvec=lambda x: matmat(x)[:, 0], matmat=matmat, dtype=np.float64)


def _ends(values: np.ndarray, vectors: np.ndarray, k: int, which: str) -> tuple:
    order = np.argsort(values)
    top = order[::-1][:k]
    bottom = order[:k] if which == "both" else order[:0]
    return values[top], vectors[:, top], values[bottom], vectors[:, bottom]


#: Lanczos's iteration cap on a second attempt, as a multiple of the operator applications the first one spent: a
#: cluster of nearly equal eigenvalues at an end (seen in the grokking transformer: 38 of 40 pairs within 1e-5 after
#: 1,200 HVPs) needs a larger Krylov space; the tolerance, and so the certificate, stay the same.
RETRY_MAX_ITER_FACTOR = 4
#: Operators up to this size that outlast Lanczos's cap are solved densely (their matrix assembled from products
#: with the identity, then ``numpy.linalg.eigh``): exact, and affordable for the transformer's component blocks
#: (the block Hessian's MLP block, ~8,300 parameters, crowded near-degenerate ends at 1e-5 after 4,800 HVPs).
DENSE_FALLBACK_MAX = 10_000


def _lanczos_pairs(op, k: int, *, which: str, tol: float, seed: int, block_size: int):
    """``lanczos(..., return_vectors=True)``; when it runs out of iterations, an operator of at most
    :data:`DENSE_FALLBACK_MAX` rows is solved densely (:func:`_dense_extremes`: cheaper than more Lanczos at that
    size, and exact), a larger one retried once with :data:`RETRY_MAX_ITER_FACTOR` times the cap (a second failure
    is raised)."""
    kwargs = dict(which=which, tol=tol, seed=seed, return_vectors=True, block_size=block_size, progress=False)
    try:
        return lanczos(op, k, **kwargs)
    except LanczosConvergenceError as error:
        if op.shape[0] > DENSE_FALLBACK_MAX:
            return lanczos(op, k, max_iter=RETRY_MAX_ITER_FACTOR * error.n_matvecs, **kwargs)
    return _dense_extremes(op, k, which=which)


def _dense_extremes(op, k: int, *, which: str, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (``which="largest"``) or ``k`` smallest and ``k`` largest (``"both"``) eigenpairs of a
    symmetric operator ``[n, n]`` from its dense matrix: ``(values [m], vectors [n, m])``, values ascending, as
    :func:`hessian_core.lanczos` returns them."""
    n = op.shape[0]
    matrix = np.empty((n, n))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = np.zeros((n, stop - start))
        block[np.arange(start, stop), np.arange(stop - start)] = 1.0
        matrix[:, start:stop] = op.matmat(block)
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    index = np.arange(n - k, n) if which == "largest" else np.r_[np.arange(k), np.arange(n - k, n)]
    return values[index], vectors[:, index]


def curvature_eigenpairs(model: nn.Module, batch, matrix: str, *, k: int, tol: float = 1e-6, seed: int = 0,
                         groups: Mapping[str, Sequence[str]] | None = None, block_size: int = 1
                         ) -> CurvatureEigenpairs:
    """The ``k`` largest (and, for the Hessians, ``k`` smallest) eigenpairs of a curvature matrix of the mean
    cross-entropy on ``batch``.

    ``matrix``: ``"hessian"`` (Lanczos, both ends), ``"gauss_newton"`` (Lanczos on :func:`gauss_newton_operator`,
    top only: it is positive semidefinite), ``"block_hessian"`` (the Hessian with every coupling between the
    ``groups`` of tensors removed — default :data:`COMPONENT_BLOCKS` filtered to the model's tensors; Lanczos on each
    diagonal block, then the ``k`` extreme eigenpairs of the union), ``"gradient_covariance"``
    (:func:`gradient_covariance_eigenpairs`, top only). Lanczos stops at relative residual ``tol`` (a run that
    exhausts its iteration cap is solved densely up to :data:`DENSE_FALLBACK_MAX` rows, else retried once with
    :data:`RETRY_MAX_ITER_FACTOR` times the cap).
    """
    if matrix not in CURVATURES:
        raise ValueError(f"matrix={matrix!r} must be one of {list(CURVATURES)}")
    started = time.perf_counter()
    inputs, labels = _split(batch)
    P = sum(p.numel() for p in model.parameters())
    if matrix == "gradient_covariance":
        values, vectors = gradient_covariance_eigenpairs(model, (inputs, labels), k)
        return CurvatureEigenpairs(matrix, values, vectors, np.zeros(0), np.zeros((P, 0)), len(labels),
                                   time.perf_counter() - started, "svd")
    if matrix == "gauss_newton":
        op = gauss_newton_operator(model, (inputs, labels))
        values, vectors = _lanczos_pairs(op, min(k, P), which="largest", tol=tol, seed=seed, block_size=block_size)
        top_v, top_x, bottom_v, bottom_x = _ends(np.asarray(values), np.asarray(vectors), k, "largest")
        return CurvatureEigenpairs(matrix, top_v, top_x, bottom_v, bottom_x, op.count[0],
                                   time.perf_counter() - started, "lanczos")
    op = hessian_operator(model, nn.CrossEntropyLoss(), (inputs, labels))
    if matrix == "hessian":
        values, vectors = _lanczos_pairs(op, min(k, P // 2), which="both", tol=tol, seed=seed,
                                         block_size=block_size)
        ends = _ends(np.asarray(values), np.asarray(vectors), k, "both")
        return CurvatureEigenpairs(matrix, *ends, op.n_products, time.perf_counter() - started, "lanczos")
    slices = block_slices(model)
    if groups is None:
        groups = {g: [t for t in ts if t in slices] for g, ts in COMPONENT_BLOCKS.items()}
        groups = {g: ts for g, ts in groups.items() if ts}
    all_values, all_vectors = [], []
    for tensors in groups.values():
        index = np.concatenate([np.arange(P)[slices[t]] for t in tensors])
        kk = min(k, len(index) // 2)
        if kk < 1:
            continue
        values, vectors = _lanczos_pairs(_restricted(op, index), kk, which="both", tol=tol, seed=seed,
                                         block_size=block_size)
        embedded = np.zeros((P, len(values)))
        embedded[index] = vectors
        all_values.append(np.asarray(values))
        all_vectors.append(embedded)
    ends = _ends(np.concatenate(all_values), np.concatenate(all_vectors, axis=1), k, "both")
    return CurvatureEigenpairs(matrix, *ends, op.n_products, time.perf_counter() - started, "lanczos")


# ---------------------------------------------------------------------------------------------------------------
# MLPs: features per layer, concepts, probes


def mlp_first_layer(model: ModAddMLP) -> tuple[Tensor, Tensor]:
    """The first layer's token embeddings of a one-hot :class:`ModAddMLP`: ``(E_a, E_b)``, each ``[p, width]``
    float64 (column ``a`` and column ``p + b`` of the first weight matrix, transposed)."""
    if model.input_encoding != "onehot":
        raise ValueError("mlp_first_layer reads the one-hot first layer; this model embeds its inputs")
    W = model.layers[0].weight.detach().double()                             # [width, 2p]
    return W[:, :model.p].T.contiguous(), W[:, model.p:].T.contiguous()


def mlp_layer_features(model: ModAddMLP, pairs: Tensor) -> dict[str, Tensor]:
    """Features of every layer for ``pairs: [N, 2]``: ``"input"`` (the concatenated one-hot vectors, or the
    embeddings), ``"hidden 1"``, … (post-ReLU), ``"logits"``; float64 ``[N, ·]``."""
    pairs = torch.as_tensor(pairs)
    with torch.no_grad():
        if model.input_encoding == "embed":
            x = model.embed(pairs).flatten(1)
        else:
            x = torch.cat([F.one_hot(pairs[:, 0], model.p), F.one_hot(pairs[:, 1], model.p)], 1).float()
        out, h, layer = {"input": x.double()}, x, 0
        for module in model.layers:
            h = module(h)
            if isinstance(module, nn.ReLU):
                layer += 1
                out[f"hidden {layer}"] = h.double()
        out["logits"] = h.double()
    return out


#: Concepts probed, as functions of the pairs ``[N, 2]`` and ``p``: the hackathon's parities and the answer.
CONCEPTS = {
    "a mod 2": lambda a, b, p: a % 2,
    "(a + b) mod 2": lambda a, b, p: (a + b) % 2,
    "answer (a + b mod p)": lambda a, b, p: (a + b) % p,
}


def concept_labels(concept: str, pairs: Tensor, p: int) -> Tensor:
    """Integer labels ``[N]`` of ``concept`` (a key of :data:`CONCEPTS`) for ``pairs: [N, 2]``."""
    if concept not in CONCEPTS:
        raise ValueError(f"concept={concept!r} must be one of {list(CONCEPTS)}")
    pairs = torch.as_tensor(pairs)
    return CONCEPTS[concept](pairs[:, 0], pairs[:, 1], p).long()


def ridge_probe(features, labels, train_index, test_index, *, ridge: float = 1e-3) -> dict[str, float]:
    """A linear probe: ridge least squares onto the one-hot labels (features standardised on the probe's training
    pairs; ``ridge`` times the mean feature variance on the diagonal), classified by argmax.

    Returns ``{"train": accuracy on train_index, "test": held-out accuracy, "chance": the largest class's share of
    the held-out labels}``.
    """
    X = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels)).long()
    tr, te = torch.as_tensor(train_index), torch.as_tensor(test_index)
    mean, std = X[tr].mean(0), X[tr].std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    Z = torch.cat([(X - mean) / std, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    classes = int(y.max()) + 1
    Y = F.one_hot(y, classes).double()
    A = Z[tr].T @ Z[tr] + ridge * len(tr) * torch.eye(Z.shape[1], dtype=torch.float64)
    W = torch.linalg.solve(A, Z[tr].T @ Y[tr])
    predicted = (Z @ W).argmax(1)
    counts = torch.bincount(y[te], minlength=classes).double()
    return {"train": float((predicted[tr] == y[tr]).double().mean()),
            "test": float((predicted[te] == y[te]).double().mean()),
            "chance": float(counts.max() / counts.sum())}


@dataclass(frozen=True)
class ProbeScores:
    """Held-out probe accuracies of one concept at one layer: the trained network, the same network at
    initialisation, and the trained network with shuffled concept labels (mean over shuffles); ``chance`` is the
    largest class's held-out share."""

    trained: float
    at_init: float
    shuffled: float
    chance: float
    trained_train: float


def probe_with_controls(features, init_features, labels, *, probe_fraction: float = 0.5, ridge: float = 1e-3,
                        n_shuffles: int = 3, seed: int = 0) -> ProbeScores:
    """:func:`ridge_probe` on a seeded split of the pairs (``probe_fraction`` to train the probe), with its two
    controls: the same probe on ``init_features`` and on labels shuffled over the pairs."""
    labels = torch.as_tensor(np.asarray(labels)).long()
    n = len(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cut = int(round(probe_fraction * n))
    tr, te = order[:cut], order[cut:]
    trained = ridge_probe(features, labels, tr, te, ridge=ridge)
    at_init = ridge_probe(init_features, labels, tr, te, ridge=ridge)
    shuffled = [ridge_probe(features, labels[torch.as_tensor(rng.permutation(n))], tr, te, ridge=ridge)["test"]
                for _ in range(n_shuffles)]
    return ProbeScores(trained=trained["test"], at_init=at_init["test"], shuffled=float(np.mean(shuffled)),
                       chance=trained["chance"], trained_train=trained["train"])


# ---------------------------------------------------------------------------------------------------------------
# The mechanistic test: is an eigenvalue cluster a circuit?
#
# Everything is read at the level of a cluster's *span* (its vectors' parts in one per-token block, orthonormalised),
# so nothing depends on the arbitrary rotation of Ritz vectors inside a near-degenerate cluster. For a cluster C with
# orthonormal block basis Q_C (``[n_block, r]``) and frequency k with token subspace T_k (the block's entries whose
# per-token rows are combinations of cos and sin of k, in any residual direction), the *alignment*
#     a(C, k) = ||Q_Cᵀ B_k||_F² / r = mean over the cluster's r dimensions of cos² of the principal angles
# between span(Q_C) and T_k. The T_k are mutually orthogonal, so Σ_k a(C, k) ≤ 1 and the share of the span in the
# union of a set S of planes is Σ_{k∈S} a(C, k).

#: The ε grid of the test (cluster resolution relative to the largest eigenvalue); the answer is given per ε.
EPS_GRID = (0.01, 0.02, 0.05)
#: A two-eigenvalue cluster *lies on* frequency k when more than this share of its span is in k's plane.
PAIR_SHARE = 0.5
#: The declared family of tests (Holm across them); the claim is supported when all three reject.
CIRCUIT_TESTS = ("concentration", "clusters are key frequencies", "same-key pairs")


def _token_coefficients(basis: Tensor, model: ModAddTransformer, block: str) -> Tensor:
    """The Fourier coefficients of a block basis ``[n_block, r]``: ``[p, d, r]`` (rows of :func:`fourier_basis`
    over the token axis; W_E's ``=`` row is outside every frequency's subspace and is dropped)."""
    p, d = model.p, model.d_model
    Q = torch.as_tensor(basis, dtype=torch.float64)
    r = Q.shape[1]
    if block == "W_E":
        tokens = Q.reshape(p + 1, d, r)[:p]                                    # [p, d, r]
    elif block == "W_U":
        tokens = Q.reshape(d, p, r).permute(1, 0, 2)                           # [p, d, r]
    else:
        raise ValueError(f"block={block!r} must be one of {list(FOURIER_BLOCKS)}")
    return torch.einsum("ft,tdr->fdr", _fourier_basis(p), tokens)


_FOURIER: dict[int, Tensor] = {}


def _fourier_basis(p: int) -> Tensor:
    """:func:`fourier_basis` (float64), computed once per p (the simulations read it thousands of times)."""
    if p not in _FOURIER:
        _FOURIER[p] = fourier_basis(p).double()
    return _FOURIER[p]


def frequency_alignment(basis: Tensor, model: ModAddTransformer, block: str, *, cosines: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Alignment of a subspace of ``block`` (orthonormal ``basis: [n_block, r]``, r ≥ 1) with every frequency's
    plane: ``(a ndarray[(p-1)/2 + 1], cos ndarray[(p-1)/2 + 1, min(r, 2)])`` — ``a[k]`` the sum of cos² of the
    principal angles between the span and frequency k's subspace, divided by r (index 0: the constant), and
    ``cos[k]`` the cosines of the (at most two) smallest principal angles with it (NaN unless ``cosines``). Both
    are invariant under any rotation of the basis."""
    coefficients = _token_coefficients(basis, model, block)                  # [p, d, r]
    r = coefficients.shape[2]
    n_freq = (model.p - 1) // 2
    rows = (coefficients ** 2).sum((1, 2)).numpy() / r                       # [p]
    a = np.concatenate([rows[:1], rows[1::2][:n_freq] + rows[2::2][:n_freq]])
    cos = np.full((n_freq + 1, min(r, 2)), np.nan)
    if cosines:
        for k in range(1, n_freq + 1):
            part = coefficients[2 * k - 1: 2 * k + 1].reshape(-1, r)        # [2d, r] = B_kᵀ Q
            cos[k] = torch.linalg.svdvals(part)[:cos.shape[1]].clamp(max=1.0).numpy()
    return a, cos


@dataclass(frozen=True)
class EigenClusters:
    """The complete ε-clusters of a spectrum's top eigenpairs, read in one per-token block.

    A cluster is *complete* when it does not hold the smallest of the computed eigenvalues (a cluster cut by the
    truncation at k is not a cluster). Attributes: ``eps`` (relative), ``members`` (list of index arrays, by
    descending eigenvalue), ``sizes`` ``ndarray[n]``, ``alignment`` ``ndarray[n, (p-1)/2 + 1]`` (:func:
    `frequency_alignment` of each cluster's orthonormalised block part), ``cos`` ``ndarray[n, (p-1)/2 + 1, 2]``
    (NaN-padded), ``block_weight`` ``ndarray[n]`` (mean share of the cluster's vectors' squared norm in the block).
    """

    eps: float
    block: str
    members: list
    sizes: np.ndarray
    alignment: np.ndarray
    cos: np.ndarray
    block_weight: np.ndarray


def eigen_clusters(values, vectors, model: ModAddTransformer, block: str, eps: float, *,
                   cosines: bool = True) -> EigenClusters:
    """The complete ε-clusters (``eps`` × |λ_1|, single linkage as :func:`hessian_core.cluster_labels`) of the top
    eigenpairs ``values: [k]`` (descending), ``vectors: [P, k]``, with their alignment to every frequency in
    ``block``."""
    from hessian_core import cluster_labels

    values = np.asarray(values, dtype=float)
    V = np.asarray(vectors, dtype=float)
    if values.ndim != 1 or V.ndim != 2 or V.shape[1] != values.size or values.size < 2:
        raise ValueError(f"values [k] and vectors [P, k] must agree with k >= 2, got {values.shape}, {V.shape}")
    if not np.all(np.diff(values) <= 0):
        raise ValueError("values must be in descending order (the top eigenvalues)")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps={eps!r} must be a positive number (relative to the largest eigenvalue)")
    labels = cluster_labels(values, eps * abs(values[0]) if values[0] != 0 else eps)
    sl = block_slices(model)[block]
    n_freq = (model.p - 1) // 2
    members, sizes, alignment, cos, weight = [], [], [], [], []
    for label in dict.fromkeys(labels.tolist()):                             # descending eigenvalue order
        idx = np.flatnonzero(labels == label)
        if values.size - 1 in idx:
            continue                                                         # cut by the truncation
        part = V[sl, idx]
        basis = orthonormal_basis(part)
        members.append(idx)
        sizes.append(idx.size)
        weight.append(float(((part ** 2).sum(0) / np.maximum((V[:, idx] ** 2).sum(0), 1e-300)).mean()))
        if basis.shape[1] == 0:
            alignment.append(np.zeros(n_freq + 1))
            cos.append(np.full((n_freq + 1, 2), np.nan))
            continue
        a, c = frequency_alignment(basis, model, block, cosines=cosines)
        alignment.append(a)
        cos.append(np.pad(c, ((0, 0), (0, 2 - c.shape[1])), constant_values=np.nan))
    return EigenClusters(eps=float(eps), block=block, members=members, sizes=np.array(sizes, dtype=int),
                         alignment=np.array(alignment).reshape(-1, n_freq + 1),
                         cos=np.array(cos).reshape(-1, n_freq + 1, 2), block_weight=np.array(weight))


def frequency_scores(clusters: EigenClusters) -> dict[str, np.ndarray]:
    """Per-frequency scores ``ndarray[(p-1)/2 + 1]`` (index k; 0 for the constant) whose sums over a frequency set S
    are the family's statistics (:func:`circuit_statistics`):

    * ``concentration``: ``mean_C a(C, k)`` — summed over S, the mean over complete clusters of the share of each
      cluster's span in the planes of S (each cluster counts once, whatever its size: per cluster, not pooled);
    * ``clusters are key frequencies``: ``max_C a(C, k) / |S|`` — summed over S, the mean over S of the best
      single cluster's alignment with the frequency (1 when every frequency of S has a cluster lying in its
      plane; a cluster spread over several planes scores only its share in each);
    * ``same-key pairs``: the number of two-eigenvalue clusters lying on frequency k
      (``a(C, k) > PAIR_SHARE``; a cluster lies on at most one frequency) — summed over S, the near-degenerate
      cos/sin pairs on the frequencies of S.

    The sums make every statistic read the whole set, so a set that shares one frequency with the key set does
    not tie with it (as a maximum over the set would)."""
    A = clusters.alignment
    n = A.shape[1] if A.ndim == 2 else 0
    if A.shape[0] == 0:
        return {name: np.zeros(n) for name in CIRCUIT_TESTS}
    pairs = clusters.sizes == 2
    return {"concentration": A.mean(0), "clusters are key frequencies": A.max(0),
            "same-key pairs": (A[pairs] > PAIR_SHARE).sum(0).astype(float) if pairs.any() else np.zeros(n)}


def circuit_statistics(clusters: EigenClusters, frequencies) -> dict[str, float]:
    """The family's three statistics for the frequency set ``frequencies`` (:func:`frequency_scores` summed over
    the set; ``clusters are key frequencies`` divided by its size)."""
    S = np.asarray(sorted({int(k) for k in frequencies}), dtype=int)
    if S.size == 0:
        raise ValueError("frequencies is empty")
    scores = frequency_scores(clusters)
    out = {name: float(v[S].sum()) for name, v in scores.items()}
    out["clusters are key frequencies"] /= S.size
    return out


#: Up to this many frequency sets the permutation null is enumerated (an exact test); beyond it, sampled.
EXACT_SETS = 5000


def frequency_set_draws(p: int, size: int, n_draws: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """The test's null: the images of a key set of ``size`` frequencies (of 1..(p-1)/2) under permutations of the
    frequency labels. Returns ``(sets [n, size], exact)``: every set when there are at most
    ``max(n_draws, EXACT_SETS)`` of them (``exact``: the key set is one of them, and the p-value is its rank),
    else ``n_draws`` uniformly random sets (Monte Carlo; the key set is exchangeable with each draw).

    Sets of *non-key* frequencies only (:func:`non_key_draws`) are not a valid null: given the per-frequency
    scores, a key set that scores high leaves lower scores to the others, so the key set is not exchangeable with
    non-key sets (measured on the rotated null in the tests: 18 % rejections per test at 5 %)."""
    import itertools

    n_freq = (p - 1) // 2
    if not 1 <= size < n_freq:
        raise ValueError(f"size={size} must lie in [1, {n_freq - 1}] (p={p} has {n_freq} frequencies)")
    if not (isinstance(n_draws, int) and n_draws >= 1):
        raise ValueError(f"n_draws={n_draws!r} must be a positive int")
    if math.comb(n_freq, size) <= max(n_draws, EXACT_SETS):
        return np.array(list(itertools.combinations(range(1, n_freq + 1), size)), dtype=int), True
    return np.array([np.sort(rng.choice(np.arange(1, n_freq + 1), size=size, replace=False))
                     for _ in range(n_draws)], dtype=int), False


def non_key_draws(p: int, key, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_draws, |K|]`` random sets of ``|K|`` distinct non-key frequencies (kept to measure, in the tests, why
    they are not the test's null: see :func:`frequency_set_draws`)."""
    ks = sorted({int(k) for k in key})
    others = np.array([k for k in range(1, (p - 1) // 2 + 1) if k not in ks])
    if not ks:
        raise ValueError("key is empty: there is nothing to test")
    if others.size < len(ks):
        raise ValueError(f"only {others.size} non-key frequencies for a null of {len(ks)} (p={p} too small)")
    return np.array([np.sort(rng.choice(others, size=len(ks), replace=False)) for _ in range(n_draws)], dtype=int)


@dataclass(frozen=True)
class CircuitTest:
    """The answer at one ε to "is an eigenvalue cluster a circuit?" (the family :data:`CIRCUIT_TESTS`).

    Attributes:
        eps, block, key: the resolution, the per-token block read, the key frequencies.
        n_clusters, n_pairs: complete clusters and two-eigenvalue clusters among them.
        statistic: ``{test: value}``; null_q95: ``{test: the null's 95th percentile}``.
        p_value: ``{test: permutation p-value}`` (:func:`circuit_test`); p_holm: Holm-adjusted over the family.
        rejected: ``{test: p_holm ≤ alpha}``; n_draws (the null's sets), exact (all sets enumerated), alpha.
    """

    eps: float
    block: str
    key: list
    n_clusters: int
    n_pairs: int
    statistic: dict
    null_q95: dict
    p_value: dict
    p_holm: dict
    rejected: dict
    n_draws: int
    exact: bool
    alpha: float

    @property
    def supported(self) -> bool:
        """The claim is supported at this ε: every test of the family rejects its null after Holm."""
        return bool(all(self.rejected.values()))

    @property
    def answer(self) -> str:
        return "yes" if self.supported else "no"

    @property
    def n_rejected(self) -> int:
        return int(sum(self.rejected.values()))


def circuit_test(clusters: EigenClusters, p: int, key, *, n_draws: int = 200, alpha: float = 0.05,
                 seed: int = 0, draws: np.ndarray | None = None, exact: bool = False) -> CircuitTest:
    """The family of :func:`circuit_statistics` for the key set against ``n_draws`` random frequency sets of the
    same size (:func:`frequency_set_draws`, or the given ``draws``), each a Monte-Carlo permutation p-value
    ``(1 + #{T* ≥ T}) / (1 + n_draws)``, Holm-adjusted across the three tests."""
    from .stats import holm

    if not (isinstance(n_draws, int) and n_draws >= 1):
        raise ValueError(f"n_draws={n_draws!r} must be a positive int")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must lie in (0, 1)")
    key = sorted({int(k) for k in key})
    if not key:
        raise ValueError("key is empty: there is nothing to test")
    if draws is None:
        draws, exact = frequency_set_draws(p, len(key), n_draws, np.random.default_rng(seed))
    observed = circuit_statistics(clusters, key)
    draws = np.asarray(draws, dtype=int)
    if draws.ndim != 2 or draws.shape[1] != len(key):
        raise ValueError(f"draws must be [n_draws, |key|={len(key)}], got {draws.shape}")
    scores = frequency_scores(clusters)
    null = {name: scores[name][draws].sum(1) / (len(key) if name == "clusters are key frequencies" else 1)
            for name in CIRCUIT_TESTS}
    extra = 0 if exact else 1
    p_value = {name: float((extra + np.sum(null[name] >= observed[name] - 1e-12)) / (extra + len(draws)))
               for name in CIRCUIT_TESTS}
    adjusted = holm([p_value[name] for name in CIRCUIT_TESTS])
    p_holm = dict(zip(CIRCUIT_TESTS, map(float, adjusted)))
    return CircuitTest(eps=clusters.eps, block=clusters.block, key=key, n_clusters=int(clusters.sizes.size),
                       n_pairs=int((clusters.sizes == 2).sum()), statistic=observed,
                       null_q95={n: float(np.quantile(null[n], 0.95)) for n in CIRCUIT_TESTS}, p_value=p_value,
                       p_holm=p_holm, rejected={n: bool(p_holm[n] <= alpha) for n in CIRCUIT_TESTS},
                       n_draws=len(draws), exact=bool(exact), alpha=alpha)


def circuit_tests(values, vectors, model: ModAddTransformer, key, *, block: str, eps_grid=EPS_GRID,
                  n_draws: int = 200, alpha: float = 0.05, seed: int = 0) -> list[CircuitTest]:
    """:func:`circuit_test` at every ε of ``eps_grid`` (the same null draws at every ε)."""
    draws, exact = frequency_set_draws(model.p, len(set(key)), n_draws, np.random.default_rng(seed))
    return [circuit_test(eigen_clusters(values, vectors, model, block, eps), model.p, key, draws=draws, exact=exact,
                         alpha=alpha) for eps in eps_grid]


def block_of_top_vectors(vectors, model: nn.Module) -> str:
    """The per-token block (W_E or W_U) holding more of the top vectors' squared norm: where the test reads them
    (one declared rule, not the better of two tests)."""
    masses = block_masses(vectors, model)
    return max(("W_E", "W_U"), key=lambda b: float(np.nansum(masses[b])))


# --- planted and null eigenpairs: the test's controls -----------------------------------------------------------


def _frequency_plane(model: ModAddTransformer, block: str, k: int, direction: Tensor) -> Tensor:
    """Two orthonormal vectors ``[n_block, 2]`` of frequency k's subspace of ``block``: cos_k ⊗ u and sin_k ⊗ u for
    the unit residual direction ``u``."""
    rows = frequency_rows(model.p, [k])                                      # [2, p]
    return token_subspace_basis(model, block, rows) @ torch.kron(torch.eye(2, dtype=torch.float64),
                                                                   direction.reshape(-1, 1))


#: Gap between consecutive planted eigenvalue pairs (and at least that below the last one in
#: :func:`planted_eigenpairs`): three times the largest ε of :data:`EPS_GRID`.
PLANTED_GAP = 0.15
#: Most key frequencies a planted spectrum holds with every pair separated by :data:`PLANTED_GAP` above 0.
MAX_PLANTED_PAIRS = 6


def _check_planted_key(key: list[int]) -> None:
    if not 1 <= len(key) <= MAX_PLANTED_PAIRS:
        raise ValueError(f"key={key!r} must hold 1 to {MAX_PLANTED_PAIRS} frequencies (planted pairs at 1, 0.85, "
                         "..., each 0.15 apart and above 0)")


def planted_eigenpairs(model: ModAddTransformer, key, *, block: str, k: int, strength: float = 1.0,
                       structure: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top eigenpairs ``(values [k] descending, vectors [P, k])`` with a known answer, in ``block``.

    The eigenvalues are one exactly degenerate pair per key frequency, at 1, 0.85, 0.7, … (gaps
    :data:`PLANTED_GAP` = 0.15 > every ε of :data:`EPS_GRID`), then ``k − 2|K|`` eigenvalues spread geometrically
    down from ``min(0.4, 1 − 0.15 |K|)``, a gap of at least 0.15 below the last pair (at most
    :data:`MAX_PLANTED_PAIRS` = 6 key frequencies: a seventh pair would sit at 0.1, the rest at or below 0). With
    ``structure`` the pair of frequency k spans a plane inside k's subspace (cos_k ⊗ u, sin_k ⊗ u, a random
    residual direction u, turned by a random rotation inside the pair, as a Ritz solver would return it), mixed
    with a random block direction at weight ``1 − strength`` (``strength = 1``: exactly in the plane; every vector
    is then orthonormalised in rank order); the other vectors are random. Without ``structure`` every vector is a Haar-random orthonormal frame of
    the block: the same eigenvalues, no frequency structure (the rotated null).
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"strength={strength!r} must lie in [0, 1]")
    key = sorted({int(x) for x in key})
    _check_planted_key(key)
    if k < 2 * len(key) + 1:
        raise ValueError(f"k={k} must exceed 2|key| = {2 * len(key)} (a truncated cluster is not read)")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    sl = block_slices(model)[block]
    n_block, P = sl.stop - sl.start, sum(p_.numel() for p_ in model.parameters())
    # the rest starts a full gap below the last pair (at five key frequencies it once started at the fifth pair's
    # 0.4, making a three-fold cluster of that pair and a random vector)
    values = np.concatenate([np.repeat(1.0 - PLANTED_GAP * np.arange(len(key)), 2),
                             min(0.4, 1.0 - PLANTED_GAP * len(key)) * np.geomspace(1, 0.05, k - 2 * len(key))])
    noise = torch.randn(n_block, k, generator=gen, dtype=torch.float64)
    if structure:
        columns = []
        for f in key:
            u = torch.randn(model.d_model, generator=gen, dtype=torch.float64)
            plane = _frequency_plane(model, block, f, u / u.norm())
            angle = rng.uniform(0, 2 * np.pi)
            turn = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            columns.append(plane @ turn)
        planted = torch.cat(columns, 1)
        planted = torch.cat([math.sqrt(strength) * planted + math.sqrt(1 - strength) * noise[:, :planted.shape[1]]
                             / math.sqrt(n_block), noise[:, planted.shape[1]:]], 1)
    else:
        planted = noise
    Q, R = torch.linalg.qr(planted)
    Q = Q * torch.sign(torch.diagonal(R))
    vectors = np.zeros((P, k))
    vectors[sl] = Q.numpy()
    return values, vectors


def planted_curvature_operator(model: ModAddTransformer, key, *, block: str, floor: float | None = None,
                               structure: bool = True, seed: int = 0) -> LinearOperator:
    """A curvature matrix on the model's parameters whose top eigenspaces are *provably* the key frequencies'
    planes: ``H = Σ_i λ_i Π_i + (I − Π) D (I − Π)`` with ``Π_i`` the projector onto the plane of key frequency i in
    ``block`` (cos ⊗ u_i, sin ⊗ u_i; λ_i = 1, 0.85, …), ``Π = Σ Π_i``, and ``D`` diagonal with entries uniform in
    [0, ``floor``) (default ``min(0.3, λ_last − 0.1)``; at most ``λ_last − 0.1``, twice the largest ε of
    :data:`EPS_GRID`, with ``λ_last`` the last plane's value; at most :data:`MAX_PLANTED_PAIRS` planes). Each
    ``Π_i`` plane is an eigenspace of H with eigenvalue λ_i (H Π_i = λ_i Π_i, since the planes are orthogonal to
    each other and to the range of the second term), and every other eigenvalue is below ``floor``; so the top
    ε-clusters, for ε below the gaps (0.15 between planes, ≥ 0.1 below the last), are exactly the planes. Without
    ``structure`` the planes are random 2-planes of the block (the same spectrum, no frequency structure).
    ``LinearOperator [P, P]``."""
    key = sorted({int(x) for x in key})
    _check_planted_key(key)
    last = 1.0 - PLANTED_GAP * (len(key) - 1)
    floor = min(0.3, last - 0.1) if floor is None else floor
    if not 0 < floor <= last - 0.1 + 1e-12:
        raise ValueError(f"floor={floor!r} must lie in (0, {last - 0.1:.2f}]: 0.1 below the smallest planted "
                         f"eigenvalue {last:.2f}")
    gen = torch.Generator().manual_seed(seed)
    sl = block_slices(model)[block]
    P = sum(p_.numel() for p_ in model.parameters())
    n_block = sl.stop - sl.start
    planes = []
    for f in key:
        u = torch.randn(model.d_model, generator=gen, dtype=torch.float64)
        planes.append(_frequency_plane(model, block, f, u / u.norm()) if structure else
                      torch.linalg.qr(torch.randn(n_block, 2, generator=gen, dtype=torch.float64))[0])
    if not structure:                                            # orthogonalise the random planes jointly
        joint = torch.linalg.qr(torch.cat(planes, 1))[0]
        planes = [joint[:, 2 * i: 2 * i + 2] for i in range(len(key))]
    U = np.zeros((P, 2 * len(key)))
    U[sl] = torch.cat(planes, 1).numpy()
    lam = np.repeat(1.0 - 0.15 * np.arange(len(key)), 2)
    D = floor * np.random.default_rng(seed).uniform(0, 1, P)

    def matmat(X):
        X = np.asarray(X, dtype=float).reshape(P, -1)
        C = U.T @ X
        rest = X - U @ C
        rest = D[:, None] * rest
        return U @ (lam[:, None] * C) + rest - U @ (U.T @ rest)

    return LinearOperator((P, P), matvec=lambda x: matmat(x)[:, 0], matmat=matmat, dtype=np.float64)


def decision_error_rates(model: ModAddTransformer, key, *, block: str, k: int, n_sims: int, n_draws: int,
                         n_power: int | None = None,
                         eps: float, strengths=(1.0, 0.3, 0.1), alpha: float = 0.05, seed: int = 0,
                         draws: str = "permutation") -> dict[str, float]:
    """The whole decision's error rates at ``n_draws`` null draws, simulated on the model's block and key set:
    ``false_positive``: share of ``n_sims`` rotated nulls (:func:`planted_eigenpairs` without structure) where
    :func:`circuit_test` answers "yes"; ``power_<s>``: share of ``n_power`` (default ``n_sims``) planted cases at
    each strength ``s`` where it does;
    and ``fp_<test>``: each test's own rejection rate (unadjusted p ≤ alpha) on the nulls. ``draws="non-key"``
    measures the same with :func:`non_key_draws` as the null (to show why it is not used)."""
    if draws not in ("permutation", "non-key"):
        raise ValueError(f"draws={draws!r} must be 'permutation' or 'non-key'")

    def test(values, vectors, s):
        rng = np.random.default_rng(s)
        sets, exact = (frequency_set_draws(model.p, len(set(key)), n_draws, rng) if draws == "permutation" else
                       (non_key_draws(model.p, key, n_draws, rng), False))
        return circuit_test(eigen_clusters(values, vectors, model, block, eps, cosines=False), model.p, key,
                            alpha=alpha, draws=sets, exact=exact)

    out: dict[str, float] = {}
    null_rejections = {name: 0 for name in CIRCUIT_TESTS}
    yes = 0
    for i in range(n_sims):
        values, vectors = planted_eigenpairs(model, key, block=block, k=k, structure=False, seed=seed + i)
        t = test(values, vectors, seed + i)
        yes += t.supported
        for name in CIRCUIT_TESTS:
            null_rejections[name] += t.p_value[name] <= alpha
    out["false_positive"] = yes / n_sims
    out.update({f"fp_{name}": null_rejections[name] / n_sims for name in CIRCUIT_TESTS})
    n_power = n_sims if n_power is None else n_power
    for s in strengths:
        hits = 0
        for i in range(n_power):
            values, vectors = planted_eigenpairs(model, key, block=block, k=k, strength=s, seed=seed + n_sims + i)
            hits += test(values, vectors, seed + n_sims + i).supported
        out[f"power_{s:g}"] = hits / n_power
    return out


def hessian_top_eigenpairs(model: nn.Module, batch, k: int, *, tol: float = 1e-5, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The Hessian's ``k`` largest eigenpairs of the mean cross-entropy on ``batch`` (Lanczos, top end only):
    ``(values ndarray[k] descending, vectors ndarray[P, k])``; a Lanczos run that exhausts its cap is solved again
    as :func:`curvature_eigenpairs` does (:func:`_lanczos_pairs`)."""
    op = hessian_operator(model, nn.CrossEntropyLoss(), _split(batch))
    values, vectors = _lanczos_pairs(op, k, which="largest", tol=tol, seed=seed, block_size=1)
    order = np.argsort(np.asarray(values))[::-1]
    return np.asarray(values)[order], np.asarray(vectors)[:, order]


def principal_cosines(A, B) -> np.ndarray:
    """Cosines of the principal angles between the column spans of ``A: [n, a]`` and ``B: [n, b]`` (descending,
    ``min(rank)`` of them; 1 = a shared direction, 0 = orthogonal)."""
    QA, QB = orthonormal_basis(A), orthonormal_basis(B)
    return torch.linalg.svdvals(QA.T @ QB).clamp(max=1.0).numpy()
