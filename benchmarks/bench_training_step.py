"""Milliseconds per full-batch AdamW step, eager vs compiled (and fused vs default AdamW), on one thread.

    python benchmarks/bench_training_step.py                     # 7 repeats of 200 steps per variant and model
    python benchmarks/bench_training_step.py --repeats 5 --steps 200 --fresh-cache

Models (the chapters' defaults):

* the grokking transformer: ``ModAddTransformer(p=113, d_model=32, n_heads=1, d_mlp=128)`` on its 3,831 training
  pairs (the 30 % split), lr 1e-3, weight decay 0.5, betas (0.9, 0.98);
* the depth chapter's depth-4 MLP: ``ModAddMLP(p=97, depth=4, width=128, "onehot")`` on its 2,823 training pairs
  (30 % split), lr 3e-3, weight decay 3.0, betas (0.9, 0.98).

Variants (:class:`hessian_book.training.AdamWStep`): ``eager`` (torch's default AdamW, on CPU its single-tensor
implementation: the eager backend), ``eager+fused``, ``compiled`` (the same AdamW) and ``compiled+fused``; the
compiled backend is one of the last two (``hessian_book.training._COMPILED_FUSED_ADAMW``: fused) and runs first of
them. Every variant trains its own copy of the same initial model. Each variant's first call is
timed alone: for a compiled variant it compiles; ``compile s`` = that call minus the variant's median step. The
first compiled variant of a model compiles its loss graph (cold, unless inductor's on-disk cache already holds it:
``--fresh-cache`` points inductor at an empty cache directory so that it does); the second finds the same graph in
that cache (warm). Then ``--repeats`` rounds, each timing ``--steps`` steps of every variant in turn (interleaved,
so a change of machine load hits all variants alike); the table gives the median wall ms/step over rounds,
min–max, the ratio to eager of the same rounds, the same for this process's CPU time (less sensitive than wall
time to other processes on a loaded machine), and the break-even step count (compile wall seconds / wall ms saved
per step: a run shorter than that is faster eager). The load averages are printed before and after each model, and
the calibration line (:mod:`hessian_book.calibration`) first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one thread throughout
if "--fresh-cache" in sys.argv:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cache_")

import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from hessian_book.calibration import print_calibration  # noqa: E402
from hessian_book.data import modular_addition_split  # noqa: E402
from hessian_book.models import ModAddMLP, ModAddTransformer  # noqa: E402
from hessian_book.training import _COMPILED_FUSED_ADAMW, AdamWStep  # noqa: E402

# The compiled backend's own variant first among the compiled ones, so that its first call is the cold compile.
_COMPILED = "compiled+fused" if _COMPILED_FUSED_ADAMW else "compiled"
VARIANTS = {"eager": ("eager", False), "eager+fused": ("eager", True),
            _COMPILED: ("compiled", _COMPILED_FUSED_ADAMW),
            **{v: ("compiled", v.endswith("fused")) for v in ("compiled", "compiled+fused") if v != _COMPILED}}


def _models() -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor, dict]]:
    transformer = modular_addition_split(113, 0.3, 0)["train"]
    mlp = modular_addition_split(97, 0.3, 0, with_equals=False)["train"]
    return {
        "transformer p113 d32 mlp128": (ModAddTransformer(113, 32, 1, 128, 0), *transformer,
                                        dict(lr=1e-3, weight_decay=0.5)),
        "MLP depth 4 width 128": (ModAddMLP(97, 4, 128, "onehot", 0), *mlp, dict(lr=3e-3, weight_decay=3.0)),
    }


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def bench(name: str, model, inputs, labels, hyper: dict, *, steps: int, repeats: int) -> None:
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(inputs):,} training "
          f"examples; load {_load()}", flush=True)
    runs, first = {}, {}
    for variant, (backend, fused) in VARIANTS.items():
        step = AdamWStep(copy.deepcopy(model), inputs, labels, betas=(0.9, 0.98), backend=backend, fused=fused,
                         **hyper)
        started = time.perf_counter()
        step()
        first[variant] = time.perf_counter() - started
        if step.backend != backend:
            raise RuntimeError(f"{variant}: ran {step.backend}")
        runs[variant] = step
    for step in runs.values():  # untimed: a later compile cleared dynamo's in-memory caches (AdamWStep)
        step()
    times: dict[str, list[float]] = {v: [] for v in runs}
    cpu: dict[str, list[float]] = {v: [] for v in runs}
    for _ in range(repeats):
        for variant, step in runs.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            times[variant].append((time.perf_counter() - started) / steps * 1e3)
            cpu[variant].append((time.process_time() - started_cpu) / steps * 1e3)
    eager, eager_cpu = statistics.median(times["eager"]), statistics.median(cpu["eager"])
    print(f"{'variant':>17} | {'wall ms/step':>12} {'min–max':>13} {'ratio':>5} | {'CPU ms/step':>11} {'ratio':>5} | "
          f"{'first call s':>12} {'compile s':>9} | {'break-even steps':>16}")
    for variant, ms in times.items():
        median, median_cpu = statistics.median(ms), statistics.median(cpu[variant])
        ratio = statistics.median(e / m for e, m in zip(times["eager"], ms))  # per round: same load
        ratio_cpu = statistics.median(e / m for e, m in zip(cpu["eager"], cpu[variant]))
        compile_s = max(first[variant] - median / 1e3, 0.0) if variant.startswith("compiled") else 0.0
        saved = eager - median
        even = ("—" if not variant.startswith("compiled") else
                f"{compile_s / saved * 1e3:,.0f}" if saved > 0 else "never")
        print(f"{variant:>17} | {median:12.2f} {min(ms):6.2f}–{max(ms):6.2f} {ratio:5.2f} | {median_cpu:11.2f} "
              f"{ratio_cpu:5.2f} | {first[variant]:12.2f} {compile_s:9.2f} | {even:>16}", flush=True)
    print(f"(the compiled backend is {_COMPILED}; ratio = eager ms / variant ms, median over rounds; load {_load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed round (>= 200 for the record)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per variant (>= 5)")
    parser.add_argument("--fresh-cache", action="store_true", help="compile into an empty inductor cache (cold)")
    parser.add_argument("--only", choices=["transformer", "mlp"], help="one model only")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    print_calibration()  # the machine's speed now, beside every figure below (hessian_book.calibration)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, inductor cache "
          f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default')}; {args.repeats} rounds of {args.steps} steps")
    for name, (model, inputs, labels, hyper) in _models().items():
        if args.only and not name.lower().startswith(args.only):
            continue
        bench(name, model, inputs, labels, hyper, steps=args.steps, repeats=args.repeats)


if __name__ == "__main__":
    main()
