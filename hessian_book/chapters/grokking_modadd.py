"""Grokking a + b mod p: a one-layer transformer trained full-batch with AdamW, and its Hessian spectrum through
the transition.

``Config`` holds the chapter's parameters; :func:`main_run` trains (or reads) the chapter's main run, which the
Fiedler and mechanistic chapters read too; :func:`hessian_batch` is the Hessian subsample. ``run(config)``
computes the chapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from .. import config as checks
from ..config import ChapterConfig
from ..curves import transition_checkpoints, transition_window
from ..models import ModAddTransformer, n_parameters
from ..runs import ModAddRun, hessian_batch as _hessian_batch, modadd_checkpoint_steps, train_modadd

__all__ = ["Config", "main_run", "hessian_batch", "checkpoint_steps", "window", "transition_picks"]

_DENSE_PICKS = ("before", "during", "after", "final")


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """The grokking chapter's parameters.

    Attributes:
        p, train_fraction: the task ``a + b mod p`` (p prime) and the share of all ``p²`` pairs trained on.
        split_seed: the train/test split. seed: the initialisation; the Hessian subsample uses ``seed + 1``.
        lr, betas, weight_decay, n_steps: full-batch AdamW (Nanda et al. 2023, except the weight decay).
        log_every: train/test curves are logged this often.
        d_model, n_heads, d_mlp: the main run's model (``d_mlp=None``: attention only).
        dense_every, dense_until, sparse_every: checkpoints 0, 10, 50, 100, 200, 500, every ``dense_every`` from
            1K to ``dense_until``, then every ``sparse_every``.
        recipe_configs, recipe_steps: the recipe search, ``[d_model, n_heads, d_mlp, weight_decay]`` each.
        hessian_samples: the Hessian's seeded subsample of training pairs (float64).
        lanczos_k, lanczos_tol, lanczos_block: eigenvalues at each end at every checkpoint, relative residual
            tolerance, block size.
        slq_probes, slq_steps: stochastic Lanczos quadrature at every checkpoint.
        n_vectors: top and bottom eigenvectors kept where the full spectrum is computed.
        dense_picks: checkpoints that get all eigenvalues (of before, during, after, final).
        transition_low, transition_high: the transition is test accuracy climbing from low to high.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        # a tiny model for a few hundred steps, in a fresh temporary directory so CI always recomputes
        "smoke": dict(p=23, d_model=8, d_mlp=16, weight_decay=1.0, lr=3e-3, n_steps=300, log_every=10,
                      recipe_configs=[[8, 1, None, 1.0], [8, 1, 16, 0.1], [8, 1, 16, 0.3], [8, 1, 16, 1.0],
                                      [8, 1, 8, 0.5]],
                      recipe_steps=100, hessian_samples=20, lanczos_k=3, lanczos_block=2, slq_probes=2,
                      slq_steps=10, n_vectors=3, results_dir=""),
    }

    p: int = 113
    train_fraction: float = 0.3
    split_seed: int = 0
    seed: int = 0
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    n_steps: int = 40000
    log_every: int = 100
    d_model: int = 32
    n_heads: int = 1
    d_mlp: int | None = 128
    weight_decay: float = 0.5
    dense_every: int = 500
    dense_until: int = 14000
    sparse_every: int = 6500
    recipe_configs: list = field(default_factory=lambda: [[32, 1, None, 1.0], [32, 1, 128, 0.1],
                                                          [32, 1, 128, 0.3], [32, 1, 128, 1.0],
                                                          [32, 1, 64, 0.5]])
    recipe_steps: int = 6000
    hessian_samples: int = 200
    lanczos_k: int = 20
    lanczos_tol: float = 1e-6
    lanczos_block: int = 8
    slq_probes: int = 6
    slq_steps: int = 50
    n_vectors: int = 50
    dense_picks: list = field(default_factory=lambda: ["before", "during", "after"])
    transition_low: float = 0.5
    transition_high: float = 0.95

    def validate(self) -> None:
        checks.prime("p", self.p)
        for name in ("n_steps", "log_every", "d_model", "n_heads", "dense_every", "dense_until", "sparse_every",
                     "recipe_steps", "hessian_samples", "lanczos_k", "lanczos_block", "slq_probes", "slq_steps",
                     "n_vectors"):
            checks.positive_int(name, getattr(self, name))
        checks.non_negative_int("split_seed", self.split_seed)
        checks.non_negative_int("seed", self.seed)
        if self.d_mlp is not None:
            checks.positive_int("d_mlp", self.d_mlp)
        if self.d_model % self.n_heads:
            raise checks.ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        checks.fraction("train_fraction", self.train_fraction)
        checks.positive_float("lr", self.lr)
        checks.positive_float("lanczos_tol", self.lanczos_tol)
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise checks.ConfigError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise checks.ConfigError(f"betas={self.betas!r} must be two numbers in [0, 1)")
        if not 0 <= self.transition_low < self.transition_high <= 1:
            raise checks.ConfigError(f"transition_low={self.transition_low!r} and transition_high="
                                     f"{self.transition_high!r} must satisfy 0 <= low < high <= 1")
        if not self.dense_picks or not set(self.dense_picks) <= set(_DENSE_PICKS):
            raise checks.ConfigError(f"dense_picks={self.dense_picks!r} must be a non-empty subset of "
                                     f"{list(_DENSE_PICKS)}")
        for entry in self.recipe_configs:
            if len(entry) != 4:
                raise checks.ConfigError(f"recipe_configs entry {entry!r} must be [d_model, n_heads, d_mlp, "
                                         "weight_decay]")
        n_train = round(self.train_fraction * self.p * self.p)
        if self.hessian_samples > n_train:
            raise checks.ConfigError(f"hessian_samples={self.hessian_samples} exceeds the {n_train} training pairs")
        n_params = n_parameters(ModAddTransformer(self.p, self.d_model, self.n_heads, self.d_mlp, self.seed))
        if 2 * self.lanczos_k > n_params or 2 * self.n_vectors > n_params:
            raise checks.ConfigError(f"lanczos_k={self.lanczos_k} and n_vectors={self.n_vectors} must be <= "
                                     f"{n_params // 2} (half the parameters)")


def checkpoint_steps(config: Config) -> list[int]:
    """The main run's checkpoint schedule."""
    return modadd_checkpoint_steps(config.n_steps, dense_every=config.dense_every, dense_until=config.dense_until,
                                   sparse_every=config.sparse_every)


def main_run(config: Config, *, progress: bool | None = None) -> ModAddRun:
    """Train (or resume, or read) the chapter's main run; keyed by its training parameters only."""
    return train_modadd(config.results_dir, "grokking_modadd", p=config.p, train_fraction=config.train_fraction,
                        split_seed=config.split_seed, seed=config.seed, d_model=config.d_model,
                        n_heads=config.n_heads, d_mlp=config.d_mlp, lr=config.lr, weight_decay=config.weight_decay,
                        betas=config.betas, n_steps=config.n_steps, log_every=config.log_every,
                        checkpoint_steps=checkpoint_steps(config), progress=progress, desc="main run")


def hessian_batch(config: Config) -> tuple[Tensor, Tensor]:
    """The Hessian's fixed subsample of training pairs: ``(LongTensor[n, 3], LongTensor[n])``."""
    return _hessian_batch(config.p, config.train_fraction, config.split_seed, config.hessian_samples,
                          subsample_seed=config.seed + 1)


def window(run: ModAddRun, config: Config) -> dict:
    """The transition of ``run``: ``{"start", "end"}``, the first logged steps at which test accuracy reaches
    ``config.transition_low`` and ``config.transition_high`` (each ``None`` if never reached)."""
    return transition_window(run.curve("step"), run.curve("test_acc"), low=config.transition_low,
                             high=config.transition_high)


def transition_picks(run: ModAddRun, config: Config) -> dict[str, int]:
    """The checkpoints the chapter picks around the transition: ``{"before", "during", "after", "final"}`` steps.

    ``before``/``during``/``after`` are :func:`hessian_book.curves.transition_checkpoints` of the chapter's
    checkpoint schedule and :func:`window`; ``final`` is the last checkpoint. The Fiedler chapter reads the same
    picks.
    """
    checkpoints = checkpoint_steps(config)
    return {**transition_checkpoints(checkpoints, window(run, config)), "final": checkpoints[-1]}
