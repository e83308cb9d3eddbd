"""How fast this machine is right now: a fixed ~10-second micro-benchmark run beside every timing.

A wall time means little without the machine's speed beside it: the same one-thread AdamW step of the grokking
transformer has measured 12 to 40 ms on this project's machine on different days. :func:`calibrate` times

* that step: full-batch AdamW (torch's default foreach implementation, lr 1e-3, weight decay 0.5, betas (0.9, 0.98))
  of the one-layer transformer (p = 113, d_model 32, 1 head, MLP 128) on its 3,831 training pairs (the 30 % split
  of 113² pairs), eager, on one thread: the median over up to ``n_blocks`` timed blocks of ``block_steps`` steps
  each (as many as fit in ``max_seconds``, at least ``min_blocks``), after warm-up steps;
* a float64 matrix product on one thread (GFLOP/s, the median over blocks);
* the load average before and after,

in a fresh single-thread context (torch and BLAS threads set to one and restored afterwards). The budgets of the
project are stated at the *reference speed*: :data:`REFERENCE_MS_PER_STEP` ms for that step (issue 18).
``speed_factor = measured / reference`` (> 1: slower than the reference), and :meth:`Calibration.to_reference`
scales a wall time measured now to what it would have taken at the reference speed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["REFERENCE_MS_PER_STEP", "Calibration", "calibrate", "combine", "from_dict", "print_calibration"]

REFERENCE_MS_PER_STEP = 12.0  # the one-thread AdamW step at the reference speed (issue 18's budgets are at it)

# The benchmark's fixed workload (changing any of these changes what a calibration means: keep them).
_P, _D_MODEL, _N_HEADS, _D_MLP, _TRAIN_FRACTION, _SPLIT_SEED = 113, 32, 1, 128, 0.3, 0
_LR, _WEIGHT_DECAY, _BETAS = 1e-3, 0.5, (0.9, 0.98)
_MATMUL_N = 384  # float64 n×n products: 2n³ flops each


@dataclass(frozen=True)
class Calibration:
    """One calibration of this machine.

    Attributes:
        ms_per_step: median one-thread AdamW step of the grokking transformer (ms).
        step_spread: ``(min, max)`` of the blocks' per-step times (ms), how steady the machine was.
        gflops: float64 matrix-product rate on one thread (GFLOP/s, median over blocks).
        load_before, load_after: the 1-minute load average before and after (NaN where the OS cannot tell).
        seconds: the benchmark's own wall time.
        n_blocks, block_steps: timed blocks of AdamW steps (blocks actually timed).
        reference_ms_per_step: the reference speed the factor is relative to.
    """

    ms_per_step: float
    step_spread: tuple[float, float]
    gflops: float
    load_before: float
    load_after: float
    seconds: float
    n_blocks: int
    block_steps: int
    reference_ms_per_step: float = REFERENCE_MS_PER_STEP

    @property
    def speed_factor(self) -> float:
        """``ms_per_step / reference_ms_per_step``: how many times slower than the reference the machine ran
        (0.5: twice as fast)."""
        return self.ms_per_step / self.reference_ms_per_step

    def to_reference(self, seconds: float) -> float:
        """A wall time measured at this calibration's speed, scaled to the reference speed."""
        return seconds / self.speed_factor

    def from_reference(self, seconds: float) -> float:
        """A wall time at the reference speed, scaled to this calibration's speed (an estimate for now)."""
        return seconds * self.speed_factor

    def summary(self) -> str:
        """One line: the step time, the factor, the matmul rate and the load."""
        return (f"calibration: {self.ms_per_step:.1f} ms/step (blocks {self.step_spread[0]:.1f}–"
                f"{self.step_spread[1]:.1f}; reference {self.reference_ms_per_step:g} ms: factor "
                f"{self.speed_factor:.2f}), float64 matmul {self.gflops:.1f} GFLOP/s (1 thread), load "
                f"{self.load_before:.2f} → {self.load_after:.2f}, measured in {self.seconds:.1f} s")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, ``speed_factor`` and ``summary`` (what a record's provenance stores)."""
        out = asdict(self)
        out["step_spread"] = list(self.step_spread)
        return {**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()},
                "speed_factor": round(self.speed_factor, 4), "summary": self.summary()}


def from_dict(values: dict[str, Any] | None) -> Calibration | None:
    """The :class:`Calibration` stored by :meth:`Calibration.as_dict` (``None`` for ``None``: not calibrated)."""
    if not values:
        return None
    return Calibration(ms_per_step=float(values["ms_per_step"]), step_spread=tuple(values["step_spread"]),
                       gflops=float(values["gflops"]), load_before=float(values["load_before"]),
                       load_after=float(values["load_after"]), seconds=float(values["seconds"]),
                       n_blocks=int(values["n_blocks"]), block_steps=int(values["block_steps"]),
                       reference_ms_per_step=float(values.get("reference_ms_per_step", REFERENCE_MS_PER_STEP)))


def combine(*calibrations: Calibration | None) -> Calibration | None:
    """One calibration from several taken around the same timing (before and after a record): the mean of their
    step times (so the speed factor is the mean factor), the extremes of their blocks' spreads, the mean matmul
    rate, the first one's load before and the last one's load after; ``None`` entries (not taken) are skipped,
    and ``None`` when none was taken.

    One calibration is a 10-second sample of a machine whose speed drifts over a 40-minute record (two taken three
    minutes apart have differed by 1.2x here); the mean of one before and one after halves that sampling error
    for a drift that is linear in time.
    """
    taken = [c for c in calibrations if c is not None]
    if not taken:
        return None
    if len(taken) == 1:
        return taken[0]
    references = {c.reference_ms_per_step for c in taken}
    if len(references) != 1:
        raise ValueError(f"calibrations against different reference speeds {sorted(references)} cannot be combined")
    return Calibration(ms_per_step=statistics.fmean(c.ms_per_step for c in taken),
                       step_spread=(min(c.step_spread[0] for c in taken), max(c.step_spread[1] for c in taken)),
                       gflops=statistics.fmean(c.gflops for c in taken), load_before=taken[0].load_before,
                       load_after=taken[-1].load_after, seconds=sum(c.seconds for c in taken),
                       n_blocks=sum(c.n_blocks for c in taken), block_steps=taken[0].block_steps,
                       reference_ms_per_step=references.pop())


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def _adamw_step_blocks(n_blocks: int, block_steps: int, warmup: int, timer: Callable[[], float], *,
                       max_seconds: float, min_blocks: int) -> list[float]:
    """Per-step milliseconds of each timed block of the benchmark step: ``n_blocks`` blocks, or fewer (at least
    ``min_blocks``) once ``max_seconds`` have passed on ``timer``."""
    import torch
    from torch import nn

    from .data import modular_addition_split
    from .models import ModAddTransformer

    inputs, labels = modular_addition_split(_P, _TRAIN_FRACTION, _SPLIT_SEED)["train"]
    model = ModAddTransformer(_P, _D_MODEL, _N_HEADS, _D_MLP, 0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY, betas=_BETAS)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(inputs), labels).backward()
        optimiser.step()

    first = timer()
    for _ in range(warmup):
        step()
    blocks: list[float] = []
    for _ in range(n_blocks):
        if len(blocks) >= min_blocks and timer() - first > max_seconds:
            break
        started = timer()
        for _ in range(block_steps):
            step()
        blocks.append(1000 * (timer() - started) / block_steps)
    return blocks


def _matmul_gflops(n_blocks: int, timer: Callable[[], float], repeats: int = 8) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((_MATMUL_N, _MATMUL_N)), rng.standard_normal((_MATMUL_N, _MATMUL_N))
    a @ b  # warm-up
    rates = []
    for _ in range(n_blocks):
        started = timer()
        for _ in range(repeats):
            a @ b
        rates.append(2 * _MATMUL_N ** 3 * repeats / (timer() - started) / 1e9)
    return float(statistics.median(rates))


def calibrate(*, n_blocks: int = 30, block_steps: int = 25, warmup: int = 10, max_seconds: float = 10.0,
              min_blocks: int = 3, timer: Callable[[], float] = time.perf_counter) -> Calibration:
    """Run the micro-benchmark on one thread: about 10 s (9 s of AdamW steps at the reference speed; on a slower
    machine it stops adding blocks after ``max_seconds``, with at least ``min_blocks``, so that even a machine
    eight times slower than the reference finishes in about 15 s).

    Args:
        n_blocks: at most this many timed blocks of AdamW steps (the median block is the result).
        block_steps: steps per block.
        warmup: untimed steps first (allocator, caches).
        max_seconds, min_blocks: no new block starts after ``max_seconds`` once ``min_blocks`` are timed.
        timer: the clock (seconds); a test may replace it.
    Returns:
        :class:`Calibration`.
    """
    for name, value in (("n_blocks", n_blocks), ("block_steps", block_steps), ("min_blocks", min_blocks)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be a non-negative integer")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds={max_seconds!r} must be > 0")
    import torch
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    load_before = _load()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # gradients on, whatever the caller's context (a benchmark may call this inside torch.no_grad())
        with threadpool_limits(limits=1), torch.random.fork_rng(), torch.enable_grad():
            blocks = _adamw_step_blocks(n_blocks, block_steps, warmup, timer, max_seconds=max_seconds,
                                        min_blocks=min(min_blocks, n_blocks))
            gflops = _matmul_gflops(min(n_blocks, 5), timer)
    finally:
        torch.set_num_threads(previous)
    return Calibration(ms_per_step=float(statistics.median(blocks)), step_spread=(min(blocks), max(blocks)),
                       gflops=gflops, load_before=load_before, load_after=_load(),
                       seconds=time.perf_counter() - started, n_blocks=len(blocks), block_steps=block_steps)


def print_calibration(**options: Any) -> Calibration:
    """Calibrate and print the one-line summary (first thing every benchmark script does, so that its figures
    carry the machine's speed); returns the :class:`Calibration`."""
    result = calibrate(**options)
    print(result.summary(), flush=True)
    return result


if __name__ == "__main__":
    print_calibration()
