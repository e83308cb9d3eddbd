"""The modular-addition grokking experiment: parameter-keyed training runs and per-checkpoint Hessian spectra.

A run is a :class:`hessian_core.ModAddTransformer` trained full-batch with AdamW on a seeded split of all ``p²``
pairs (:func:`train_modadd`). At a checkpoint, :func:`extreme_eigenvalues` (Lanczos, both ends),
:func:`slq_density` (stochastic Lanczos quadrature) and :func:`dense_spectrum` (the exact Hessian and all its
eigenvalues) each return a plain dict with the wall time spent, for the store. :func:`slq_stats` turns an SLQ
quadrature into estimates of the summary statistics that :func:`hessian_core.spectrum_stats` computes exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy
from torch import Tensor, nn

from .data import modular_addition_split
from .experiments import hessian_subsample
from .krylov import lanczos, spectral_density
from .models import ModAddTransformer
from .operators import full_hessian, hessian_operator
from .results import ResultStore
from .spectrum import eigendecomposition
from .training import accuracy, train_full_batch_adamw

__all__ = ["ModAddRun", "train_modadd", "modadd_checkpoint_steps", "hessian_batch", "extreme_eigenvalues",
           "slq_density", "slq_stats", "dense_spectrum"]

_MODEL_KEYS = ("p", "d_model", "n_heads", "d_mlp", "seed")


@dataclass
class ModAddRun:
    """A finished (or resumed) training run.

    Attributes:
        params: the parameters that keyed ``store``.
        store: where its checkpoints ``checkpoint_{step:07d}`` live.
        log: one record per logged step: ``step``, ``train_seconds``, ``train_loss``, ``train_acc``,
            ``test_loss``, ``test_acc``.
        checkpoint_steps: the saved steps, ascending.
    """

    params: dict
    store: ResultStore
    log: list[dict]
    checkpoint_steps: list[int]

    def curve(self, name: str) -> np.ndarray:
        """``ndarray[T]`` of a logged quantity (``"step"``, ``"train_acc"``, ...)."""
        return np.array([record[name] for record in self.log])

    def model_at(self, step: int) -> ModAddTransformer:
        """The model as saved at checkpoint ``step``."""
        model = ModAddTransformer(**{k: self.params[k] for k in _MODEL_KEYS})
        model.load_state_dict(self.store.load(f"checkpoint_{step:07d}")["model"])
        return model


def train_modadd(root: str, experiment: str, *, p: int, train_fraction: float, seed: int, d_model: int,
                 n_heads: int, d_mlp: int | None, lr: float, weight_decay: float, betas: Sequence[float],
                 n_steps: int, log_every: int, checkpoint_steps: Sequence[int], progress: bool = True,
                 desc: str = "training") -> ModAddRun:
    """Train (or resume, or load) ``a + b mod p`` with full-batch AdamW, logging train/test loss and accuracy.

    The split (:func:`hessian_core.modular_addition_split`) and the initialisation both use ``seed``. Every
    argument but ``root``, ``progress`` and ``desc`` keys the store ``<root>/<experiment>/<key>``, so a rerun with
    the same arguments loads the saved log and trains nothing.

    Args:
        log_every: log interval in steps (checkpoint steps are logged too).
        checkpoint_steps: steps at which the model is saved (``n_steps`` always is).
    Returns:
        :class:`ModAddRun`.
    """
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every={log_every!r} must be a positive integer")
    checkpoints = sorted({int(s) for s in checkpoint_steps} | {n_steps})
    params = dict(p=p, train_fraction=train_fraction, seed=seed, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp,
                  lr=lr, weight_decay=weight_decay, betas=list(betas), n_steps=n_steps, log_every=log_every,
                  checkpoint_steps=checkpoints)
    split = modular_addition_split(p, train_fraction, seed)
    (train_x, train_y), (test_x, test_y) = split["train"], split["test"]
    model = ModAddTransformer(p, d_model, n_heads, d_mlp, seed)  # validates the model arguments
    store = ResultStore(root, experiment, params)

    def evaluate(step: int, m: nn.Module) -> dict:
        train_loss, train_acc = accuracy(m, train_x, train_y)
        test_loss, test_acc = accuracy(m, test_x, test_y)
        return dict(train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc)

    log = train_full_batch_adamw(
        model, train_x, train_y, store=store, n_steps=n_steps, checkpoint_steps=checkpoints, lr=lr,
        weight_decay=weight_decay, betas=tuple(betas), log_steps=range(0, n_steps + 1, log_every),
        evaluate=evaluate, progress=progress, desc=desc)
    return ModAddRun(params=params, store=store, log=log, checkpoint_steps=checkpoints)


def modadd_checkpoint_steps(n_steps: int, *, dense_every: int, dense_until: int, sparse_every: int) -> list[int]:
    """Steps 0, 10, 50, 100, 200, 500; every ``dense_every`` from 1,000 to ``dense_until``; every ``sparse_every``
    from ``dense_until`` to ``n_steps``; and ``n_steps``. Steps beyond ``n_steps`` are dropped.

    With ``dense_every=100, dense_until=5000`` the first part is the design note's; its 5K-15K and 15K-40K tiers
    become one ``sparse_every`` tier here, so a run can spend its checkpoints where its transition lies.
    """
    for name, value in (("n_steps", n_steps), ("dense_every", dense_every), ("dense_until", dense_until),
                        ("sparse_every", sparse_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    steps = {0, 10, 50, 100, 200, 500, n_steps}
    steps |= set(range(1000, dense_until + 1, dense_every)) | set(range(dense_until, n_steps + 1, sparse_every))
    return sorted(s for s in steps if s <= n_steps)


def hessian_batch(p: int, train_fraction: float, seed: int, n_samples: int) -> tuple[Tensor, Tensor]:
    """A fixed subsample of ``n_samples`` training pairs (seed ``seed + 1``): ``(LongTensor[n, 3], LongTensor[n])``."""
    train_x, train_y = modular_addition_split(p, train_fraction, seed)["train"]
    if not 1 <= n_samples <= len(train_x):
        raise ValueError(f"n_samples={n_samples} must be in [1, {len(train_x)}] (the training pairs)")
    return hessian_subsample(train_x, train_y, n_samples, seed + 1)


def extreme_eigenvalues(model: nn.Module, batch: tuple[Tensor, Tensor], *, k: int, tol: float,
                        block_size: int = 1, seed: int = 0) -> dict:
    """The ``k`` smallest and ``k`` largest Hessian eigenvalues (float64, :func:`hessian_core.lanczos`).

    ``block_size > 1`` runs block Lanczos: more HVPs, but batched ones, which cost far less each here.

    Returns:
        ``{"eigenvalues": ndarray[2k] ascending, "loss", "hvps", "seconds"}``.
    """
    started = time.perf_counter()
    op = hessian_operator(model, nn.CrossEntropyLoss(), batch)
    values = lanczos(op, k, which="both", tol=tol, seed=seed, block_size=block_size, progress=False)
    return dict(eigenvalues=np.asarray(values), loss=op.loss, hvps=op.n_products,
                seconds=time.perf_counter() - started)


def slq_density(model: nn.Module, batch: tuple[Tensor, Tensor], *, n_probes: int, n_steps: int,
                seed: int = 0) -> dict:
    """Stochastic Lanczos quadrature of the Hessian spectrum (:func:`hessian_core.spectral_density`).

    Returns:
        ``{"nodes", "weights": ndarray[n_probes, m], "dimension", "hvps", "seconds"}``.
    """
    started = time.perf_counter()
    op = hessian_operator(model, nn.CrossEntropyLoss(), batch)
    density = spectral_density(op, n_probes=n_probes, n_steps=n_steps, seed=seed, progress=False)
    return dict(nodes=np.asarray(density.nodes), weights=np.asarray(density.weights), dimension=density.dimension,
                hvps=op.n_products, seconds=time.perf_counter() - started)


def slq_stats(nodes: np.ndarray, weights: np.ndarray, dimension: int) -> dict[str, float]:
    """SLQ estimates of spectrum statistics from quadrature ``nodes, weights: ndarray[n_probes, m]``.

    With ``E f = mean_p sum_j weights[p, j] f(nodes[p, j])`` (an estimate of ``(1/P) sum_i f(lambda_i)``):
    ``trace = P E[x]``, ``abs_trace = P E|x|``, ``spectral_entropy = log(abs_trace) - P E[|x| log|x|] / abs_trace``
    (the entropy of ``|lambda_i| / sum_j |lambda_j|``, as in :func:`hessian_core.spectrum_stats`),
    ``negative_mass_fraction = (abs_trace - trace) / (2 abs_trace)`` and ``n_negative = P E[x < 0]`` (a coarse
    estimate: a step function is poorly integrated by an ``m``-point Gauss rule).
    """
    nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
    if nodes.shape != weights.shape or nodes.ndim != 2:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} must be 2-D of the same shape")

    def expect(values: np.ndarray) -> float:
        return float(np.sum(weights * values) / nodes.shape[0])

    trace = dimension * expect(nodes)
    abs_trace = dimension * expect(np.abs(nodes))
    x_log_x = dimension * expect(xlogy(np.abs(nodes), np.abs(nodes)))
    entropy = float(np.log(abs_trace) - x_log_x / abs_trace) if abs_trace > 0 else 0.0
    return dict(trace=trace, abs_trace=abs_trace, spectral_entropy=entropy,
                negative_mass_fraction=(abs_trace - trace) / (2 * abs_trace) if abs_trace > 0 else 0.0,
                n_negative=dimension * expect(nodes < 0))


def dense_spectrum(model: nn.Module, batch: tuple[Tensor, Tensor], *, n_vectors: int) -> dict:
    """The exact float64 Hessian, all its eigenvalues and the top and bottom ``n_vectors`` eigenvectors.

    Returns:
        ``{"eigenvalues": ndarray[P] ascending, "top_vectors", "bottom_vectors": ndarray[P, n_vectors],
        "seconds_hessian", "seconds_eig"}`` (vector columns ordered as in :class:`hessian_core.DenseSpectrum`).
    """
    started = time.perf_counter()
    H = full_hessian(model, nn.CrossEntropyLoss(), batch, progress=False)
    seconds_hessian = time.perf_counter() - started
    started = time.perf_counter()
    dense = eigendecomposition(H, n_top=n_vectors, n_bottom=n_vectors, progress=False)
    del H
    return dict(eigenvalues=np.array(dense.eigenvalues), top_vectors=np.array(dense.top_vectors),
                bottom_vectors=np.array(dense.bottom_vectors), seconds_hessian=seconds_hessian,
                seconds_eig=time.perf_counter() - started)
