"""HVPs and time: ``hessian_core.lanczos.lanczos(op, 20, which="both")`` vs scipy ``eigsh`` LA + SA, same operator.

    python benchmarks/bench_lanczos.py              # Hessian of a 1-layer transformer on modular addition
    python benchmarks/bench_lanczos.py --planted    # planted Hessian-like spectrum, dense P = 2000

Default operator: ``ModAddTransformer(p=113, d_model=32, n_heads=1, seed=0)`` trained ``--train-steps`` (300)
full-batch AdamW steps (lr 1e-3, weight decay 1.0) on 30 % of the pairs, then the float64 Hessian of the mean
cross-entropy on the first ``--n-hessian`` (200) training pairs (P = 11,456).

``--planted``: ``A = Q diag(lambda) Q^T`` (Q Haar-orthogonal, P = 2000) with 12 outliers log-uniform in
[2, 50], 1900 bulk values Laplace(0, 0.01) and 88 negatives ``-exp(U[log 0.05, 0])``; its exact spectrum is known.

Both solvers see the operator through a wrapper that counts HVPs (columns of every ``matvec``/``matmat``) and
times them. Accuracy protocol ("both reach 1e-8"): ours stops when every pair has
``||A y - theta y|| <= tol * scale`` (``scale = max|theta|``). ARPACK stops when ``||r_i|| <= tol_e |theta_i|``, so
per call we give it the loosest ``tol_e`` that still implies our bound, ``tol_e = tol * scale / max_i |theta_i|``
over that call's wanted values (known from the reference); ``--eigsh-tol`` overrides. Both results are then
checked: residual norms recomputed with the raw operator (uncounted), and the 40 eigenvalues compared with each
other and, for ``--planted``, with the exact spectrum.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator, eigsh

from hessian_book.calibration import print_calibration
from hessian_core.lanczos import lanczos_solve


class CountingOperator(LinearOperator):
    """Wraps a LinearOperator; counts applied vectors (HVPs) and the time spent applying them."""

    def __init__(self, operator: LinearOperator):
        super().__init__(np.float64, operator.shape)
        self.operator = operator
        self.count = 0
        self.seconds = 0.0

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.operator.matvec(x)
        self.seconds += time.perf_counter() - start
        self.count += 1
        return out

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.operator.matmat(X)
        self.seconds += time.perf_counter() - start
        self.count += X.shape[1]
        return out

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:  # symmetric
        return self._matvec(x)


def planted_operator(size: int, seed: int) -> tuple[LinearOperator, np.ndarray]:
    """Dense ``Q diag(lambda) Q^T`` with a Hessian-like spectrum; returns (operator, sorted exact spectrum)."""
    rng = np.random.default_rng(seed)
    n_outliers, n_negative = 12, 88
    spectrum = np.concatenate([
        np.exp(rng.uniform(np.log(2.0), np.log(50.0), n_outliers)),
        rng.laplace(0.0, 0.01, size - n_outliers - n_negative),
        -np.exp(rng.uniform(np.log(0.05), 0.0, n_negative)),
    ])
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    q *= np.sign(np.diag(r))  # Haar measure
    matrix = (q * spectrum) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
    return aslinearoperator(matrix), np.sort(spectrum)


def transformer_operator(train_steps: int, n_hessian: int, seed: int) -> LinearOperator:
    """Hessian of the mean cross-entropy of a briefly trained 1-layer modular-addition transformer."""
    import torch.nn.functional as F

    from hessian_book.data import modular_addition_split
    from hessian_book.models import ModAddTransformer
    from hessian_core.operators import hessian_operator

    model = ModAddTransformer(p=113, d_model=32, n_heads=1, seed=seed)
    tokens, labels = modular_addition_split(113, 0.3, seed)["train"]
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)
    start = time.perf_counter()
    for _ in range(train_steps):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(tokens), labels)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        logits = model(tokens)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(-1) == labels).double().mean().item()
    print(f"trained {train_steps} AdamW steps on {len(labels)} pairs in {time.perf_counter() - start:.1f} s: "
          f"train loss {loss:.3f}, accuracy {accuracy:.3f}")
    return hessian_operator(model, F.cross_entropy, (tokens[:n_hessian], labels[:n_hessian]), dtype=torch.float64)


def residual_norms(operator: LinearOperator, values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(operator.matmat(vectors) - vectors * values, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planted", action="store_true", help="planted dense operator instead of the transformer")
    parser.add_argument("--size", type=int, default=2000, help="P of the planted operator")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--eigsh-tol", type=float, default=None, help="override the matched ARPACK tolerance")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[1, 8], help="block sizes of ours")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--n-hessian", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print_calibration()  # the machine's speed now, beside every figure below (hessian_book.calibration)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cores} cores available "
          f"(os.cpu_count={os.cpu_count()}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"numpy {np.__version__}, scipy {scipy.__version__}")

    if args.planted:
        raw, exact = planted_operator(args.size, args.seed)
        name = f"planted Hessian-like spectrum, P={args.size}"
    else:
        raw, exact = transformer_operator(args.train_steps, args.n_hessian, args.seed), None
        name = f"ModAddTransformer Hessian on {args.n_hessian} pairs, P={raw.shape[0]}"
    print(f"operator: {name}; k={args.k} per end, tol={args.tol:g}\n")
    k, tol = args.k, args.tol

    rows = []
    ours_values = None
    for block_size in args.block_sizes:
        counter = CountingOperator(raw)
        start = time.perf_counter()
        result = lanczos_solve(counter, k, which="both", tol=tol, seed=args.seed, block_size=block_size,
                               return_vectors=True, progress=False)
        seconds = time.perf_counter() - start
        scale = max(abs(result.eigenvalues[0]), abs(result.eigenvalues[-1]))
        residual = residual_norms(raw, result.eigenvalues, result.eigenvectors).max() / scale
        rows.append((f"ours lanczos(both), block {block_size}", counter.count, seconds, counter.seconds,
                     residual, result.eigenvalues, f"{result.n_matvecs - result.restart_matvecs} HVPs to converge + "
                     f"{result.restart_matvecs} for the multiplicity check ({result.n_restarts} restart(s)); "
                     f"{result.settled_by}"))
        if ours_values is None:
            ours_values, ours_scale = result.eigenvalues, scale

    # ARPACK with the tolerance that implies our residual bound (see the module docstring).
    reference = np.concatenate([exact[:k], exact[-k:]]) if exact is not None else ours_values
    scale = max(abs(reference[0]), abs(reference[-1]))
    tol_la = args.eigsh_tol or tol * scale / np.abs(reference[k:]).max()
    tol_sa = args.eigsh_tol or tol * scale / np.abs(reference[:k]).max()
    counter = CountingOperator(raw)
    v0 = np.random.default_rng(args.seed).standard_normal(raw.shape[0])
    start = time.perf_counter()
    values_la, vectors_la = eigsh(counter, k, which="LA", tol=tol_la, v0=v0)
    count_la = counter.count
    values_sa, vectors_sa = eigsh(counter, k, which="SA", tol=tol_sa, v0=v0)
    seconds = time.perf_counter() - start
    eigsh_values = np.concatenate([np.sort(values_sa), np.sort(values_la)])
    residual = max(residual_norms(raw, values_la, vectors_la).max(), residual_norms(raw, values_sa, vectors_sa).max())
    rows.append(("scipy eigsh LA + SA", counter.count, seconds, counter.seconds, residual / scale, eigsh_values,
                 f"LA {count_la} + SA {counter.count - count_la} HVPs, tol_e LA {tol_la:.2g}, SA {tol_sa:.2g}"))

    print(f"{'method':<34} {'HVPs':>6} {'time s':>8} {'in HVPs s':>10} {'ms/HVP':>7} {'other s':>8} "
          f"{'max res/scale':>14} {'max|dlambda|' + (' vs exact' if exact is not None else ' vs ours'):>22}")
    for label, count, seconds, hvp_seconds, res, values, _note in rows:
        error = np.abs(values - reference).max()
        print(f"{label:<34} {count:>6d} {seconds:>8.2f} {hvp_seconds:>10.2f} {1000 * hvp_seconds / count:>7.1f} "
              f"{seconds - hvp_seconds:>8.2f} {res:>14.1e} {error:>22.2e}")
    for label, *_, note in rows:
        print(f"  {label}: {note}")

    ours = rows[0]
    baseline = rows[-1]
    difference = np.abs(ours[5] - baseline[5]).max()
    print(f"\nmax |ours - eigsh| over the {2 * k} eigenvalues: {difference:.2e} "
          f"({difference / ours_scale:.1e} of ||A||)")
    for row in rows[:-1]:
        print(f"{row[0]}: HVP ratio eigsh/ours = {baseline[1] / row[1]:.2f}x, "
              f"time ratio eigsh/ours = {baseline[2] / row[2]:.2f}x")
    print("(time per HVP drifts with machine load; 'other s' is each solver's own work outside the HVPs)")
    met = baseline[1] / ours[1] >= 2
    print(f"goal (>= 2x fewer HVPs than eigsh LA + SA, block size {args.block_sizes[0]}): "
          f"{'MET' if met else 'NOT met'} ({baseline[1]} vs {ours[1]})")


if __name__ == "__main__":
    main()
