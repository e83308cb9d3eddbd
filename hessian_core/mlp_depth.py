"""One run of the depth chapter: an MLP on ``(a + b) mod p`` trained full-batch with AdamW, its metrics logged,
and the extreme Hessian eigenvalues (plain and Adam-preconditioned) computed at saved checkpoints.

Every piece is stored under the run's parameters (:class:`hessian_core.ResultStore`): training resumes from its
latest checkpoint, and each checkpoint's Hessian result is computed once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .data import modular_addition_split
from .krylov import lanczos
from .models import ModAddMLP, n_parameters
from .operators import hessian_operator
from .results import ResultStore
from .sharpness import adam_preconditioner, hessian_extremes
from .training import accuracy, train_full_batch_adamw

__all__ = ["full_batch_evaluator", "checkpoint_hessian_extremes", "modadd_mlp_run", "value_at_step"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def full_batch_evaluator(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> Callable[[int, nn.Module], dict]:
    """``evaluate(step, model) -> dict`` for :func:`hessian_core.train_full_batch_adamw`.

    The dict holds ``train_loss, train_acc, test_loss, test_acc`` (mean cross-entropy and accuracy),
    ``grad_norm`` (the Euclidean norm of the full-batch training-loss gradient), ``param_norm`` (of all
    parameters; weight decay acts on it) and ``eval_seconds``.
    """
    def evaluate(step: int, model: nn.Module) -> dict:
        started = time.perf_counter()
        train_loss, train_acc = accuracy(model, *train)
        test_loss, test_acc = accuracy(model, *test)
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(train[0]), train[1]).backward()
        with torch.no_grad():
            grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())).item()
            param_norm = torch.sqrt(sum((p ** 2).sum() for p in model.parameters())).item()
        model.zero_grad(set_to_none=True)
        return dict(train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc,
                    grad_norm=grad_norm, param_norm=param_norm, eval_seconds=time.perf_counter() - started)

    return evaluate


def checkpoint_hessian_extremes(train_store: ResultStore, hessian_store: ResultStore, steps: list[int],
                                make_model: Callable[[], nn.Module], batch: tuple[Tensor, Tensor], *,
                                tol: float, dtype: torch.dtype, progress: bool = False) -> list[dict]:
    """:func:`hessian_extremes` (with Adam's preconditioner) at each saved checkpoint, cached per step.

    Args:
        train_store: holds ``checkpoint_{s:07d}`` (``{"model", "optimiser", ...}``) for every ``s`` in ``steps``.
        hessian_store: where ``hessian_{s:07d}`` results are cached.
        make_model: builds an untrained model of the right architecture.
        batch: the full training set ``(inputs, targets)``.
    Returns:
        one record per step: ``{"step", "lambda_max", "lambda_min", "preconditioned_lambda_max", "loss",
        "n_hvp", "seconds"}`` (``preconditioned_lambda_max`` is NaN at step 0, before Adam has state).
    """
    from tqdm.auto import tqdm

    def compute(step: int) -> dict:
        state = train_store.load(f"checkpoint_{step:07d}")
        model = make_model()
        model.load_state_dict(state["model"])
        has_state = bool(state["optimiser"]["state"])
        P = adam_preconditioner(state["optimiser"]) if has_state else None
        out = hessian_extremes(model, nn.CrossEntropyLoss(), batch, tol=tol, dtype=dtype, preconditioner=P)
        out.setdefault("preconditioned_lambda_max", float("nan"))
        return {"step": step, **out}

    return [hessian_store.cached(f"hessian_{s:07d}", lambda: compute(s))
            for s in tqdm(steps, desc="Hessians", disable=not progress, leave=False)]


def modadd_mlp_run(results_dir: str | Path, *, p: int, depth: int, width: int, input_encoding: str,
                   train_fraction: float, split_seed: int, seed: int, n_steps: int, lr: float, weight_decay: float,
                   betas: tuple[float, float], log_every: int, hessian_every: int, lanczos_tol: float,
                   hessian_dtype: str, top_k: int = 0, progress: bool = True) -> dict:
    """Train one MLP on ``(a + b) mod p`` and compute its Hessian extremes over training (resumable).

    Training: full-batch AdamW for ``n_steps`` on a ``train_fraction`` split of all ``p²`` pairs (split seeded by
    ``split_seed``, initialisation by ``seed``); every ``log_every`` steps the metrics of
    :func:`full_batch_evaluator`; a checkpoint every ``hessian_every`` steps (0: none but the last). Hessians:
    at every checkpoint, on the full training set (:func:`checkpoint_hessian_extremes`); with ``top_k > 0`` also
    the ``top_k`` largest eigenvalues at the last checkpoint (same tolerance and precision).

    Returns:
        ``{"log": [records], "hessian": [records], "n_params": P, "memorised"/"generalised": steps or None,
        "top": ndarray[top_k] ascending or None}`` — see :func:`hessian_core.grokking_delay` for the middle two.
    """
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be a non-negative integer")
    if hessian_dtype not in _DTYPES:
        raise ValueError(f"hessian_dtype={hessian_dtype!r} must be one of {sorted(_DTYPES)}")
    if not isinstance(log_every, int) or not 1 <= log_every <= n_steps:
        raise ValueError(f"log_every={log_every!r} must be an integer in [1, n_steps={n_steps}]")
    if not isinstance(hessian_every, int) or not 0 <= hessian_every <= n_steps:
        raise ValueError(f"hessian_every={hessian_every!r} must be an integer in [0, n_steps={n_steps}]")
    split = modular_addition_split(p, train_fraction, split_seed, with_equals=False)
    train_params = dict(p=p, depth=depth, width=width, input_encoding=input_encoding, train_fraction=train_fraction,
                        split_seed=split_seed, seed=seed, n_steps=n_steps, lr=lr, weight_decay=weight_decay,
                        betas=list(betas), log_every=log_every, hessian_every=hessian_every)
    train_store = ResultStore(results_dir, "mlp_depth_modadd", train_params)
    hessian_store = ResultStore(results_dir, "mlp_depth_modadd_hessian",
                                {**train_params, "lanczos_tol": lanczos_tol, "hessian_dtype": hessian_dtype})

    def make_model() -> nn.Module:
        return ModAddMLP(p, depth, width, input_encoding, seed)

    model = make_model()
    checkpoints = list(range(0, n_steps + 1, hessian_every)) if hessian_every else [n_steps]
    log = train_full_batch_adamw(
        model, *split["train"], store=train_store, n_steps=n_steps, checkpoint_steps=checkpoints, lr=lr,
        weight_decay=weight_decay, betas=tuple(betas), log_steps=range(0, n_steps + 1, log_every),
        evaluate=full_batch_evaluator(split["train"], split["test"]), progress=progress,
        desc=f"depth {depth} seed {seed}")
    hessian = checkpoint_hessian_extremes(train_store, hessian_store, sorted(set(checkpoints) | {n_steps}),
                                          make_model, split["train"], tol=lanczos_tol,
                                          dtype=_DTYPES[hessian_dtype], progress=progress)
    top = None
    if top_k:
        def compute_top() -> np.ndarray:
            op = hessian_operator(model, nn.CrossEntropyLoss(), split["train"], dtype=_DTYPES[hessian_dtype])
            return lanczos(op, top_k, which="largest", tol=lanczos_tol, progress=False)

        top = hessian_store.cached(f"top{top_k}_{n_steps:07d}", compute_top)
    from .curves import grokking_delay

    delay = grokking_delay([r["step"] for r in log], [r["train_acc"] for r in log], [r["test_acc"] for r in log])
    return {"log": log, "hessian": hessian, "n_params": n_parameters(model), **delay, "top": top}


def value_at_step(steps: np.ndarray, values: np.ndarray, at: float, *, log: bool = False) -> float:
    """``values`` (``[T]``, at ascending ``steps``) linearly interpolated at step ``at`` (in log space if ``log``).

    ``at`` outside the logged range gives NaN.
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if not steps[0] <= at <= steps[-1]:
        return float("nan")
    if log:
        return float(np.exp(np.interp(at, steps, np.log(values))))
    return float(np.interp(at, steps, values))
