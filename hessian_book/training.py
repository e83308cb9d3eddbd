"""Training loops with checkpoint schedules that resume after an interruption.

Data order is a pure function of ``(seed, epoch)``, so a run resumed from a saved checkpoint continues exactly as
the uninterrupted run would have: the same mini-batches, the same optimiser state.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.std import tqdm

from .outcomes import StopRule
from .progress import show_progress
from .store import ResultStore

__all__ = [
    "checkpoint_name", "mnist_checkpoint_steps", "epoch_permutation", "accuracy", "split_evaluator",
    "full_batch_evaluator", "STEP_BACKENDS", "STEP_BACKEND_ENV", "resolve_step_backend", "compiled_step_available",
    "AdamWStep",
    "CompiledStepError",
    "train_sgd_with_checkpoints", "train_full_batch_adamw", "completed_log",
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


# ---------------------------------------------------------------------------------------------------------------
# One full-batch AdamW step, eager or compiled

STEP_BACKENDS = ("auto", "eager", "compiled")
STEP_BACKEND_ENV = "HESSIAN_STEP_BACKEND"  # what "auto" means in this process, if set: "eager" or "compiled"
# The compiled backend's AdamW implementation: fused (one C++ kernel per parameter) or torch's default (on CPU its
# single-tensor implementation, one elementwise operation at a time, as the eager backend uses). The two round
# differently (float32 rounding, like compiled against eager), so the choice is part of what "compiled" means.
# Beside the compiled forward/backward, fused measured 2-3 % faster on average over three interleaved runs of
# benchmarks/bench_training_step.py (one thread, CPU ms per step: grokking transformer 11.53 against 11.86, depth-4
# MLP 16.07 against 16.39), within the runs' spread (one run each way): not slower, so fused.
_COMPILED_FUSED_ADAMW = True


class CompiledStepError(RuntimeError):
    """The compiled step could not be compiled or run here (raised at its first call, before any update)."""


def resolve_step_backend(backend: str) -> str:
    """The backend a run asking for ``backend`` trains with: ``"eager"`` or ``"compiled"``, known before anything is
    trained, so that a run's store can be keyed by it.

    ``"auto"`` is ``"compiled"`` where compiling works (:func:`compiled_step_available`), else ``"eager"`` with a
    warning saying why; the environment variable ``HESSIAN_STEP_BACKEND`` (``"eager"`` or ``"compiled"``)
    overrides it for a whole session (the test session sets ``"eager"``: compiling costs more than a test run's
    few hundred steps save). ``"eager"`` and ``"compiled"`` are returned as they are.
    """
    if backend not in STEP_BACKENDS:
        raise ValueError(f"step_backend={backend!r} must be one of {STEP_BACKENDS}")
    if backend != "auto":
        return backend
    override = os.environ.get(STEP_BACKEND_ENV, "auto") or "auto"
    if override not in STEP_BACKENDS:
        raise ValueError(f"the environment variable {STEP_BACKEND_ENV}={override!r} must be one of {STEP_BACKENDS}")
    if override != "auto":
        return override
    why = _compile_probe()
    if why is not None:
        warnings.warn(f"step_backend='auto': torch.compile does not work here ({why}); training steps run eager",
                      RuntimeWarning, stacklevel=2)
        return "eager"
    return "compiled"


def compiled_step_available() -> bool:
    """Whether ``torch.compile`` (inductor) compiles and runs a forward and backward pass here: a C++ compiler,
    Python headers and a working inductor. Probed once per process (a tiny model; seconds, the first time)."""
    return _compile_probe() is None


@functools.cache
def _compile_probe() -> str | None:
    """``None`` if a tiny compiled forward/backward works, else why not (one line)."""
    try:
        _configure_inductor()
        layer = nn.Linear(3, 2)
        probe = torch.compile(lambda x: layer(x).square().mean(), dynamic=False, fullgraph=True)
        probe(torch.linspace(-1, 1, 12).reshape(4, 3)).backward()
    except Exception as error:  # any failure to compile: no compiler, no headers, an inductor or dynamo error
        return _one_line(error)
    return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _configure_inductor() -> None:
    """The pinned numerical path's vector width for compiled kernels (:mod:`hessian_book.numerics`)."""
    from . import numerics  # lazily: numerics must not import torch before the environment is pinned

    if hasattr(numerics, "configure_inductor"):
        numerics.configure_inductor()


class AdamWStep:
    """One full-batch AdamW update of ``model`` on cross-entropy: ``step()`` zeroes the gradients, back-propagates
    ``cross_entropy(model(inputs), labels)`` and updates the parameters.

    Backends (``backend``):

    * ``"eager"``: the model as written and torch's default AdamW (on CPU its single-tensor implementation):
      bit for bit the plain loop.
    * ``"compiled"``: the loss and its gradient through ``torch.compile`` (inductor; whole graph, static shapes)
      and fused AdamW. Compiled at the first call (seconds; inductor's on-disk cache makes a repeat faster),
      after clearing dynamo's in-memory caches, so what is compiled never depends on what the process compiled
      before (and a process that trains many architectures never meets dynamo's recompile limit, past which it
      would silently run eager). Its numbers agree with eager to float32 rounding, not bitwise: the backend is
      part of a run's identity (store keys, logs, checkpoints).
    * ``"auto"``: :func:`resolve_step_backend`; if compiling then fails at the first call (an inductor error),
      the step falls back to eager before any update, says so (``RuntimeWarning``) and :attr:`backend` becomes
      ``"eager"``. Under ``"compiled"`` (or a backend adopted from a checkpoint) that failure raises
      :class:`CompiledStepError` instead.

    The optimiser's ``state_dict()`` gains ``"step_backend"``. Loading a state dict checks it (a state dict
    without one was saved by the eager step, the only one before): a different backend raises, except under
    ``"auto"`` before the first step, where the checkpoint's backend is adopted (a resumed run continues with the
    backend of its trajectory). Loading also restores this backend's AdamW implementation (``torch.optim``
    would otherwise take the saved ``fused`` flag), so state dicts stay loadable across backends.

    Args:
        model: trained in place; maps ``inputs`` to logits ``[N, C]``.
        inputs, labels: the whole training set (``labels: LongTensor[N]``).
        lr, weight_decay, betas: ``torch.optim.AdamW`` hyper-parameters (``eps`` its default).
        backend: ``"auto"``, ``"eager"`` or ``"compiled"``.
        fused: AdamW's implementation, ``None`` for the backend's (eager: torch's default; compiled: fused, see
            ``_COMPILED_FUSED_ADAMW``). For benchmarks only: it changes the numbers at float32
            rounding and nothing records it but the optimiser state's ``fused`` flag.
    Attributes:
        optimiser: the ``torch.optim.AdamW``.
        backend: the backend in use, ``"eager"`` or ``"compiled"``.
        compile_seconds: wall time of the first compiled call: compiling, then its forward and backward (``None``
            before the first call; 0 for eager).
    """

    def __init__(self, model: nn.Module, inputs: Tensor, labels: Tensor, *, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.98), backend: str = "auto", fused: bool | None = None):
        self.model, self.inputs, self.labels = model, inputs, labels
        self._requested = backend
        self.backend = resolve_step_backend(backend)
        self._strict = backend != "auto"
        self._fused = fused
        self._loss: Callable[[Tensor, Tensor], Tensor] | None = None
        self.compile_seconds: float | None = None
        self.optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
        self._implement()
        self.optimiser.register_state_dict_post_hook(self._state_dict_post_hook)
        self.optimiser.register_load_state_dict_pre_hook(self._load_state_dict_pre_hook)
        self.optimiser.register_load_state_dict_post_hook(lambda optimiser: self._implement())

    def _implement(self) -> None:
        fused = self._fused if self._fused is not None else (self.backend == "compiled" and _COMPILED_FUSED_ADAMW)
        for group in self.optimiser.param_groups:
            group["fused"], group["foreach"] = (True, None) if fused else (None, None)

    def _state_dict_post_hook(self, optimiser: torch.optim.Optimizer, state: dict) -> dict:
        return {**state, "step_backend": self.backend}

    def _load_state_dict_pre_hook(self, optimiser: torch.optim.Optimizer, state: dict) -> dict:
        saved = state.pop("step_backend", "eager")
        if saved != self.backend:
            if self._strict or self._loss is not None or saved not in ("eager", "compiled"):
                raise ValueError(f"step_backend={self._requested!r} ({self.backend}) cannot continue a checkpoint "
                                 f"trained with step_backend={saved!r}: the two agree only to float32 rounding")
            self.backend, self.compile_seconds = saved, None
        self._strict = True  # a resumed trajectory keeps its backend: no silent fallback from here on
        return state

    def _compile(self) -> None:
        """The first compiled call's forward and backward (the optimiser step follows in ``__call__``)."""
        model = self.model

        def loss(inputs: Tensor, labels: Tensor) -> Tensor:
            return nn.functional.cross_entropy(model(inputs), labels)

        started = time.perf_counter()
        try:
            _configure_inductor()
            torch.compiler.reset()
            compiled = torch.compile(loss, dynamic=False, fullgraph=True)
            compiled(self.inputs, self.labels).backward()
        except Exception as error:  # any failure to compile (no compiler, an inductor or dynamo error)
            reason = _one_line(error)
            if self._strict:
                raise CompiledStepError(f"the compiled training step failed here ({reason}); train with "
                                        f"step_backend='eager' (another run: its numbers differ at float32 "
                                        f"rounding)") from error
            warnings.warn(f"step_backend='auto': the compiled training step failed ({reason}); training steps "
                          f"run eager", RuntimeWarning, stacklevel=3)
            self.backend = "eager"
            self._implement()
            self.optimiser.zero_grad(set_to_none=True)
            self._loss = self._eager_loss
            self.compile_seconds = 0.0
            self._eager_loss(self.inputs, self.labels).backward()
            return
        self._loss = compiled
        self.compile_seconds = time.perf_counter() - started  # includes one step's forward and backward

    def _eager_loss(self, inputs: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(self.model(inputs), labels)

    def __call__(self) -> None:
        """One AdamW update on the full batch."""
        self.optimiser.zero_grad(set_to_none=True)
        if self._loss is None:
            if self.backend == "compiled":
                self._compile()
            else:
                self._loss, self.compile_seconds = self._eager_loss, 0.0
                self._loss(self.inputs, self.labels).backward()
        else:
            self._loss(self.inputs, self.labels).backward()
        self.optimiser.step()


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
    stop: StopRule | None = None,
    step_backend: str = "auto",
) -> list[dict]:
    """Full-batch AdamW on cross-entropy (one step = one epoch), resumable, with a log and saved checkpoints.

    At every step in ``log_steps`` and ``checkpoint_steps`` (step ``s`` = the state after ``s`` updates) the log
    gains a record ``{"step", "train_seconds", **evaluate(s, model)}``. At every checkpoint step the model,
    the optimiser state and the log so far are saved atomically to ``store`` as ``checkpoint_{s:07d}``.

    Training ends at the cap ``n_steps`` or, with a ``stop`` rule, at the first logged step at which the rule
    fires (:meth:`hessian_book.outcomes.StopRule.stop_step` on the log's ``test_acc``), whichever comes first; the
    end step is always a checkpoint, and the returned log's last record says why training ended: ``"stopped":
    "rule"`` or ``"cap"`` (only the returned copy: the stored logs are the bare trajectory).

    The store holds one trajectory, whatever the cap or rule of the call that computed it (full-batch updates are
    deterministic, so the store may be keyed without the cap): a call reads its end off the stored log when the
    store already reaches it (a smaller cap, or the rule firing inside the stored log), and returns exactly the
    prefix of the stored log up to that end, re-running from the last checkpoint before the end (re-using the
    stored log records, so nothing is re-evaluated) if the end itself was not saved; otherwise it resumes from
    the latest intact checkpoint and continues, so a run stopped at a cap and resumed with a larger one is the
    uninterrupted run, bit for bit. A checkpoint that fails its checksum is quarantined and training resumes from
    the one before it.

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
        stop: the stop rule (``None``: train to ``n_steps``); ``evaluate`` must then return ``test_acc``.
        step_backend: ``"auto"``, ``"eager"`` or ``"compiled"`` (:class:`AdamWStep`, which a resumed run
            continues with its checkpoint's backend); each log record says the one used (``"step_backend"``).
    Returns:
        the log: one record per logged step up to the end step, in step order, the last with ``"stopped"``.
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps={n_steps!r} must be a positive integer")
    if not (lr > 0 and weight_decay >= 0):
        raise ValueError(f"lr={lr!r} must be > 0 and weight_decay={weight_decay!r} >= 0")
    saves = sorted({int(s) for s in checkpoint_steps} | {n_steps})
    logs = sorted(set(saves) | {int(s) for s in (log_steps or ())})
    if saves[0] < 0 or logs[0] < 0 or logs[-1] > n_steps:
        raise ValueError(f"checkpoint_steps and log_steps must lie in [0, n_steps={n_steps}]")
    if stop is not None and not isinstance(stop, StopRule):
        raise ValueError(f"stop={stop!r} must be a hessian_book.outcomes.StopRule or None")
    adamw_step = AdamWStep(model, inputs, labels, lr=lr, weight_decay=weight_decay, betas=betas,
                           backend=step_backend)
    optimiser = adamw_step.optimiser
    # What the store already knows of the trajectory (possibly beyond this call's end), and this call's end.
    known = _furthest_log(store)
    end, why = _end_in(known, n_steps, stop)
    last = n_steps if end is None else end
    saves = sorted({s for s in saves if s <= last} | {last})
    done = _intact_prefix(store, sorted(set(saves) | {s for s in _stored_steps(store) if s <= last}))
    step, seconds, log = 0, 0.0, []
    if done:
        state = store.load(checkpoint_name(done[-1]))
        if done[-1] == last and end is not None:
            model.load_state_dict(state["model"])
            return _ended(state["log"], why)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, log = done[-1], state["log"]
        seconds = log[-1]["train_seconds"]

    def record(at: int) -> bool:
        """Log (and save) step ``at``; whether the stop rule fires there."""
        nonlocal seconds
        if at in known:  # computed before, on this very trajectory: the stored record, so the log is a prefix
            entry = known[at]
            seconds = entry["train_seconds"]
        else:
            was_training = model.training
            model.eval()
            entry = {"step": at, "train_seconds": seconds, "step_backend": adamw_step.backend,
                     **(evaluate(at, model) if evaluate else {})}
            model.train(was_training)
        log.append(entry)
        fires = stop is not None and stop.stop_step(*_test_curve(log)) == at
        if at in saves or fires:
            store.save(checkpoint_name(at),
                       {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "log": log})
        return fires

    fired = False
    if not done and 0 in logs:
        fired = record(0)
    pending = sorted({s for s in logs if step < s <= last} | ({last} if step < last else set()))
    model.train()
    with tqdm(total=n_steps, initial=step, desc=desc, disable=not show_progress(progress)) as bar:
        while step < last and not fired:
            started = time.perf_counter()
            adamw_step()
            step += 1
            seconds += time.perf_counter() - started
            bar.update(1)
            if pending and step == pending[0]:
                pending.pop(0)
                fired = record(step)
    return _ended(log, "rule" if fired else "cap")


def completed_log(store: ResultStore, *, n_steps: int, stop: StopRule | None = None) -> list[dict] | None:
    """The log :func:`train_full_batch_adamw` would return for cap ``n_steps`` and rule ``stop`` if ``store`` holds it
    already (its end is read off the stored log and the end step's checkpoint is intact), else ``None``; trains
    nothing. Lets a chapter read another chapter's run only where it is complete."""
    end, why = _end_in(_furthest_log(store), n_steps, stop)
    if end is None or not store.verified(checkpoint_name(end)):
        return None
    return _ended(store.load(checkpoint_name(end))["log"], why)


def _stored_steps(store: ResultStore) -> list[int]:
    """The steps of the checkpoints present in ``store`` (intact or not), ascending."""
    return sorted(int(name[len("checkpoint_"):]) for name in store.names()
                  if name.startswith("checkpoint_") and name[len("checkpoint_"):].isdigit())


def _furthest_log(store: ResultStore) -> dict[int, dict]:
    """step -> log record of the latest intact checkpoint's log (empty without one); corrupt ones are quarantined."""
    for step in reversed(_stored_steps(store)):
        if store.verified(checkpoint_name(step)):
            return {int(r["step"]): r for r in store.load(checkpoint_name(step))["log"]}
    return {}


def _test_curve(log: Sequence[dict]) -> tuple[list[int], list[float]]:
    if any("test_acc" not in r for r in log):
        raise ValueError("stop= needs evaluate() records with 'test_acc' (the stop rule reads test accuracy)")
    return [r["step"] for r in log], [r["test_acc"] for r in log]


def _end_in(known: dict[int, dict], n_steps: int, stop: StopRule | None) -> tuple[int | None, str | None]:
    """Where a call with cap ``n_steps`` and rule ``stop`` ends, if the stored log ``known`` already tells:
    ``(step, "rule" | "cap")``, else ``(None, None)``."""
    prefix = [known[s] for s in sorted(known) if s <= n_steps]
    if stop is not None and prefix:
        fires = stop.stop_step(*_test_curve(prefix))
        if fires is not None:
            return fires, "rule"
    if known and max(known) >= n_steps:
        return n_steps, "cap"
    return None, None


def _ended(log: Sequence[dict], why: str) -> list[dict]:
    """A copy of ``log`` whose last record says why training ended."""
    return [*log[:-1], {**log[-1], "stopped": why}]
