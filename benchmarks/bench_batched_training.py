"""Per-step time of the grokking runs trained one at a time vs batched (``hessian_book.batched``).

    python benchmarks/bench_batched_training.py                      # 20 steps, 3 repeats, 1 and 2 threads
    python benchmarks/bench_batched_training.py --steps 50 --repeats 5

The model and data are the grokking chapter's at its defaults: ``ModAddTransformer(p=113, d_model=32, n_heads=1,
d_mlp=128)`` (19,808 parameters) on 3,831 training pairs (30 % of 113²), full-batch AdamW (lr 1e-3, betas
(0.9, 0.98)), the six runs of ``grokking_modadd.Config().runs()`` (inits 0, 1, 2 on split 0, init 0 on splits 1
and 2, and the weight-decay-0 control). Per repeat and thread count:

* sequential: each of the six runs alone with ``train_full_batch_adamw`` for ``--steps`` steps; the time of ``R``
  runs one after another is the sum over the first ``R`` of them;
* batched: ``train_full_batch_adamw_batched`` of the first ``R`` runs, ``R`` in ``--runs`` (1, 3, 6).

Each timing is the trainers' own ``train_seconds`` (wall time of the optimiser steps only: no evaluation, one
checkpoint at the end) and, around the whole call, the process CPU time (``time.process_time``; includes the
one checkpoint and set-up). On a busy machine the wall times are inflated by the other processes while the CPU
times of a one-thread run are not (much): the script prints the load average before and after so that the
reader can judge. Medians over repeats; ratios = sequential time of R runs / batched time of R runs (> 1: the
batched trainer is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from hessian_book.batched import train_full_batch_adamw_batched
from hessian_book.chapters.grokking_modadd import Config
from hessian_book.data import modular_addition_split
from hessian_book.models import ModAddTransformer, n_parameters
from hessian_book.store import ResultStore
from hessian_book.training import train_full_batch_adamw


def _runs(config: Config):
    """(model factory, split train set, weight decay) of each of the chapter's runs."""
    out = []
    for spec in config.runs():
        train = modular_addition_split(config.p, config.train_fraction, spec.split_seed)["train"]
        out.append((lambda s=spec: ModAddTransformer(config.p, config.d_model, config.n_heads, config.d_mlp,
                                                     s.seed), train, spec.weight_decay))
    return out


def _sequential(config: Config, run, steps: int, root: str) -> tuple[float, float]:
    """(wall, cpu) seconds of ``steps`` unbatched steps of one run."""
    make, (x, y), wd = run
    store = ResultStore(root, "bench", {"t": time.perf_counter_ns()})
    cpu = time.process_time()
    log = train_full_batch_adamw(make(), x, y, store=store, n_steps=steps, checkpoint_steps=[], lr=config.lr,
                                 weight_decay=wd, betas=tuple(config.betas), progress=False)
    return log[-1]["train_seconds"], time.process_time() - cpu


def _batched(config: Config, runs, steps: int, root: str) -> tuple[float, float]:
    """(wall, cpu) seconds of ``steps`` batched steps of ``runs`` together."""
    stores = [ResultStore(root, "bench", {"t": time.perf_counter_ns(), "r": r}) for r in range(len(runs))]
    cpu = time.process_time()
    logs = train_full_batch_adamw_batched(
        [make() for make, _, _ in runs], torch.stack([x for _, (x, _), _ in runs]),
        torch.stack([y for _, (_, y), _ in runs]), stores=stores, n_steps=steps, checkpoint_steps=[],
        lr=config.lr, weight_decays=[wd for _, _, wd in runs], betas=tuple(config.betas), progress=False)
    return logs[0][-1]["train_seconds"] * len(runs), time.process_time() - cpu  # train_seconds is wall / R


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", default="1,3,6")
    args = parser.parse_args()
    config = Config()
    runs = _runs(config)
    sizes = [int(r) for r in args.runs.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if max(sizes) > len(runs):
        raise SystemExit(f"--runs: at most {len(runs)} (the chapter's runs)")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"model: {n_parameters(runs[0][0]())} parameters, {len(runs[0][1][0])} training pairs; "
          f"{args.steps} steps, {args.repeats} repeats; load average {os.getloadavg()}")
    seq = {t: [] for t in threads}  # [repeat] -> per-run (wall, cpu)
    bat = {(t, R): [] for t in threads for R in sizes}
    with tempfile.TemporaryDirectory() as root:
        for t in threads:  # warm-up: first calls pay one-off costs (allocations, vmap's first trace)
            torch.set_num_threads(t)
            _sequential(config, runs[0], 2, root)
            _batched(config, runs[:2], 2, root)
        for repeat in range(args.repeats):
            for t in threads:
                torch.set_num_threads(t)
                seq[t].append([_sequential(config, run, args.steps, root) for run in runs[:max(sizes)]])
                for R in sizes:
                    bat[(t, R)].append(_batched(config, runs[:R], args.steps, root))
                print(f"  repeat {repeat + 1}/{args.repeats}, {t} thread(s) done; load {os.getloadavg()}",
                      flush=True)
    ms = 1000 / args.steps
    print(f"\nper-step times, median of {args.repeats} repeats (ms); load average at the end {os.getloadavg()}")
    header = (f"{'threads':>7} {'R':>2} | {'sequential wall':>15} {'batched wall':>12} {'wall ratio':>10} | "
              f"{'sequential CPU':>14} {'batched CPU':>11} {'CPU ratio':>9} | {'batched wall per run':>20}")
    print(header)
    print("-" * len(header))
    table = {}
    for t in threads:
        for R in sizes:
            seq_wall = np.median([sum(w for w, _ in rep[:R]) for rep in seq[t]]) * ms
            seq_cpu = np.median([sum(c for _, c in rep[:R]) for rep in seq[t]]) * ms
            b_wall = np.median([w for w, _ in bat[(t, R)]]) * ms
            b_cpu = np.median([c for _, c in bat[(t, R)]]) * ms
            table[(t, R)] = (seq_wall, b_wall, seq_cpu, b_cpu)
            print(f"{t:>7} {R:>2} | {seq_wall:>15.1f} {b_wall:>12.1f} {seq_wall / b_wall:>10.2f} | "
                  f"{seq_cpu:>14.1f} {b_cpu:>11.1f} {seq_cpu / b_cpu:>9.2f} | {b_wall / R:>20.1f}")
    if 1 in threads and 2 in threads and 6 in sizes and 3 in sizes:
        two_processes = table[(1, 3)][1]  # two one-thread processes of R = 3 side by side (if the cores are free)
        one_process = table[(2, 6)][1]
        alone = table[(1, 3)][0]  # two 1-thread processes, each training three runs one at a time
        print(f"\none step of all six runs on two cores (assuming two free cores for two processes): "
              f"two 1-thread processes training single runs ≈ {alone:.1f} ms; two 1-thread processes of "
              f"batched R=3 ≈ {two_processes:.1f} ms; one 2-thread process of R=6: {one_process:.1f} ms; "
              f"one 1-thread process of R=6: {table[(1, 6)][1]:.1f} ms")


if __name__ == "__main__":
    main()
