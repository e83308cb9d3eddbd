"""Several full-batch AdamW runs of one architecture trained together: one vectorised forward/backward for all.

:func:`train_full_batch_adamw_batched` trains ``R`` models of the same architecture, each on its own training set
(of a common size) with its own weight decay, by stacking their parameters
(:func:`torch.func.stack_module_state`) and mapping one functional forward/backward over the stack
(:func:`torch.func.vmap` of the loss through :func:`torch.func.functional_call`, giving the ``R`` mean losses,
whose sum is differentiated once by autograd: run ``r``'s parameters get exactly run ``r``'s gradient; this was
a little faster than ``vmap(grad(loss))`` and gives the same bits); the update is
``torch.optim.AdamW``'s (decoupled weight decay, bias correction, ``eps = 1e-8``, no amsgrad) written out on the
stacked tensors, elementwise operation by elementwise operation as torch's single-tensor implementation performs
it. Each run writes to ITS OWN store exactly what :func:`hessian_book.training.train_full_batch_adamw` writes
(``{"model", "optimiser", "log"}`` under :func:`~hessian_book.training.checkpoint_name`; the optimiser entry is a
genuine ``torch.optim.AdamW.state_dict()``), so a run trained here is read, resumed and analysed by the unbatched
code unchanged. The stacked gradients come from batched matrix products, which may sum in another order than
the unbatched ones, so the two trainers are required to agree to float32 rounding (``tests/book/test_batched.py``;
on the development machine, torch 2.13 on CPU, they agree bit for bit).

:func:`train_modadd_batched` is :func:`hessian_book.runs.train_modadd` for several runs at once, in the same
stores (same experiment, same key).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.std import tqdm

from .data import modular_addition_split
from .models import ModAddTransformer
from .progress import show_progress
from .runs import ModAddRun
from .store import ResultStore
from .training import _intact_prefix, checkpoint_name, split_evaluator

__all__ = ["train_full_batch_adamw_batched", "train_modadd_batched", "modadd_run_params"]

_EPS = 1e-8  # torch.optim.AdamW's default, which train_full_batch_adamw uses


def train_full_batch_adamw_batched(
    models: Sequence[nn.Module],
    inputs: Tensor,
    labels: Tensor,
    *,
    stores: Sequence[ResultStore],
    n_steps: int,
    checkpoint_steps: Sequence[int],
    lr: float,
    weight_decays: Sequence[float],
    betas: tuple[float, float] = (0.9, 0.98),
    log_steps: Sequence[int] | None = None,
    evaluates: Sequence[Callable[[int, nn.Module], dict] | None] | None = None,
    progress: bool | None = None,
    desc: str = "training (batched)",
) -> list[list[dict]]:
    """:func:`hessian_book.training.train_full_batch_adamw` for ``R`` models at once (one step = one epoch each).

    Model ``r`` trains on ``(inputs[r], labels[r])`` with weight decay ``weight_decays[r]``, logs
    ``{"step", "train_seconds", **evaluates[r](s, model_r)}`` at every step of ``log_steps`` and
    ``checkpoint_steps`` and saves ``{"model", "optimiser", "log"}`` to ``stores[r]`` at every checkpoint step, in
    the unbatched trainer's format. ``train_seconds`` is the batched wall time of the optimiser steps divided by
    the number of runs trained together (each run's share of the machine time; summed across resumptions).

    Resumption: runs whose final checkpoint exists are read and skipped; the others resume together from the
    latest checkpoint that all of them hold intact (from step 0 if one of them holds none). Checkpoints after it
    are recomputed and rewritten (identically up to float32 rounding). Evaluation runs on the unbatched model,
    so logged metrics are the unbatched trainer's functions of the parameters.

    Args:
        models: ``R`` modules of one architecture (same parameter names and shapes), trained in place: each is
            left with its final parameters. Each maps ``inputs[r]`` to logits ``[N, C]``.
        inputs: ``Tensor[R, N, ...]``, each run's whole training set.
        labels: ``LongTensor[R, N]``.
        stores: one store per run.
        weight_decays: ``R`` non-negative decoupled weight decays.
        n_steps, checkpoint_steps, lr, betas, log_steps: shared by all runs (as in the unbatched trainer).
        evaluates: one ``evaluate(step, model) -> dict`` per run (or ``None``), called in eval mode with
            gradients enabled.
        progress: tqdm bar; ``desc`` labels it.
    Returns:
        each run's log (one record per logged step, in step order), in the order of ``models``.
    """
    R = len(models)
    if R < 1:
        raise ValueError("models must hold at least one model")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps={n_steps!r} must be a positive integer")
    weight_decays = [float(w) for w in weight_decays]
    if not (lr > 0 and len(weight_decays) == R and all(w >= 0 for w in weight_decays)):
        raise ValueError(f"lr={lr!r} must be > 0 and weight_decays={weight_decays!r} {R} numbers >= 0")
    if len(stores) != R or inputs.shape[0] != R or labels.shape[:1] != (R,) or labels.shape[1] != inputs.shape[1]:
        raise ValueError(f"need one store ({len(stores)}), input set {tuple(inputs.shape)} and label set "
                         f"{tuple(labels.shape)} per model ({R}), all of one size N")
    evaluates = list(evaluates) if evaluates is not None else [None] * R
    if len(evaluates) != R:
        raise ValueError(f"evaluates has {len(evaluates)} entries for {R} models")
    names = [name for name, _ in models[0].named_parameters()]
    shapes = [tuple(p.shape) for _, p in models[0].named_parameters()]
    for model in models[1:]:
        if [(n, tuple(p.shape)) for n, p in model.named_parameters()] != list(zip(names, shapes)):
            raise ValueError("models must share one architecture (parameter names and shapes)")
    saves = sorted({int(s) for s in checkpoint_steps} | {n_steps})
    logs_at = sorted(set(saves) | {int(s) for s in (log_steps or ())})
    if saves[0] < 0 or logs_at[0] < 0 or logs_at[-1] > n_steps:
        raise ValueError(f"checkpoint_steps and log_steps must lie in [0, n_steps={n_steps}]")
    beta1, beta2 = (float(b) for b in betas)

    # --- what is already stored
    out: list[list[dict] | None] = [None] * R
    done = [_intact_prefix(store, saves) for store in stores]
    active = []
    for r in range(R):
        if done[r] and done[r][-1] == n_steps:
            state = stores[r].load(checkpoint_name(n_steps))
            models[r].load_state_dict(state["model"])
            out[r] = state["log"]
        else:
            active.append(r)
    if not active:
        return out
    resume = min(done[r][-1] for r in active) if all(done[r] for r in active) else None
    step = resume or 0
    logs = {r: [] for r in active}
    seconds = {r: 0.0 for r in active}
    moments = {r: None for r in active}  # per run: (exp_avg list, exp_avg_sq list) in parameter order, or None
    if resume is not None:
        for r in active:
            state = stores[r].load(checkpoint_name(resume))
            models[r].load_state_dict(state["model"])
            logs[r] = list(state["log"])
            seconds[r] = logs[r][-1]["train_seconds"]
            opt = state["optimiser"]["state"]
            if opt:
                if any(float(opt[i]["step"]) != resume for i in range(len(names))):
                    raise RuntimeError(f"{stores[r].directory}: checkpoint {resume}'s optimiser state is at "
                                       f"another step")
                moments[r] = ([opt[i]["exp_avg"] for i in range(len(names))],
                              [opt[i]["exp_avg_sq"] for i in range(len(names))])
    batch_models = [models[r] for r in active]
    optimisers = {r: torch.optim.AdamW(models[r].parameters(), lr=lr, weight_decay=weight_decays[r],
                                       betas=betas) for r in active}
    x, y = inputs[active], labels[active]

    # --- the stack: parameters, Adam's moments, per-run weight-decay factors
    params, buffers = stack_module_state(batch_models)
    params = {name: params[name].detach().clone().requires_grad_() for name in names}
    exp_avg = {name: torch.zeros_like(params[name]) for name in names}
    exp_avg_sq = {name: torch.zeros_like(params[name]) for name in names}
    for j, r in enumerate(active):
        if moments[r] is not None:
            for i, name in enumerate(names):
                exp_avg[name][j].copy_(moments[r][0][i])
                exp_avg_sq[name][j].copy_(moments[r][1][i])
    # 1 - lr * wd as torch computes it (a Python float, applied in float32); a factor of exactly 1 where wd = 0,
    # where torch skips the multiplication
    decay = torch.tensor([1 - lr * weight_decays[r] for r in active], dtype=next(iter(params.values())).dtype)
    decays = any(weight_decays[r] != 0 for r in active)

    skeleton = copy.deepcopy(batch_models[0]).to("meta")
    skeleton.train()

    def loss(p: dict, b: dict, xs: Tensor, ys: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(skeleton, (p, b), (xs,)), ys)

    losses = vmap(loss, in_dims=(0, 0, 0, 0))  # -> Tensor[R], each run's mean cross-entropy
    leaves = [params[name] for name in names]

    def gradient() -> dict:
        return dict(zip(names, torch.autograd.grad(losses(params, buffers, x, y).sum(), leaves)))

    def record(at: int) -> None:
        for j, r in enumerate(active):
            model = models[r]
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    parameter.copy_(params[name][j])
            was_training = model.training
            model.eval()
            evaluate = evaluates[r]
            logs[r].append({"step": at, "train_seconds": seconds[r], **(evaluate(at, model) if evaluate else {})})
            model.train(was_training)
            if at in saves:
                optimiser = optimisers[r]
                if at > 0:
                    for name, parameter in model.named_parameters():
                        # the keys, order and dtypes of torch.optim.AdamW's own state (single-tensor, CPU)
                        optimiser.state[parameter] = {
                            "step": torch.tensor(float(at), dtype=torch.float32),
                            "exp_avg": exp_avg[name][j].clone(), "exp_avg_sq": exp_avg_sq[name][j].clone()}
                stores[r].save(checkpoint_name(at), {"model": model.state_dict(),
                                                     "optimiser": optimiser.state_dict(), "log": list(logs[r])})

    if resume is None and 0 in logs_at:
        record(0)
    pending = [s for s in logs_at if s > step]
    for model in batch_models:
        model.train()
    with tqdm(total=n_steps, initial=step, desc=desc, disable=not show_progress(progress)) as bar:
        while step < n_steps:
            started = time.perf_counter()
            grads = gradient()
            step += 1
            # torch.optim.AdamW's single-tensor update (torch/optim/adam.py, _single_tensor_adam), stacked
            bias_correction1 = 1 - beta1 ** float(step)
            bias_correction2 = 1 - beta2 ** float(step)
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2 ** 0.5
            with torch.no_grad():
                for name in names:
                    p, g, m, v = params[name], grads[name], exp_avg[name], exp_avg_sq[name]
                    if decays:
                        p.mul_(decay.view(-1, *[1] * (p.ndim - 1)))
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (v.sqrt() / bias_correction2_sqrt).add_(_EPS)
                    p.addcdiv_(m, denom, value=-step_size)
            share = (time.perf_counter() - started) / len(active)
            for r in active:
                seconds[r] += share
            bar.update(1)
            if pending and step == pending[0]:
                pending.pop(0)
                record(step)
    for r in active:
        out[r] = logs[r]
    return out


def modadd_run_params(*, p: int, train_fraction: float, split_seed: int, seed: int, d_model: int, n_heads: int,
                      d_mlp: int | None, lr: float, weight_decay: float, betas: Sequence[float], n_steps: int,
                      log_every: int, checkpoint_steps: Sequence[int]) -> dict:
    """The parameters that key a :func:`hessian_book.runs.train_modadd` store, exactly as it builds them (the
    tests check that both trainers open the same store)."""
    checkpoints = sorted({int(s) for s in checkpoint_steps} | {n_steps})
    return dict(p=p, train_fraction=train_fraction, split_seed=split_seed, seed=seed, d_model=d_model,
                n_heads=n_heads, d_mlp=d_mlp, lr=lr, weight_decay=weight_decay, betas=list(betas), n_steps=n_steps,
                log_every=log_every, checkpoint_steps=checkpoints)


_SHARED = ("p", "train_fraction", "d_model", "n_heads", "d_mlp", "lr", "betas", "n_steps", "log_every",
           "checkpoint_steps")


def train_modadd_batched(root: str, experiment: str, runs: Sequence[Mapping], *, progress: bool | None = None,
                         desc: str = "training (batched)") -> list[ModAddRun]:
    """:func:`hessian_book.runs.train_modadd` for several runs at once, into the very stores it uses.

    Args:
        runs: one mapping per run of ``train_modadd``'s keyword arguments (``p, train_fraction, split_seed, seed,
            d_model, n_heads, d_mlp, lr, weight_decay, betas, n_steps, log_every, checkpoint_steps``); all but
            ``split_seed``, ``seed`` and ``weight_decay`` must agree.
    Returns:
        one :class:`~hessian_book.runs.ModAddRun` per run, in order; ``train_modadd`` with the same arguments
        afterwards trains nothing and returns the same run.
    """
    if not runs:
        raise ValueError("runs must hold at least one run")
    params = [modadd_run_params(**run) for run in runs]
    for name in _SHARED:
        if any(q[name] != params[0][name] for q in params[1:]):
            raise ValueError(f"{name} differs between the runs ({[q[name] for q in params]}); only split_seed, "
                             "seed and weight_decay may")
    if not isinstance(params[0]["log_every"], int) or params[0]["log_every"] < 1:
        raise ValueError(f"log_every={params[0]['log_every']!r} must be a positive integer")
    shared = params[0]
    splits = [modular_addition_split(q["p"], q["train_fraction"], q["split_seed"]) for q in params]
    models = [ModAddTransformer(q["p"], q["d_model"], q["n_heads"], q["d_mlp"], q["seed"]) for q in params]
    stores = [ResultStore(root, experiment, q) for q in params]
    logs = train_full_batch_adamw_batched(
        models, torch.stack([s["train"][0] for s in splits]), torch.stack([s["train"][1] for s in splits]),
        stores=stores, n_steps=shared["n_steps"], checkpoint_steps=shared["checkpoint_steps"], lr=shared["lr"],
        weight_decays=[q["weight_decay"] for q in params], betas=tuple(shared["betas"]),
        log_steps=range(0, shared["n_steps"] + 1, shared["log_every"]),
        evaluates=[split_evaluator(s["train"], s["test"]) for s in splits], progress=progress, desc=desc)
    return [ModAddRun(params=q, store=store, log=log, checkpoint_steps=q["checkpoint_steps"])
            for q, store, log in zip(params, stores, logs)]
