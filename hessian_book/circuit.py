"""Nanda et al.'s progress measures for the modular-addition transformer ("Progress measures for grokking via
mechanistic interpretability", ICLR 2023; reference code: github.com/mechanistic-interpretability-grokking/
progress-measures-paper, ``helpers.py`` and ``transformers.py``).

A trained one-layer transformer computes ``a + b mod p`` with a few *key frequencies* ``k`` (``w_k = 2πk/p``):
its logits are approximately ``L[a, b, c] ≈ Σ_k α_k cos(w_k (a + b − c))`` plus a per-class bias. This module
reads the model's intermediate activations and measures how much of its behaviour that circuit explains:

* :func:`all_pairs`, :func:`residual_stream`, :func:`mlp_activations`, :func:`logits_table` evaluate the model on
  all ``p²`` inputs exactly as :meth:`ModAddTransformer.forward` does;
* :func:`logit_components` splits a logits table ``[p, p, p]`` (indexed ``[a, b, c]``) into the key-frequency part
  and the rest, in closed form (see its docstring);
* :func:`restricted_loss_from_logits` / :func:`excluded_loss_from_logits` (and :func:`restricted_loss`,
  :func:`excluded_loss` on a model) are the cross-entropies of the logits restricted to, or with removed, the
  key-frequency components;
* :func:`embedding_gini`, :func:`unembedding_gini` measure how sparse ``W_E`` and ``W_U`` are in frequency;
* :func:`progress_measures` bundles all of them for one checkpoint;
* :func:`planted_circuit_model` builds, by hand, a :class:`ModAddTransformer` that implements the circuit (for
  tests and as a reference point).

Everything is computed in float64 under ``torch.no_grad`` except :func:`residual_stream`, which keeps the model's
dtype and the autograd graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from hessian_book.fourier import frequency_projector, fourier_norms, gini, key_frequencies
from hessian_book.models import ModAddTransformer

__all__ = ["all_pairs", "residual_stream", "mlp_activations", "logits_table", "logit_components",
           "restricted_loss_from_logits", "excluded_loss_from_logits", "restricted_loss", "excluded_loss",
           "embedding_gini", "unembedding_gini", "progress_measures", "planted_circuit_model", "DIRECTIONS"]

#: The two choices of key-frequency directions (see :func:`logit_components`).
DIRECTIONS = ("a+b-c", "a+b")


# ----------------------------------------------------------------------------------------------------------------
# Evaluating the model on every input
# ----------------------------------------------------------------------------------------------------------------

def _check_modulus(p, *, name: str = "p") -> int:
    if isinstance(p, bool) or not isinstance(p, Integral) or int(p) < 3 or int(p) % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 3, got {name}={p!r}")
    return int(p)


def _check_model(model, p: int | None = None) -> ModAddTransformer:
    if not isinstance(model, ModAddTransformer):
        raise TypeError(f"model must be a ModAddTransformer, got model of type {type(model).__name__}")
    if p is not None and model.p != p:
        raise ValueError(f"p={p} does not match the model's modulus model.p={model.p}")
    return model


def all_pairs(p: int, *, device: torch.device | str | None = None) -> Tensor:
    """Every input ``[a, b, =]`` in a-major order.

    Args:
        p: the modulus (the ``=`` token is ``p``).
        device: where to build the tensor (default: CPU).

    Returns:
        ``LongTensor[p * p, 3]``; row ``a * p + b`` is ``[a, b, p]``.
    """
    if isinstance(p, bool) or not isinstance(p, Integral) or int(p) < 1:
        raise ValueError(f"p must be a positive integer, got p={p!r}")
    p = int(p)
    a, b = torch.meshgrid(torch.arange(p, device=device), torch.arange(p, device=device), indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p, device=device)], dim=1)


def residual_stream(model: ModAddTransformer, tokens: Tensor) -> dict[str, Tensor]:
    """The intermediate activations of :meth:`ModAddTransformer.forward`, computed by the same operations.

    Like ``forward``, only the ``=`` (last) query is computed. Keys and shapes (``N`` inputs, ``d = d_model``,
    ``h = n_heads``):

    * ``"embed"``: ``[N, 3, d]``, token plus positional embedding ``W_E[tokens] + W_pos``;
    * ``"attn_pattern"``: ``[N, h, 3]``, attention of the ``=`` query over the three positions (rows sum to 1);
    * ``"attn_out"``: ``[N, d]``, the attention block's output at ``=`` (``z @ W_O``);
    * ``"resid_mid"``: ``[N, d]``, ``embed[:, -1] + attn_out``;
    * ``"mlp_pre"``, ``"mlp_post"``: ``[N, d_mlp]``, ``resid_mid @ W_in + b_in`` and its ReLU (only with an MLP);
    * ``"mlp_out"``: ``[N, d]``, ``mlp_post @ W_out + b_out`` (only with an MLP);
    * ``"resid_final"``: ``[N, d]``, the residual stream read by the unembedding;
    * ``"logits"``: ``[N, p]``, ``resid_final @ W_U`` (equal to ``model(tokens)``).

    Tensors keep the model's dtype and the autograd graph (wrap the call in ``torch.no_grad()`` if unneeded).

    Args:
        model: a :class:`ModAddTransformer`.
        tokens: ``LongTensor[N, 3]`` of ``[a, b, p]``.
    """
    model = _check_model(model)
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[1] != 3:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a LongTensor of shape [N, 3], got {shape}")
    x = model.W_E[tokens] + model.W_pos
    n, _, d = x.shape
    h, dh = model.n_heads, d // model.n_heads
    q = (x[:, -1] @ model.W_Q).view(n, h, dh)
    k = (x @ model.W_K).view(n, 3, h, dh)
    v = (x @ model.W_V).view(n, 3, h, dh)
    scores = torch.einsum("nhd,nshd->nhs", q, k) / math.sqrt(dh)
    attn = torch.softmax(scores, dim=-1)
    z = torch.einsum("nhs,nshd->nhd", attn, v).reshape(n, d)
    attn_out = z @ model.W_O
    resid = x[:, -1] + attn_out
    out = {"embed": x, "attn_pattern": attn, "attn_out": attn_out, "resid_mid": resid}
    if model.d_mlp is not None:
        pre = resid @ model.W_in + model.b_in
        post = torch.relu(pre)
        mlp_out = post @ model.W_out + model.b_out
        resid = resid + mlp_out
        out.update(mlp_pre=pre, mlp_post=post, mlp_out=mlp_out)
    out["resid_final"] = resid
    out["logits"] = resid @ model.W_U
    return out


def mlp_activations(model: ModAddTransformer, p: int | None = None) -> Tensor:
    """The MLP's ReLU activations at the ``=`` position for every input.

    Args:
        model: a :class:`ModAddTransformer` with an MLP (``d_mlp`` not ``None``).
        p: the modulus; default ``model.p`` (if given, it must equal ``model.p``).

    Returns:
        float64 ``Tensor[p, p, d_mlp]``; entry ``[a, b, n]`` is neuron ``n`` on input ``[a, b, =]``.

    Raises:
        ValueError: the model has no MLP, or ``p`` differs from ``model.p``.
    """
    model = _check_model(model, p)
    if model.d_mlp is None:
        raise ValueError("model has no MLP (model.d_mlp is None): there are no neuron activations to read")
    with torch.no_grad():
        acts = residual_stream(model, all_pairs(model.p, device=model.W_E.device))["mlp_post"]
    return acts.to(torch.float64).reshape(model.p, model.p, model.d_mlp)


def logits_table(model: ModAddTransformer, p: int | None = None) -> Tensor:
    """The model's logits for every input and class.

    Args:
        model: a :class:`ModAddTransformer`.
        p: the modulus; default ``model.p`` (if given, it must equal ``model.p``).

    Returns:
        float64 ``Tensor[p, p, p]``; entry ``[a, b, c]`` is the logit of class ``c`` on input ``[a, b, =]``.
    """
    model = _check_model(model, p)
    with torch.no_grad():
        logits = model(all_pairs(model.p, device=model.W_E.device))
    return logits.to(torch.float64).reshape(model.p, model.p, model.p)


# ----------------------------------------------------------------------------------------------------------------
# Restricted and excluded loss
# ----------------------------------------------------------------------------------------------------------------

def _check_table(logits) -> tuple[Tensor, int]:
    t = torch.as_tensor(logits)
    if t.ndim != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]):
        raise ValueError(f"logits must be a table of shape [p, p, p] indexed [a, b, c], got shape "
                         f"{tuple(t.shape)}")
    p = _check_modulus(int(t.shape[0]), name="logits.shape[0]")
    t = t.detach().to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError("logits has non-finite entries (nan or inf)")
    return t, p


def _check_directions(directions: str) -> str:
    if directions not in DIRECTIONS:
        raise ValueError(f"directions must be one of {DIRECTIONS}, got directions={directions!r}")
    return directions


def logit_components(logits, frequencies: Iterable[int], *, directions: str = "a+b-c") -> tuple[Tensor, Tensor]:
    """Split a logits table into its key-frequency components and the rest.

    Let ``L`` be the ``[p, p, p]`` table and ``Lc[a, b, c] = L[a, b, c] − mean_c' L[a, b, c']`` its centring over
    classes (a per-input constant, which no softmax sees). ``Lc`` is split orthogonally (Frobenius inner product
    over all ``p³`` entries) as ``Lc = restricted + excluded`` where ``restricted`` is the orthogonal projection of
    ``Lc`` onto the span of the key-frequency directions:

    * ``directions="a+b-c"`` (default): the ``2·|K|`` directions ``cos(w_k (a + b − c))`` and
      ``sin(w_k (a + b − c))``, ``k ∈ K``, ``w_k = 2πk/p`` — the exact form of the ideal circuit's logits. These
      directions are mutually orthogonal, orthogonal to every function of ``(a, b)`` alone and of ``c`` alone.
      Closed form: with ``r = (a + b − c) mod p`` and ``g[r]`` the mean of ``Lc`` over the ``p²`` triples with
      residue ``r``, the projection is ``restricted[a, b, c] = (P_K g)[r]`` with ``P_K`` the token-space
      projector onto frequencies ``K`` (:func:`hessian_book.fourier.frequency_projector`,
      ``P_K[x, y] = (2/p) Σ_k cos(w_k (x − y))``). Indeed the direction ``cos(w_k (r − r0))`` sampled on the
      triples is constant on residue classes of equal size ``p²``, so projecting ``Lc`` onto such functions of
      ``r`` is projecting the class means ``g``.
    * ``directions="a+b"``: what the reference code does (``get_component_cos_xpy``/``_sin_xpy``): for every
      class ``c`` separately, project the ``p × p`` map ``Lc[:, :, c]`` onto ``cos(w_k (a + b))`` and
      ``sin(w_k (a + b))`` — a ``2·|K|·p``-dimensional subspace containing the one above (it also keeps, e.g.,
      ``cos(w_k (a + b + c))`` and ``cos(w_k (a + b)) · f(c)`` for any ``f``). Closed form: with
      ``s = (a + b) mod p`` and ``q[s, c]`` the mean of ``Lc[:, :, c]`` over the ``p`` pairs with ``a + b ≡ s``,
      ``restricted[a, b, c] = (P_K q)[s, c]``.

    In both cases ``restricted`` has zero mean over ``(a, b)`` for every ``c`` and over ``c`` for every
    ``(a, b)``, and ``(restricted * excluded).sum() == 0``.

    Args:
        logits: ``[p, p, p]`` tensor or array indexed ``[a, b, c]`` (for instance :func:`logits_table`); ``p`` odd.
        frequencies: the key frequencies, integers in ``1, …, (p − 1)/2`` (duplicates count once; may be empty).
        directions: ``"a+b-c"`` or ``"a+b"`` (see above).

    Returns:
        ``(restricted, excluded)``, two float64 ``Tensor[p, p, p]`` with ``restricted + excluded == Lc``.

    Raises:
        ValueError: ``logits`` is not a finite ``[p, p, p]`` table with odd ``p``, a frequency is out of range, or
            ``directions`` is unknown (the message names the argument).
    """
    L, p = _check_table(logits)
    directions = _check_directions(directions)
    P_K = frequency_projector(p, list(frequencies), device=L.device)             # [p, p]
    Lc = L - L.mean(dim=2, keepdim=True)
    idx = torch.arange(p, device=L.device)
    if directions == "a+b-c":
        r = (idx[:, None, None] + idx[None, :, None] - idx[None, None, :]) % p     # [p, p, p]
        g = torch.zeros(p, dtype=torch.float64, device=L.device).index_add_(0, r.reshape(-1), Lc.reshape(-1))
        restricted = (P_K @ (g / (p * p)))[r]
    else:
        s = ((idx[:, None] + idx[None, :]) % p).reshape(-1)                        # [p²]
        q = torch.zeros(p, p, dtype=torch.float64, device=L.device).index_add_(0, s, Lc.reshape(p * p, p))
        restricted = (P_K @ (q / p))[s].reshape(p, p, p)
    return restricted, Lc - restricted


def _pair_indices(p: int, inputs, labels, device) -> tuple[Tensor, Tensor]:
    """Flat pair indices ``a * p + b`` ``[N]`` and labels ``[N]`` (default: all pairs, labels ``(a + b) mod p``)."""
    if inputs is None:
        index = torch.arange(p * p, device=device)
        pairs = torch.stack([index // p, index % p], dim=1)
    else:
        pairs = torch.as_tensor(inputs, device=device)
        if pairs.ndim != 2 or pairs.shape[1] not in (2, 3) or pairs.is_floating_point() or pairs.is_complex():
            raise ValueError(f"inputs must be an integer tensor of shape [N, 3] ([a, b, =]) or [N, 2] ([a, b]), "
                             f"got inputs of shape {tuple(pairs.shape)} and dtype {pairs.dtype}")
        pairs = pairs[:, :2].long()
        if pairs.shape[0] == 0:
            raise ValueError("inputs is empty; the loss needs at least one input")
        if (pairs < 0).any() or (pairs >= p).any():
            raise ValueError(f"inputs must hold tokens a, b in 0..{p - 1}, got values outside that range")
        index = pairs[:, 0] * p + pairs[:, 1]
    if labels is None:
        labels = (pairs[:, 0] + pairs[:, 1]) % p
    else:
        labels = torch.as_tensor(labels, device=device)
        if labels.ndim != 1 or labels.shape[0] != index.shape[0] or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape [{index.shape[0]}] (one per input), got "
                             f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype}")
        labels = labels.long()
        if (labels < 0).any() or (labels >= p).any():
            raise ValueError(f"labels must be classes in 0..{p - 1}, got values outside that range")
    return index, labels


def _cross_entropy(table: Tensor, index: Tensor, labels: Tensor) -> float:
    p = table.shape[0]
    return float(F.cross_entropy(table.reshape(p * p, p)[index], labels))


def restricted_loss_from_logits(logits, frequencies: Iterable[int], *, inputs=None, labels=None,
                                directions: str = "a+b-c", bias_correction: bool = True) -> float:
    """Cross-entropy of the logits restricted to the key-frequency components (Nanda et al.'s restricted loss).

    The restricted logits are ``restricted[a, b, c] + β[c]`` with ``restricted`` from :func:`logit_components`
    and ``β[c] = mean_{a, b} L[a, b, c]`` the per-class bias averaged over all ``p²`` inputs — the reference
    code's ``bias_correction`` (``test_logits(..., bias_correction=True, original_logits=logits)`` adds
    ``mean_batch(original − restricted)``, which is ``β`` because ``restricted`` has zero mean over inputs). The
    per-input mean over classes is dropped (softmax ignores it). Everything else, in particular all components
    at non-key frequencies, is ablated. For a model whose logits are exactly ``Σ_k α_k cos(w_k (a + b − c))``
    plus any per-input and per-class offsets, the restricted loss equals the full loss.

    Args:
        logits: ``[p, p, p]`` table indexed ``[a, b, c]``.
        frequencies: the key frequencies (see :func:`logit_components`).
        inputs: ``[N, 3]`` tokens ``[a, b, =]`` or ``[N, 2]`` pairs on which to evaluate; default all ``p²``
            pairs. The reference evaluates it on all pairs during training (``calculate_trig_loss``, mode
            ``'all'``); :func:`progress_measures` reports both the training-set and the all-pairs value.
        labels: ``[N]`` classes; default ``(a + b) mod p``.
        directions: ``"a+b-c"`` or ``"a+b"`` (see :func:`logit_components`).
        bias_correction: add ``β`` back (default, as the reference); ``False`` keeps only the components.

    Returns:
        The mean cross-entropy (float64, natural log).
    """
    L, p = _check_table(logits)
    restricted, _ = logit_components(L, frequencies, directions=directions)
    if bias_correction:
        restricted = restricted + L.mean(dim=(0, 1), keepdim=True)
    index, labels = _pair_indices(p, inputs, labels, L.device)
    return _cross_entropy(restricted, index, labels)


def excluded_loss_from_logits(logits, frequencies: Iterable[int], *, inputs=None, labels=None,
                              directions: str = "a+b-c") -> float:
    """Cross-entropy of the logits with the key-frequency components removed (Nanda et al.'s excluded loss).

    The excluded logits are ``L − restricted`` (equivalently, for the softmax, the ``excluded`` part of
    :func:`logit_components` plus the per-class bias). All key frequencies are removed at once; the reference
    code's ``calculate_excluded_loss`` removes one key frequency at a time and returns the list of losses (use
    this function with a single frequency for that). The reference evaluates it on the training pairs.

    Args:
        logits: ``[p, p, p]`` table indexed ``[a, b, c]``.
        frequencies: the key frequencies (see :func:`logit_components`).
        inputs: ``[N, 3]`` or ``[N, 2]`` inputs on which to evaluate (the training pairs for the progress
            measure); default all ``p²`` pairs.
        labels: ``[N]`` classes; default ``(a + b) mod p``.
        directions: ``"a+b-c"`` or ``"a+b"`` (see :func:`logit_components`).

    Returns:
        The mean cross-entropy (float64, natural log).
    """
    L, p = _check_table(logits)
    restricted, _ = logit_components(L, frequencies, directions=directions)
    index, labels = _pair_indices(p, inputs, labels, L.device)
    return _cross_entropy(L - restricted, index, labels)


def restricted_loss(model: ModAddTransformer, p: int, frequencies: Iterable[int], *, inputs=None, labels=None,
                    directions: str = "a+b-c", bias_correction: bool = True) -> float:
    """:func:`restricted_loss_from_logits` of ``logits_table(model, p)`` (see there for the options)."""
    return restricted_loss_from_logits(logits_table(model, p), frequencies, inputs=inputs, labels=labels,
                                       directions=directions, bias_correction=bias_correction)


def excluded_loss(model: ModAddTransformer, p: int, frequencies: Iterable[int], *, inputs=None, labels=None,
                  directions: str = "a+b-c") -> float:
    """:func:`excluded_loss_from_logits` of ``logits_table(model, p)`` (see there for the options)."""
    return excluded_loss_from_logits(logits_table(model, p), frequencies, inputs=inputs, labels=labels,
                                     directions=directions)


# ----------------------------------------------------------------------------------------------------------------
# Fourier sparsity of the embeddings
# ----------------------------------------------------------------------------------------------------------------

def _frequency_gini(W: Tensor, p: int, constant: bool) -> float:
    norms = fourier_norms(W.detach(), p)                                          # [(p + 1)/2], index 0 constant
    return gini(norms if constant else norms[1:])


def embedding_gini(model: ModAddTransformer, *, constant: bool = False) -> float:
    """Gini coefficient of the token embedding's norms per frequency.

    The norms are :func:`hessian_book.fourier.fourier_norms` of ``W_E[:p]`` (the ``=`` row dropped): one norm per
    frequency ``k = 1, …, (p − 1)/2`` with its cosine and sine rows together (a phase-invariant quantity), the
    constant excluded by default — it is not a frequency, and a shared offset of all token embeddings carries no
    information about the token. Nanda et al. report the Gini of the embedding's norms "in the Fourier basis";
    here cosine and sine are pooled so that the measure does not depend on the phase of each frequency. ``0`` when
    every frequency has the same norm, ``1 − 2/(p − 1)`` when one frequency carries everything.

    Args:
        model: a :class:`ModAddTransformer` with odd ``p``.
        constant: include the constant component as one more entry.
    """
    model = _check_model(model)
    return _frequency_gini(model.W_E[: model.p], model.p, constant)


def unembedding_gini(model: ModAddTransformer, *, constant: bool = False) -> float:
    """Gini coefficient of the unembedding's norms per frequency: as :func:`embedding_gini` for ``W_U.T``
    (``[p, d_model]``, one row per output class). The constant component of ``W_U.T`` adds the same amount to
    every logit and is invisible to the softmax, another reason to exclude it by default."""
    model = _check_model(model)
    return _frequency_gini(model.W_U.T, model.p, constant)


# ----------------------------------------------------------------------------------------------------------------
# All measures for one checkpoint
# ----------------------------------------------------------------------------------------------------------------

def progress_measures(model: ModAddTransformer, p: int, *, train, frequencies: Iterable[int] | None = None,
                      test=None, directions: str = "a+b-c") -> dict:
    """Nanda et al.'s progress measures of one checkpoint.

    Args:
        model: a :class:`ModAddTransformer` with an MLP.
        p: its modulus (must equal ``model.p``).
        train: ``(inputs [N, 3], labels [N])``, the training pairs (e.g. ``modular_addition_split(...)["train"]``).
        frequencies: the key frequencies. Nanda et al. use each run's *final* key frequencies at every checkpoint:
            pass them. Default: ``fourier.key_frequencies(mlp_activations(model))`` of this checkpoint.
        test: optional ``(inputs, labels)``; adds ``"test_loss"``.
        directions: the key-frequency directions (see :func:`logit_components`).

    Returns:
        A dict with

        * ``"key_frequencies"``: sorted list of ints (the ones used);
        * ``"train_loss"``: cross-entropy of the model on ``train``;
        * ``"restricted_loss"``: :func:`restricted_loss_from_logits` on ``train``;
        * ``"restricted_loss_all"``: the same on all ``p²`` pairs (the reference code's choice);
        * ``"excluded_loss"``: :func:`excluded_loss_from_logits` on ``train`` (all key frequencies removed);
        * ``"gini_embedding"``, ``"gini_unembedding"``: :func:`embedding_gini`, :func:`unembedding_gini`;
        * ``"test_loss"`` if ``test`` is given.

        Losses are floats (float64 cross-entropy, natural log).

    Raises:
        ValueError: ``p`` differs from ``model.p``, the model has no MLP (when ``frequencies`` is not given),
            ``train``/``test`` is not an ``(inputs, labels)`` pair, or a frequency is out of range.
    """
    model = _check_model(model, p)
    p = _check_modulus(p)

    def split(pair, name):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name} must be an (inputs, labels) pair, got {name} of type {type(pair).__name__}")
        return pair

    train_inputs, train_labels = split(train, "train")
    if frequencies is None:
        frequencies = key_frequencies(mlp_activations(model, p))
    else:
        frequencies = list(frequencies)
        frequency_projector(p, frequencies)                                       # validates the frequencies
        frequencies = sorted({int(k) for k in frequencies})
    table = logits_table(model, p)
    index, labels = _pair_indices(p, train_inputs, train_labels, table.device)
    out = {
        "key_frequencies": list(frequencies),
        "train_loss": _cross_entropy(table, index, labels),
        "restricted_loss": restricted_loss_from_logits(table, frequencies, inputs=train_inputs, labels=train_labels,
                                                       directions=directions),
        "restricted_loss_all": restricted_loss_from_logits(table, frequencies, directions=directions),
        "excluded_loss": excluded_loss_from_logits(table, frequencies, inputs=train_inputs, labels=train_labels,
                                                   directions=directions),
        "gini_embedding": embedding_gini(model),
        "gini_unembedding": unembedding_gini(model),
    }
    if test is not None:
        test_inputs, test_labels = split(test, "test")
        t_index, t_labels = _pair_indices(p, test_inputs, test_labels, table.device)
        out["test_loss"] = _cross_entropy(table, t_index, t_labels)
    return out


# ----------------------------------------------------------------------------------------------------------------
# A hand-built model implementing the circuit
# ----------------------------------------------------------------------------------------------------------------

# Coefficient of cos(2x) in the Fourier series of ReLU(cos x) = 1/π + cos(x)/2 + (2/(3π)) cos(2x) − …
_RELU_COS_SECOND_HARMONIC = 2.0 / (3.0 * math.pi)


def planted_circuit_model(p: int, frequencies: Iterable[int], *, d_model: int | None = None,
                          d_mlp: int | None = None, n_heads: int = 1, scale: float = 10.0,
                          seed: int = 0) -> ModAddTransformer:
    """A :class:`ModAddTransformer` whose weights implement Nanda et al.'s algorithm by hand.

    With ``K`` the frequencies (``|K| = m``), in a residual basis rotated by a random orthogonal matrix:

    * embedding: token ``t`` ↦ ``(cos w_k t, sin w_k t)_k`` in the first ``2m`` coordinates; the ``=`` token and
      the positions embed to 0;
    * attention: ``W_Q = W_K = 0`` gives uniform attention ``1/3`` over the three positions, ``W_V = 3·I``,
      ``W_O = I``, so the ``=`` position holds ``e(a) + e(b)``;
    * MLP: for each ``k``, ``M = d_mlp // m`` neurons with phases ``φ_j = 2πj/M + φ0_k`` compute
      ``ReLU(cos(w_k a + φ_j) + cos(w_k b + φ_j)) = ReLU(2 cos(w_k (a − b)/2) cos(w_k (a + b)/2 + φ_j))``; their
      second harmonic in ``φ`` is ``∝ |cos(w_k (a − b)/2)| cos(w_k (a + b) + 2φ_j)``, which ``W_out`` (weights
      ``cos 2φ_j``, ``−sin 2φ_j``) reads into the coordinates ``2m + 2i, 2m + 2i + 1`` as ``cos, sin(w_k (a + b))``
      (times that factor; other harmonics cancel over the ``M`` equally spaced phases up to aliasing at
      ``j ≡ ±2 mod M``, whose coefficients are below 9% of the second's for ``M >= 4``);
    * unembedding: ``logit_c = scale · Σ_k |cos(w_k (a − b)/2)| cos(w_k (a + b − c))`` (approximately); the
      factor is positive for odd ``p``, so the argmax is ``c = a + b mod p``.

    The MLP neurons are single-frequency, so :func:`hessian_book.fourier.key_frequencies` of
    :func:`mlp_activations` recovers ``K``. The logits are not exactly of the form
    ``Σ α_k cos(w_k (a + b − c))`` (the factor depends on ``a − b``), so the restricted loss is near, not equal
    to, the full loss.

    Args:
        p: modulus, odd ``>= 3``.
        frequencies: the planted frequencies in ``1, …, (p − 1)/2`` (non-empty; duplicates count once).
        d_model: residual width, ``>= 4·m`` and divisible by ``n_heads`` (default ``4·m``).
        d_mlp: MLP width, ``>= 4·m`` (default ``8·m``); ``d_mlp // m`` neurons per frequency, the rest dead.
        n_heads: attention heads (all attend uniformly).
        scale: logit amplitude per unit ``|cos(w_k (a − b)/2)|``.
        seed: seed of the residual-basis rotation and the per-frequency phase offsets.

    Returns:
        The model (float32 parameters, like any :class:`ModAddTransformer`).
    """
    p = _check_modulus(p)
    ks = list(frequencies)
    frequency_projector(p, ks)                                                    # validates the frequencies
    ks = sorted({int(k) for k in ks})
    m = len(ks)
    if m == 0:
        raise ValueError("frequencies must hold at least one frequency, got an empty frequencies")
    d_model = 4 * m if d_model is None else d_model
    d_mlp = 8 * m if d_mlp is None else d_mlp
    if isinstance(d_model, bool) or not isinstance(d_model, Integral) or d_model < 4 * m:
        raise ValueError(f"d_model must be an integer >= 4 * len(frequencies) = {4 * m}, got d_model={d_model!r}")
    if isinstance(d_mlp, bool) or not isinstance(d_mlp, Integral) or d_mlp < 4 * m:
        raise ValueError(f"d_mlp must be an integer >= 4 * len(frequencies) = {4 * m}, got d_mlp={d_mlp!r}")
    model = ModAddTransformer(p=p, d_model=int(d_model), n_heads=n_heads, d_mlp=int(d_mlp), seed=seed)
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    n_per = int(d_mlp) // m
    tokens = torch.arange(p, dtype=dt)
    W_E = torch.zeros(p + 1, d_model, dtype=dt)
    W_in = torch.zeros(d_model, d_mlp, dtype=dt)
    W_out = torch.zeros(d_mlp, d_model, dtype=dt)
    W_U = torch.zeros(d_model, p, dtype=dt)
    amplitude = scale / (n_per * _RELU_COS_SECOND_HARMONIC)   # Σ_j h_j cos 2φ_j ≈ n_per · c2 · |cos δ| · cos(...)
    for i, k in enumerate(ks):
        w = 2 * math.pi * k / p
        W_E[:p, 2 * i], W_E[:p, 2 * i + 1] = torch.cos(w * tokens), torch.sin(w * tokens)
        phase0 = 2 * math.pi * float(torch.rand(1, generator=g, dtype=dt))
        phases = phase0 + 2 * math.pi * torch.arange(n_per, dtype=dt) / n_per
        cols = slice(i * n_per, (i + 1) * n_per)
        W_in[2 * i, cols], W_in[2 * i + 1, cols] = torch.cos(phases), -torch.sin(phases)
        out_cos, out_sin = 2 * m + 2 * i, 2 * m + 2 * i + 1
        W_out[cols, out_cos], W_out[cols, out_sin] = torch.cos(2 * phases), -torch.sin(2 * phases)
        W_U[out_cos], W_U[out_sin] = amplitude * torch.cos(w * tokens), amplitude * torch.sin(w * tokens)
    Q, R = torch.linalg.qr(torch.randn(d_model, d_model, generator=g, dtype=dt))
    Q = Q * torch.sign(torch.diagonal(R))                                         # a Haar-random rotation
    eye = torch.eye(d_model, dtype=dt)
    new = {"W_E": W_E @ Q, "W_pos": torch.zeros(3, d_model, dtype=dt), "W_Q": torch.zeros(d_model, d_model, dtype=dt),
           "W_K": torch.zeros(d_model, d_model, dtype=dt), "W_V": 3.0 * eye, "W_O": eye, "W_in": Q.T @ W_in,
           "b_in": torch.zeros(d_mlp, dtype=dt), "W_out": W_out @ Q, "b_out": torch.zeros(d_model, dtype=dt),
           "W_U": Q.T @ W_U}
    with torch.no_grad():
        for name, value in new.items():
            getattr(model, name).copy_(value)
    return model
