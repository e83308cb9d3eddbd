"""Training loops with checkpoint schedules that resume after an interruption.

Data order is a pure function of ``(seed, epoch)``, so a run resumed from a saved checkpoint continues exactly as
the uninterrupted run would have: the same mini-batches, the same optimiser state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.std import tqdm

from .progress import show_progress
from .store import ResultStore

__all__ = [
    "checkpoint_name", "mnist_checkpoint_steps", "epoch_permutation", "accuracy", "split_evaluator",
    "full_batch_evaluator",
    "train_sgd_with_checkpoints", "train_full_batch_adamw",
]


def checkpoint_name(step: int) -> str:
    """The store item that holds the model (and optimiser state) after ``step`` updates."""
    return f"checkpoint_{int(step):07d}"


def _intact_prefix(store: ResultStore, steps: Sequence[int]) -> list[int]:
    """The checkpoints saved so far, up to the first missing or corrupt one (which is quarantined): a run resumes
    from the last of these and recomputes, identically, everything after it."""
    done = []
    for step in steps:
        if not store.verified(checkpoint_name(step)):
            break
        done.append(step)
    return done


def mnist_checkpoint_steps(steps_per_epoch: int, epochs: int) -> list[int]:
    """The seed repository's schedule: step 0; steps 10, 50, 100, 200; the end of epochs 1–10; the end of every
    second epoch from 12 on. Steps beyond the run are dropped; the final step is always included.

    With 469 steps per epoch (60,000 images, batch 128) and 30 epochs this gives 25 checkpoints.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} and epochs={epochs} must be >= 1")
    total = steps_per_epoch * epochs
    steps = {0, 10, 50, 100, 200, total}
    steps |= {e * steps_per_epoch for e in range(1, min(epochs, 10) + 1)}
    steps |= {e * steps_per_epoch for e in range(12, epochs + 1, 2)}
    return sorted(s for s in steps if s <= total)


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order in which epoch ``epoch`` visits ``n`` examples: a function of ``(seed, epoch)`` only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode, restored afterwards) on a data set."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start:start + batch_size])
        y = labels[start:start + batch_size]
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return total_loss / len(inputs), correct / len(inputs)


def split_evaluator(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> Callable[[int, nn.Module], dict]:
    """``evaluate(step, model) -> {"train_loss", "train_acc", "test_loss", "test_acc"}`` on a train/test split
    (``(inputs, labels)`` each): the per-checkpoint record every training loop here logs."""
    def evaluate(step: int, model: nn.Module) -> dict:
        train_loss, train_acc = accuracy(model, *train)
        test_loss, test_acc = accuracy(model, *test)
        return dict(train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc)

    return evaluate


def full_batch_evaluator(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> Callable[[int, nn.Module], dict]:
    """:func:`split_evaluator`'s record plus ``grad_norm`` (the Euclidean norm of the full-batch training-loss
    gradient), ``param_norm`` (of all parameters; weight decay acts on it) and ``eval_seconds``."""
    split = split_evaluator(train, test)

    def evaluate(step: int, model: nn.Module) -> dict:
        started = time.perf_counter()
        record = split(step, model)
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(train[0]), train[1]).backward()
        with torch.no_grad():
            grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())).item()
            param_norm = torch.sqrt(sum((p ** 2).sum() for p in model.parameters())).item()
        model.zero_grad(set_to_none=True)
        return dict(**record, grad_norm=grad_norm, param_norm=param_norm,
                    eval_seconds=time.perf_counter() - started)

    return evaluate


def train_sgd_with_checkpoints(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    store: ResultStore,
    checkpoint_steps: Sequence[int],
    lr: float,
    momentum: float,
    batch_size: int,
    epochs: int,
    seed: int,
    on_checkpoint: Callable[[int, nn.Module], dict] | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Mini-batch SGD with momentum on cross-entropy, saving the model at every checkpoint step.

    Checkpoint ``s`` is the state after ``s`` optimiser steps; it is saved to ``store`` as ``checkpoint_{s:07d}``
    with the model and optimiser state and a record: ``step``, ``train_seconds`` (time spent in optimiser steps
    up to ``s``, summed across resumptions) and ``on_checkpoint(s, model)``'s dict (e.g. accuracies). If
    the store already holds checkpoints, training resumes from the latest one instead of starting over; if it
    holds the last, nothing is trained. The model is left with the last checkpoint's parameters.

    Args:
        model: trained in place.
        inputs, labels: the training set.
        checkpoint_steps: sorted steps to save, each in ``[0, epochs * steps_per_epoch]``.
        lr, momentum, batch_size, epochs, seed: SGD hyper-parameters; the last partial batch of an epoch is
            kept (``ceil(N / batch_size)`` steps per epoch).
    Returns:
        the ``on_checkpoint`` records of every checkpoint, each with its ``step``.
    """
    n = len(inputs)
    steps_per_epoch = -(-n // batch_size)
    total = steps_per_epoch * epochs
    steps = sorted(set(int(s) for s in checkpoint_steps))
    if not steps or steps[0] < 0 or steps[-1] > total:
        raise ValueError(f"checkpoint_steps must lie in [0, {total}] (epochs * steps per epoch)")
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    done = _intact_prefix(store, steps)
    step, seconds = 0, 0.0
    if done:
        state = store.load(checkpoint_name(done[-1]))
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, seconds = done[-1], state["record"]["train_seconds"]

    def save(at: int) -> None:
        record = {"step": at, "train_seconds": seconds, **(on_checkpoint(at, model) if on_checkpoint else {})}
        store.save(checkpoint_name(at),
                   {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "record": record})

    if step == 0 and 0 in steps and not done:
        save(0)
    model.train()
    with tqdm(total=total, initial=step, desc="training", disable=not show_progress(progress)) as bar:
        while step < steps[-1]:
            started = time.perf_counter()
            epoch, offset = divmod(step, steps_per_epoch)
            order = epoch_permutation(n, seed, epoch)
            idx = order[offset * batch_size:(offset + 1) * batch_size]
            optimiser.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs[idx]), labels[idx]).backward()
            optimiser.step()
            step += 1
            seconds += time.perf_counter() - started
            bar.update(1)
            if step in steps:
                save(step)
    return [store.load(checkpoint_name(s))["record"] for s in steps]


def train_full_batch_adamw(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    store: ResultStore,
    n_steps: int,
    checkpoint_steps: Sequence[int],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    log_steps: Sequence[int] | None = None,
    evaluate: Callable[[int, nn.Module], dict] | None = None,
    progress: bool | None = None,
    desc: str = "training",
) -> list[dict]:
    """Full-batch AdamW on cross-entropy (one step = one epoch), resumable, with a log and saved checkpoints.

    At every step in ``log_steps`` and ``checkpoint_steps`` (step ``s`` = the state after ``s`` updates) the log
    gains a record ``{"step", "train_seconds", **evaluate(s, model)}``. At every checkpoint step the model,
    the optimiser state and the log so far are saved atomically to ``store`` as ``checkpoint_{s:07d}``; the
    final step ``n_steps`` is always a checkpoint, and its log is the returned one. A rerun resumes from the
    latest saved checkpoint (full-batch updates are deterministic, so the log entries after it are recomputed
    identically); if the final checkpoint exists nothing is trained.

    Args:
        model: trained in place; maps ``inputs`` to logits ``[N, C]``.
        inputs, labels: the whole training set (``labels: LongTensor[N]``).
        n_steps: number of AdamW updates.
        checkpoint_steps: steps in ``[0, n_steps]`` at which to save the model.
        lr, weight_decay, betas: ``torch.optim.AdamW`` hyper-parameters.
        log_steps: extra steps at which to call ``evaluate`` without saving the model.
        evaluate: ``evaluate(step, model) -> dict`` of metrics (e.g. test accuracy); called with the model in
            eval mode and gradients enabled, so it may compute gradients or Hessians itself.
        progress: tqdm bar; ``desc`` labels it.
    Returns:
        the log: one record per logged step, in step order.
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps={n_steps!r} must be a positive integer")
    if not (lr > 0 and weight_decay >= 0):
        raise ValueError(f"lr={lr!r} must be > 0 and weight_decay={weight_decay!r} >= 0")
    saves = sorted({int(s) for s in checkpoint_steps} | {n_steps})
    logs = sorted(set(saves) | {int(s) for s in (log_steps or ())})
    if saves[0] < 0 or logs[0] < 0 or logs[-1] > n_steps:
        raise ValueError(f"checkpoint_steps and log_steps must lie in [0, n_steps={n_steps}]")
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    done = _intact_prefix(store, saves)
    step, seconds, log = 0, 0.0, []
    if done:
        state = store.load(checkpoint_name(done[-1]))
        if done[-1] == n_steps:
            model.load_state_dict(state["model"])
            return state["log"]
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, log = done[-1], state["log"]
        seconds = log[-1]["train_seconds"]

    def record(at: int) -> None:
        was_training = model.training
        model.eval()
        log.append({"step": at, "train_seconds": seconds, **(evaluate(at, model) if evaluate else {})})
        model.train(was_training)
        if at in saves:
            store.save(checkpoint_name(at),
                       {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "log": log})

    if not done and 0 in logs:
        record(0)
    pending = [s for s in logs if s > step]
    model.train()
    with tqdm(total=n_steps, initial=step, desc=desc, disable=not show_progress(progress)) as bar:
        while step < n_steps:
            started = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimiser.step()
            step += 1
            seconds += time.perf_counter() - started
            bar.update(1)
            if pending and step == pending[0]:
                pending.pop(0)
                record(step)
    return log
