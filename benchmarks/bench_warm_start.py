"""Warm-started vs cold Lanczos over consecutive checkpoints of real training runs: HVPs, seconds, residuals.

    MNIST_DATA_DIR=/work/shared/data/mnist python benchmarks/bench_warm_start.py --results-dir /tmp/bench

(``--only grokking|mnist`` one trajectory; ``--grok-store DIR`` reads the grokking checkpoints from an existing
store of the same recipe instead of training; ``--grok-first S --n-checkpoints N`` picks the checkpoints;
``--no-train`` reads the MNIST run's saved checkpoints without training.)

Two trajectories, each trained (or read) in ``--results-dir``:

* grokking: the chapter's reference run (p = 113, d_model 32, 1 head, MLP 128, AdamW lr 1e-3, wd 0.5, betas
  (0.9, 0.98), 30 % split seed 0, init seed 0), a checkpoint every ``--grok-every`` (250) steps to
  ``--grok-steps`` (6,000: memorisation and its plateau); Hessian of the cross-entropy on the chapter's 200
  stratified pairs (:func:`hessian_book.chapters.grokking_modadd.run_hessian_batch`), P = 19,808;
* MNIST: the MNIST chapter's LeNet-tiny run at its defaults and checkpoint schedule; Hessian on its 50-image
  subsample (:func:`hessian_book.chapters.mnist_lenet.hessian_batch`), P = 5,994.

At each of ``--n-checkpoints`` consecutive checkpoints (the first ones of each schedule): the cold
:func:`hessian_core.lanczos_solve` and :func:`hessian_core.warm_lanczos` started from the *warm chain's* previous
Ritz vectors (as a chapter chains them), both k = 6 at each end, tol 1e-6, float64, block 4 (the grokking
chapter's), one after the other on the same operator. Printed per trajectory: HVPs and seconds of each (sums),
their ratios, HVPs spent in the multiplicity restarts (the certificate, which no start shortens), the largest
residual of each relative to its threshold (<= 1 means certified), the largest eigenvalue difference between
the two relative to the threshold, and how many warm solves fell back to cold. The machine's speed
(:mod:`hessian_book.calibration`) is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

from hessian_core import hessian_operator, lanczos_solve, warm_lanczos


def compare(label: str, models, batch, *, k: int, tol: float, block_size: int) -> dict:
    """Cold vs warm-chained solves at each model of ``models`` (an iterable of ``(step, model)``)."""
    rows, previous = [], None
    for step, model in models:
        operator = hessian_operator(model, nn.CrossEntropyLoss(), batch)
        started = time.perf_counter()
        cold = lanczos_solve(operator, k, which="both", tol=tol, block_size=block_size, progress=False)
        cold_seconds = time.perf_counter() - started
        started = time.perf_counter()
        warm = warm_lanczos(operator, k, start=previous, which="both", tol=tol, block_size=block_size,
                            progress=False)
        warm_seconds = time.perf_counter() - started
        previous = warm.eigenvectors
        rows.append(dict(step=step, cold_hvps=cold.n_matvecs, warm_hvps=warm.hvps, cold_restart=cold.restart_matvecs,
                         warm_restart=warm.restart_hvps, cold_seconds=cold_seconds, warm_seconds=warm_seconds,
                         cold_residual=float(np.max(cold.residual_norms) / cold.threshold),
                         warm_residual=float(np.max(warm.residual_norms) / warm.threshold),
                         difference=float(np.max(np.abs(cold.eigenvalues - warm.eigenvalues))
                                          / max(cold.threshold, warm.threshold)),
                         warm_used=warm.warm, fallback=warm.fallback, lambda_max=float(cold.eigenvalues[-1]),
                         lambda_min=float(cold.eigenvalues[0]), P=operator.shape[0]))
        r = rows[-1]
        print(f"  {label} step {step:>6}: cold {r['cold_hvps']:4d} HVPs {cold_seconds:6.1f} s | warm "
              f"{r['warm_hvps']:4d} HVPs {warm_seconds:6.1f} s{'' if warm.warm else ' (cold: ' + warm.fallback + ')'}"
              f" | residual/threshold cold {r['cold_residual']:.3f} warm {r['warm_residual']:.3f}, |dlambda|/threshold"
              f" {r['difference']:.3f} | lambda [{r['lambda_min']:.4g}, {r['lambda_max']:.4g}]", flush=True)
    return summarise(label, rows)


def summarise(label: str, rows: list[dict]) -> dict:
    total = {name: sum(r[name] for r in rows) for name in ("cold_hvps", "warm_hvps", "cold_restart", "warm_restart",
                                                            "cold_seconds", "warm_seconds")}
    # The first checkpoint has no previous vectors (both are cold): ratios over the chained ones as well.
    chained = {name: sum(r[name] for r in rows[1:]) for name in ("cold_hvps", "warm_hvps", "cold_seconds",
                                                                  "warm_seconds")}
    print(f"{label}: {len(rows)} consecutive checkpoints (steps {rows[0]['step']}..{rows[-1]['step']}), "
          f"P = {rows[0]['P']}")
    print(f"  HVPs    cold {total['cold_hvps']:6d}  warm {total['warm_hvps']:6d}  cold/warm "
          f"{total['cold_hvps'] / total['warm_hvps']:.2f}x  (chained checkpoints only: "
          f"{chained['cold_hvps'] / chained['warm_hvps']:.2f}x)")
    print(f"  of which multiplicity restarts: cold {total['cold_restart']}, warm {total['warm_restart']}")
    print(f"  seconds cold {total['cold_seconds']:7.1f}  warm {total['warm_seconds']:7.1f}  cold/warm "
          f"{total['cold_seconds'] / total['warm_seconds']:.2f}x  (chained only: "
          f"{chained['cold_seconds'] / chained['warm_seconds']:.2f}x)")
    print(f"  max residual / threshold: cold {max(r['cold_residual'] for r in rows):.3f}  warm "
          f"{max(r['warm_residual'] for r in rows):.3f}  (<= 1: certified)")
    print(f"  max |lambda_cold - lambda_warm| / threshold: {max(r['difference'] for r in rows):.3f}")
    print(f"  warm solves that fell back to cold: {sum(not r['warm_used'] for r in rows[1:])} of {len(rows) - 1}"
          f" (plus the first checkpoint, which has no start)", flush=True)
    return dict(label=label, rows=rows, total=total, chained=chained)


def grokking_trajectory(args):
    from hessian_book.chapters import grokking_modadd as chapter
    from hessian_book.runs import train_modadd

    config = chapter.Config(results_dir=args.results_dir)
    batch = chapter.run_hessian_batch(config, config.split_seed, config.seed)
    if args.grok_store:  # an existing store of this recipe's checkpoints (e.g. trained by an earlier version)
        return _stored_grokking(args, config), batch
    steps = list(range(0, args.grok_steps + 1, args.grok_every))
    run = train_modadd(args.results_dir, "grokking_modadd", p=config.p,
                       train_fraction=config.train_fraction, split_seed=config.split_seed, seed=config.seed,
                       d_model=config.d_model, n_heads=config.n_heads, d_mlp=config.d_mlp, lr=config.lr,
                       weight_decay=config.weight_decay, betas=config.betas, n_steps=args.grok_steps,
                       log_every=args.grok_every, checkpoint_steps=steps, progress=False)
    chosen = [s for s in run.checkpoint_steps if s >= args.grok_first][: args.n_checkpoints]
    return ((step, run.model_at(step)) for step in chosen), batch


def _stored_grokking(args, config):
    """``(step, model)`` from the store at ``args.grok_store``, after checking it holds the reference recipe."""
    import json
    from pathlib import Path

    from hessian_book.models import ModAddTransformer
    from hessian_book.store import read_verified

    directory = Path(args.grok_store)
    params = json.loads((directory / "params.json").read_text())
    recipe = dict(p=config.p, train_fraction=config.train_fraction, split_seed=config.split_seed, seed=config.seed,
                  d_model=config.d_model, n_heads=config.n_heads, d_mlp=config.d_mlp, lr=config.lr,
                  weight_decay=config.weight_decay, betas=list(config.betas))
    if any(params.get(name) != value for name, value in recipe.items()):
        raise ValueError(f"--grok-store {directory} holds {params}, not the reference recipe {recipe}")
    steps = sorted(int(path.stem.split("_")[1]) for path in directory.glob("checkpoint_*.pt"))
    for step in [s for s in steps if s >= args.grok_first][: args.n_checkpoints]:
        model = ModAddTransformer(config.p, config.d_model, config.n_heads, config.d_mlp, config.seed)
        model.load_state_dict(read_verified(directory / f"checkpoint_{step:07d}.pt")["model"])
        yield step, model


def mnist_trajectory(args):
    from hessian_book.chapters import mnist_lenet as chapter

    config = chapter.Config(results_dir=args.results_dir, data_dir=os.environ.get("MNIST_DATA_DIR", ""))
    run = chapter.training_run(config)
    if not args.no_train:
        run.train_or_resume(progress=False)
    batch = chapter.hessian_batch(config, run=run)
    chosen = run.checkpoints[: args.n_checkpoints]
    return ((step, run.model_at(step)) for step in chosen), batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--n-checkpoints", type=int, default=21)
    parser.add_argument("--grok-steps", type=int, default=6000)
    parser.add_argument("--grok-every", type=int, default=250)
    parser.add_argument("--grok-store", default="", help="read the grokking checkpoints from this store directory")
    parser.add_argument("--grok-first", type=int, default=250, help="first grokking checkpoint compared")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--only", choices=["grokking", "mnist"], default=None)
    parser.add_argument("--no-train", action="store_true", help="MNIST: read the saved checkpoints, train nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from hessian_book.calibration import print_calibration

    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    print_calibration()
    for label, trajectory in (("grokking", grokking_trajectory), ("mnist", mnist_trajectory)):
        if args.only in (None, label):
            models, batch = trajectory(args)
            compare(label, models, batch, k=args.k, tol=args.tol, block_size=args.block_size)
            print(f"load average {os.getloadavg()}")
    print_calibration()


if __name__ == "__main__":
    main()
