"""The training runs the chapters share, each in a store keyed by its training parameters only.

* :func:`mnist_lenet_run` -- LeNet-tiny on MNIST with SGD (the MNIST and Fiedler chapters);
* :func:`train_modadd` -- the one-layer transformer on ``a + b mod p`` with full-batch AdamW (the grokking,
  Fiedler and mechanistic chapters);
* :func:`modadd_mlp_run` -- an MLP on ``a + b mod p`` with its Hessian extremes over training (the depth chapter).

Analyses of a run (spectra, trees) live in child stores keyed by the run's key plus their own parameters, so
changing an analysis setting never retrains a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hessian_core import LanczosConvergenceError, hessian_operator, lanczos

from .data import load_mnist, modular_addition_split
from .models import ModAddMLP, ModAddTransformer, lenet_tiny, n_parameters
from .outcomes import StopRule, outcome_of_log
from .progress import show_progress
from .sharpness import adam_preconditioner, hessian_extremes
from .store import ResultStore
from .training import (checkpoint_name, full_batch_evaluator, mnist_checkpoint_steps, resolve_step_backend,
                       split_evaluator, train_full_batch_adamw, train_sgd_with_checkpoints)

__all__ = ["MnistLenetRun", "mnist_lenet_run", "hessian_subsample", "ModAddRun", "train_modadd",
           "modadd_checkpoint_steps", "hessian_batch", "modadd_mlp_run"]

_MODEL_KEYS = ("p", "d_model", "n_heads", "d_mlp", "seed")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MnistLenetRun:
    """One SGD run of LeNet-tiny on MNIST.

    Attributes:
        store: the run's checkpoints (``checkpoint_{step:07d}``), keyed by its training parameters only.
        train, test: ``(images Tensor[N, 1, 28, 28], labels LongTensor[N])``.
        checkpoints: the seed's checkpoint steps for this run.
        params: the hyper-parameters (``seed, epochs, batch_size, lr, momentum``).
    """

    store: ResultStore
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    checkpoints: list[int]
    params: dict

    def train_or_resume(self, *, progress: bool | None = None) -> list[dict]:
        """Train (or resume, or just read) the run; returns the per-checkpoint records with train/test loss and
        accuracy (see :func:`hessian_book.training.train_sgd_with_checkpoints`)."""
        p = self.params
        return train_sgd_with_checkpoints(
            lenet_tiny(seed=p["seed"]), *self.train, store=self.store, checkpoint_steps=self.checkpoints,
            lr=p["lr"], momentum=p["momentum"], batch_size=p["batch_size"], epochs=p["epochs"], seed=p["seed"],
            on_checkpoint=split_evaluator(self.train, self.test), progress=progress)

    def model_at(self, step: int) -> torch.nn.Module:
        """LeNet-tiny with the parameters saved at checkpoint ``step`` (raises if it was never saved)."""
        model = lenet_tiny()
        model.load_state_dict(self.store.load(checkpoint_name(step))["model"])
        return model


def mnist_lenet_run(results_dir: str, data_dir: str | None, *, seed: int, epochs: int, batch_size: int, lr: float,
                    momentum: float, n_train: int, n_test: int, download: bool = True) -> MnistLenetRun:
    """Load the data and open the results store of an MNIST LeNet-tiny run.

    Args:
        results_dir: results root; the run lives in ``<results_dir>/mnist_lenet/<key of the parameters>``.
        data_dir: MNIST root (see :func:`hessian_book.data.resolve_mnist_dir`).
        seed, epochs, batch_size, lr, momentum: SGD run.
        n_train: training images used (a seeded subset), 0 for all 60,000.
        n_test: test images used (the first ``n_test``), 0 for all 10,000.
        download: fetch MNIST if absent (with checksum checks).
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be 0 (all) or a positive integer")
    train_x, train_y = load_mnist("train", data_dir, download=download)
    test_x, test_y = load_mnist("test", data_dir)
    if n_train:
        if n_train > len(train_x):
            raise ValueError(f"n_train={n_train} exceeds the {len(train_x)} training images")
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:n_train]
        train_x, train_y = train_x[keep], train_y[keep]
    if n_test:
        test_x, test_y = test_x[:n_test], test_y[:n_test]
    steps_per_epoch = -(-len(train_x) // batch_size)
    params = dict(seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum)
    # Training parameters only: the chapters' spectra and trees live in child stores keyed by this store's key.
    key = dict(**params, n_train=n_train, n_test=len(test_x), model="lenet_tiny")
    return MnistLenetRun(store=ResultStore(results_dir, "mnist_lenet", key), train=(train_x, train_y),
                         test=(test_x, test_y), checkpoints=mnist_checkpoint_steps(steps_per_epoch, epochs),
                         params=params)


def hessian_subsample(inputs: Tensor, labels: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples of a seeded permutation (so the subsample for ``n`` contains that for ``m < n``).

    The MNIST chapters use ``seed + 1`` of the run's seed.
    """
    if not isinstance(n, int) or not 1 <= n <= len(inputs):
        raise ValueError(f"n={n!r} must be an integer in [1, {len(inputs)}]")
    idx = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))[:n]
    return inputs[idx], labels[idx]
@dataclass
class ModAddRun:
    """A finished (or resumed) training run.

    Attributes:
        params: the parameters that keyed ``store`` (every training parameter but the cap), plus ``n_steps`` (the
            cap this run was asked for) and ``stop`` (the stop rule's parameters, or ``None``).
        store: where its checkpoints ``checkpoint_{step:07d}`` live.
        log: one record per logged step up to the run's end: ``step``, ``train_seconds``, ``train_loss``,
            ``train_acc``, ``test_loss``, ``test_acc``; the last also ``stopped`` (``"rule"`` or ``"cap"``).
        checkpoint_steps: the saved steps up to the run's end (the schedule's, and the end step), ascending.
    """

    params: dict
    store: ResultStore
    log: list[dict]
    checkpoint_steps: list[int]

    @property
    def end_step(self) -> int:
        """The step at which training ended (the cap, or where the stop rule stopped it)."""
        return int(self.log[-1]["step"])

    @property
    def stopped(self) -> str:
        """Why training ended: ``"rule"`` (the stop rule) or ``"cap"`` (``n_steps``)."""
        return self.log[-1]["stopped"]

    def curve(self, name: str) -> np.ndarray:
        """``ndarray[T]`` of a logged quantity (``"step"``, ``"train_acc"``, ...)."""
        return np.array([record[name] for record in self.log])

    def model_at(self, step: int) -> ModAddTransformer:
        """The model as saved at checkpoint ``step``."""
        model = ModAddTransformer(**{k: self.params[k] for k in _MODEL_KEYS})
        model.load_state_dict(self.store.load(checkpoint_name(step))["model"])
        return model


def train_modadd(root: str, experiment: str, *, p: int, train_fraction: float, split_seed: int, seed: int, d_model: int,
                 n_heads: int, d_mlp: int | None, lr: float, weight_decay: float, betas: Sequence[float],
                 n_steps: int, log_every: int, checkpoint_steps: Sequence[int], checkpoint_every: int = 0,
                 stop: StopRule | None = None, step_backend: str = "auto", progress: bool | None = None,
                 desc: str = "training") -> ModAddRun:
    """Train (or resume, or load) ``a + b mod p`` with full-batch AdamW, logging train/test loss and accuracy.

    The split (:func:`hessian_book.data.modular_addition_split`) uses ``split_seed``, the initialisation ``seed``.
    The store ``<root>/<experiment>/<key>`` is keyed by every training argument *except the cap* ``n_steps`` and
    the stop rule (neither changes the trajectory, only where it ends), with a checkpoint schedule that does not
    depend on the cap: so a run stopped at a cap and asked again with a larger one continues bit-identically, a
    smaller cap returns exactly the prefix up to it, and the result depends only on the arguments
    (:func:`hessian_book.training.train_full_batch_adamw`). A rerun with the same arguments trains nothing.

    Args:
        n_steps: the cap, a multiple of ``log_every`` (so it is a logged step of every longer run).
        log_every: log interval in steps (checkpoint steps are logged too).
        checkpoint_steps: steps at which the model is saved, independent of the cap (steps beyond it are not
            reached); the end step is always saved too.
        checkpoint_every: also save every ``checkpoint_every`` steps (0: no periodic checkpoints).
        stop: the stop rule (:class:`hessian_book.outcomes.StopRule`; ``None``: train to the cap).
        step_backend: ``"auto"``, ``"eager"`` or ``"compiled"`` (:class:`hessian_book.training.AdamWStep`); the
            backend actually used (:func:`hessian_book.training.resolve_step_backend`) keys the store, since the
            two agree only to float32 rounding.
    Returns:
        :class:`ModAddRun`.
    """
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every={log_every!r} must be a positive integer")
    if not isinstance(n_steps, int) or n_steps < 1 or n_steps % log_every:
        raise ValueError(f"n_steps={n_steps!r} must be a positive multiple of log_every={log_every}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={checkpoint_every!r} must be a non-negative integer")
    schedule = sorted({int(s) for s in checkpoint_steps})
    if schedule and schedule[0] < 0:
        raise ValueError(f"checkpoint_steps={schedule!r} must be >= 0")
    params = dict(p=p, train_fraction=train_fraction, split_seed=split_seed, seed=seed, d_model=d_model,
                  n_heads=n_heads, d_mlp=d_mlp, lr=lr, weight_decay=weight_decay, betas=list(betas), log_every=log_every,
                  checkpoint_steps=schedule, checkpoint_every=checkpoint_every,
                  step_backend=resolve_step_backend(step_backend))
    split = modular_addition_split(p, train_fraction, split_seed)
    model = ModAddTransformer(p, d_model, n_heads, d_mlp, seed)  # validates the model arguments
    store = ResultStore(root, experiment, params)
    saves = _schedule_up_to(schedule, checkpoint_every, n_steps)
    log = train_full_batch_adamw(
        model, *split["train"], store=store, n_steps=n_steps, checkpoint_steps=saves, lr=lr,
        weight_decay=weight_decay, betas=tuple(betas), log_steps=range(0, n_steps + 1, log_every),
        evaluate=split_evaluator(split["train"], split["test"]), progress=progress, desc=desc, stop=stop,
        step_backend=params["step_backend"])
    end = int(log[-1]["step"])
    return ModAddRun(params=dict(params, n_steps=n_steps, stop=None if stop is None else stop.as_dict()),
                     store=store, log=log, checkpoint_steps=sorted({s for s in saves if s <= end} | {end}))


def _schedule_up_to(steps: Sequence[int], every: int, n_steps: int) -> list[int]:
    """The checkpoint steps ``<= n_steps`` of a cap-independent schedule: ``steps`` and every ``every`` (0: none)."""
    periodic = set(range(0, n_steps + 1, every)) if every else set()
    return sorted({int(s) for s in steps if s <= n_steps} | periodic)


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


def hessian_batch(p: int, train_fraction: float, split_seed: int, n_samples: int, *,
                  subsample_seed: int) -> tuple[Tensor, Tensor]:
    """A fixed subsample of ``n_samples`` training pairs: ``(LongTensor[n, 3], LongTensor[n])``.

    The pairs are the first ``n_samples`` of a permutation seeded by ``subsample_seed`` (the grokking chapter uses
    its run's ``seed + 1``) of the training split seeded by ``split_seed``.
    """
    train_x, train_y = modular_addition_split(p, train_fraction, split_seed)["train"]
    if not 1 <= n_samples <= len(train_x):
        raise ValueError(f"n_samples={n_samples} must be in [1, {len(train_x)}] (the training pairs)")
    return hessian_subsample(train_x, train_y, n_samples, subsample_seed)


def checkpoint_hessian_extremes(train_store: ResultStore, hessian_store: ResultStore, steps: list[int],
                                make_model: Callable[[], nn.Module], batch: tuple[Tensor, Tensor], *,
                                tol: float, dtype: torch.dtype, progress: bool | None = None) -> list[dict]:
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
    from tqdm.std import tqdm

    def compute(step: int) -> dict:
        state = train_store.load(checkpoint_name(step))
        model = make_model()
        model.load_state_dict(state["model"])
        has_state = bool(state["optimiser"]["state"])
        P = adam_preconditioner(state["optimiser"]) if has_state else None
        out = hessian_extremes(model, nn.CrossEntropyLoss(), batch, tol=tol, dtype=dtype, preconditioner=P)
        out.setdefault("preconditioned_lambda_max", float("nan"))
        return {"step": step, **out}

    return [hessian_store.cached(f"hessian_{s:07d}", lambda: compute(s))
            for s in tqdm(steps, desc="Hessians", disable=not show_progress(progress), leave=False)]


def _certified_ritz_values(error: LanczosConvergenceError) -> np.ndarray:
    """``ndarray[k]`` of an unfinished Lanczos run: its Ritz values, NaN where the residual exceeds the threshold."""
    values = np.array(error.eigenvalues, dtype=np.float64)
    values[~(np.asarray(error.residual_norms) <= error.threshold)] = np.nan
    return values


def modadd_mlp_run(results_dir: str | Path, *, p: int, depth: int, width: int, input_encoding: str,
                   train_fraction: float, split_seed: int, seed: int, n_steps: int, lr: float, weight_decay: float,
                   betas: tuple[float, float], log_every: int, hessian_every: int, lanczos_tol: float,
                   hessian_dtype: str, top_k: int = 0, stop: StopRule | None = None, step_backend: str = "auto",
                   progress: bool | None = None) -> dict:
    """Train one MLP on ``(a + b) mod p`` and compute its Hessian extremes over training (resumable).

    Training: full-batch AdamW for at most ``n_steps`` (the cap) on a ``train_fraction`` split of all ``p²`` pairs
    (split seeded by ``split_seed``, initialisation by ``seed``), ending earlier where the ``stop`` rule fires;
    every ``log_every`` steps the metrics of :func:`full_batch_evaluator`; a checkpoint every ``hessian_every``
    steps (0: none) and at the end step. The training store is keyed by every training parameter but the cap and
    the rule, so a larger cap continues the same trajectory and a smaller one reads its prefix
    (:func:`hessian_book.training.train_full_batch_adamw`). Hessians: at every checkpoint up to the end, on the
    full training set (:func:`checkpoint_hessian_extremes`); with ``top_k > 0`` also the ``top_k`` largest
    eigenvalues at the end step (same tolerance and precision; NaN for any Lanczos did not resolve within its
    iteration cap). ``step_backend``: as in :func:`train_modadd` (the
    backend used keys the training store).

    Returns:
        ``{"log": [records], "hessian": [records], "n_params": P, "memorised"/"generalised"/"ratio": steps (or
        ratio) or None, "groks": bool, "outcome": Outcome, "end_step", "stopped": "rule" | "cap", "top":
        ndarray[top_k] ascending or None}`` — the outcomes by :func:`hessian_book.outcomes.outcome` within
        ``n_steps``.
    """
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be a non-negative integer")
    if hessian_dtype not in _DTYPES:
        raise ValueError(f"hessian_dtype={hessian_dtype!r} must be one of {sorted(_DTYPES)}")
    if not isinstance(log_every, int) or not 1 <= log_every <= n_steps:
        raise ValueError(f"log_every={log_every!r} must be an integer in [1, n_steps={n_steps}]")
    if n_steps % log_every:
        raise ValueError(f"n_steps={n_steps!r} must be a multiple of log_every={log_every}")
    if not isinstance(hessian_every, int) or not 0 <= hessian_every <= n_steps:
        raise ValueError(f"hessian_every={hessian_every!r} must be an integer in [0, n_steps={n_steps}]")
    split = modular_addition_split(p, train_fraction, split_seed, with_equals=False)
    train_params = dict(p=p, depth=depth, width=width, input_encoding=input_encoding, train_fraction=train_fraction,
                        split_seed=split_seed, seed=seed, lr=lr, weight_decay=weight_decay,
                        betas=list(betas), log_every=log_every, hessian_every=hessian_every,
                        step_backend=resolve_step_backend(step_backend))
    train_store = ResultStore(results_dir, "mlp_depth_modadd", train_params)
    # The Hessians are an analysis of the run: a child store keyed by the run's key and the analysis settings.
    hessian_store = ResultStore(results_dir, "mlp_depth_modadd_hessian",
                                dict(run=train_store.key, lanczos_tol=lanczos_tol, hessian_dtype=hessian_dtype))

    def make_model() -> nn.Module:
        return ModAddMLP(p, depth, width, input_encoding, seed)

    model = make_model()
    checkpoints = _schedule_up_to([], hessian_every, n_steps)
    log = train_full_batch_adamw(
        model, *split["train"], store=train_store, n_steps=n_steps, checkpoint_steps=checkpoints, lr=lr,
        weight_decay=weight_decay, betas=tuple(betas), log_steps=range(0, n_steps + 1, log_every),
        evaluate=full_batch_evaluator(split["train"], split["test"]), progress=progress,
        desc=f"depth {depth} seed {seed}", stop=stop, step_backend=train_params["step_backend"])
    end = int(log[-1]["step"])
    hessian = checkpoint_hessian_extremes(train_store, hessian_store, sorted({s for s in checkpoints if s <= end}
                                                                             | {end}),
                                          make_model, split["train"], tol=lanczos_tol,
                                          dtype=_DTYPES[hessian_dtype], progress=progress)
    top = None
    if top_k:
        def compute_top() -> np.ndarray:
            op = hessian_operator(model, nn.CrossEntropyLoss(), split["train"], dtype=_DTYPES[hessian_dtype])
            try:
                return lanczos(op, top_k, which="largest", tol=lanczos_tol, progress=False)
            except LanczosConvergenceError as error:
                # A dense cluster at the top (seen at the end of a depth-1 run: ten eigenvalues within 0.25-0.31)
                # can outlast the iteration cap. Keep the Ritz values whose residual met the threshold (each lies
                # within it of an eigenvalue); the rest are NaN, never plotted as eigenvalues.
                return _certified_ritz_values(error)

        top = hessian_store.cached(f"top{top_k}_{end:07d}", compute_top)
    outcome = outcome_of_log(log, budget=n_steps, **({} if stop is None else {"rule": stop}))
    return {"log": log, "hessian": hessian, "n_params": n_parameters(model), **outcome.delay(), "groks": outcome.groks,
            "outcome": outcome, "end_step": end, "stopped": log[-1]["stopped"], "top": top}
