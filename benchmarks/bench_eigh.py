"""Benchmark: all eigenvalues + the top/bottom-k eigenvectors of a dense symmetric (Hessian-like) matrix.

Times every candidate route on one planted test matrix, checks each against the planted spectrum (eigenvalues)
and by residuals ``||H v - lambda v|| / ||H||`` and orthonormality (vectors), and prints a table with ratios to
``torch.linalg.eigvalsh`` (values only: the floor for "all eigenvalues") and to the naive route
"scipy eigvalsh + two ``eigh(subset_by_index)`` calls".

The test matrix ``H = Q diag(lambda) Q^T`` has a Haar-random orthogonal ``Q`` (QR of a Gaussian matrix) and a
Hessian-like spectrum: a few large positive outliers (one exactly repeated pair), a negative tail, and a large
bulk within ``1e-3`` of zero (one exactly repeated pair at the bottom too).

    python benchmarks/bench_eigh.py                  # n = 5994 (LeNet-tiny), k = 50
    python benchmarks/bench_eigh.py --n 11456 --repeats 1
    python benchmarks/bench_eigh.py --n 2000 --threads 1 --band-widths 32 48 64

Timings on a shared machine are noisy: the load average before each route is printed, and CPU time (all threads
of this process) is shown next to wall time because it is less sensitive to other processes.
"""

from __future__ import annotations

import argparse
import os
import sys

# Thread counts must be set before numpy/torch are imported; the BLAS tuning variables (OPENBLAS_CORETYPE,
# OPENBLAS_L2_SIZE) are only reported, never changed.
_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("--n", type=int, default=5994, help="matrix size P (default 5994, LeNet-tiny)")
_parser.add_argument("--k", type=int, default=50, help="eigenvectors wanted at each end (default 50)")
_parser.add_argument("--repeats", type=int, default=3, help="runs per route; the median is reported")
_parser.add_argument("--max-repeat-seconds", type=float, default=60.0,
                     help="do not repeat a route whose first run took longer than this")
_parser.add_argument("--threads", type=int, default=None,
                     help="set torch/MKL/OpenBLAS thread counts (default: leave the environment alone)")
_parser.add_argument("--routes", nargs="*", default=None, help="subset of route names to run")
_parser.add_argument("--band-widths", nargs="*", type=int, default=[],
                     help="also time the two-stage route with these band widths (tuning)")
_parser.add_argument("--seed", type=int, default=0)
_parser.add_argument("--json", default=None, help="write the results to this JSON file")
ARGS = _parser.parse_args()
if ARGS.threads is not None:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_name] = str(ARGS.threads)

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hessian_core import spectrum as spectrum_module  # noqa: E402
from hessian_core.spectrum import eigendecomposition  # noqa: E402
from hessian_book.calibration import print_calibration  # noqa: E402

if ARGS.threads is not None:
    torch.set_num_threads(ARGS.threads)

Result = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]  # eigenvalues, bottom vectors, top vectors


def hessian_like(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(H, planted eigenvalues ascending)``: a symmetric test matrix with a Hessian-like spectrum."""
    rng = np.random.default_rng(seed)
    n_outliers, n_negative = min(20, size // 10), size // 10
    outliers = np.sort(rng.uniform(5.0, 100.0, n_outliers))
    outliers[-2] = outliers[-3]                                  # an exactly repeated pair among the top ones
    negative = -rng.uniform(1e-3, 1.0, n_negative) ** 2
    negative[:2] = negative.min()                                # an exactly repeated pair at the bottom
    bulk = rng.normal(0.0, 1e-4, size - n_outliers - n_negative)
    eigenvalues = np.sort(np.concatenate([outliers, negative, bulk]))
    gaussian = torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    basis, _ = torch.linalg.qr(gaussian)
    del gaussian
    matrix = (basis * torch.from_numpy(eigenvalues)) @ basis.T
    matrix = (matrix + matrix.T) * 0.5
    return matrix.numpy(), eigenvalues


def environment_report() -> dict:
    """Thread settings and BLAS libraries in use."""
    report = {
        "cpu_count": os.cpu_count(),
        "env": {name: os.environ[name] for name in sorted(os.environ)
                if name.startswith(("OPENBLAS", "OMP_", "MKL_", "GOTO"))},
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_mkl": torch.backends.mkl.is_available(),
        "numpy": np.__version__, "scipy": scipy.__version__,
    }
    try:
        import threadpoolctl
        report["threadpools"] = [{key: info.get(key) for key in ("internal_api", "version", "num_threads",
                                                                 "architecture")}
                                 for info in threadpoolctl.threadpool_info()]
    except ImportError:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        report["numpy_blas"] = {key: blas.get(key) for key in ("name", "version", "openblas configuration")}
    return report


def routes(k: int) -> dict[str, Callable[[np.ndarray], Result]]:
    """Candidate routes: ``name -> f(H) -> (eigenvalues, bottom vectors or None, top vectors or None)``."""
    def subset(matrix: np.ndarray, driver: str) -> Result:
        n = matrix.shape[0]
        values = scipy.linalg.eigvalsh(matrix, check_finite=False)
        _, bottom = scipy.linalg.eigh(matrix, subset_by_index=(0, k - 1), driver=driver, check_finite=False)
        _, top = scipy.linalg.eigh(matrix, subset_by_index=(n - k, n - 1), driver=driver, check_finite=False)
        return values, bottom, top

    def full_scipy(matrix: np.ndarray, driver: str) -> Result:
        values, vectors = scipy.linalg.eigh(matrix, driver=driver, check_finite=False)
        return values, vectors[:, :k].copy(), vectors[:, -k:].copy()

    def ours(driver: str) -> Callable[[np.ndarray], Result]:
        def run(matrix: np.ndarray) -> Result:
            result = eigendecomposition(matrix, n_top=k, n_bottom=k, driver=driver, progress=False)
            return result.eigenvalues, result.bottom_vectors, result.top_vectors[:, ::-1]
        return run

    return {
        "torch.linalg.eigvalsh (values only)": lambda H: (torch.linalg.eigvalsh(torch.from_numpy(H)).numpy(),
                                                          None, None),
        "scipy eigvalsh (values only)": lambda H: (scipy.linalg.eigvalsh(H, check_finite=False), None, None),
        "naive: scipy eigvalsh + 2 eigh(subset, evr)": lambda H: subset(H, "evr"),
        "scipy eigvalsh + 2 eigh(subset, evx)": lambda H: subset(H, "evx"),
        "scipy eigh(evd), all vectors": lambda H: full_scipy(H, "evd"),
        "scipy eigh(evr), all vectors [driver='scipy']": ours("scipy"),
        "torch.linalg.eigh, all vectors [driver='torch']": ours("torch"),
        "dsytrd + dstebz/dstein + dormqr [driver='tridiagonal']": ours("tridiagonal"),
        "dense->band + dsbev + band inverse iteration [driver='two_stage']": ours("two_stage"),
    }


def check(result: Result, planted: np.ndarray, matrix_t: torch.Tensor) -> dict:
    """Eigenvalue error vs the planted spectrum; residuals and orthonormality of the vectors."""
    values, bottom, top = result
    norm = float(np.abs(planted).max())
    out = {"eigenvalue_error": float(np.abs(np.sort(values) - planted).max() / norm)}
    if bottom is not None:
        vectors = np.concatenate([bottom, top], axis=1)
        wanted = np.concatenate([planted[:bottom.shape[1]], planted[planted.size - top.shape[1]:]])
        residual = (matrix_t @ torch.from_numpy(np.ascontiguousarray(vectors))).numpy() - vectors * wanted
        out["residual"] = float(np.linalg.norm(residual, axis=0).max() / norm)
        out["orthogonality"] = float(np.abs(vectors.T @ vectors - np.eye(vectors.shape[1])).max())
    return out


def timed(function: Callable[[np.ndarray], Result], matrix: np.ndarray) -> tuple[float, float, float, Result]:
    """``(wall s, cpu s of all this process's threads, load average before, result)`` of one run."""
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(matrix)
    return time.perf_counter() - wall, time.process_time() - cpu, load, result


def main() -> None:
    print_calibration()  # the machine's speed now, beside every figure below (hessian_book.calibration)
    size, k = ARGS.n, ARGS.k
    env = environment_report()
    print(f"P = {size}, k = {k} vectors at each end, repeats <= {ARGS.repeats}")
    for key, value in env.items():
        print(f"  {key}: {value}")
    start = time.perf_counter()
    matrix, planted = hessian_like(size, ARGS.seed)
    matrix_t = torch.from_numpy(matrix)
    print(f"test matrix built in {time.perf_counter() - start:.1f} s; ||H|| = {np.abs(planted).max():.3g}, "
          f"{int((planted < 0).sum())} negative eigenvalues; load average {os.getloadavg()}\n")

    candidates = routes(k)
    for width in ARGS.band_widths:
        def two_stage(H: np.ndarray, width: int = width) -> Result:
            tensor = torch.from_numpy(H)
            scale = float(tensor.abs().max())
            values, bottom, top = spectrum_module._two_stage(tensor, k, k, scale=scale, band_width=width,
                                                             progress=False)
            bottom, _ = spectrum_module._rayleigh_ritz(tensor, bottom)
            top, _ = spectrum_module._rayleigh_ritz(tensor, top)
            return values, bottom, top
        candidates[f"two_stage internals, band width {width}"] = two_stage
    if ARGS.routes:
        candidates = {name: f for name, f in candidates.items() if any(r in name for r in ARGS.routes)}

    # Warm-up on a small matrix: thread pools and lazy library initialisation are not part of any route's cost.
    small, _ = hessian_like(4 * k + 8, ARGS.seed)
    for function in candidates.values():
        function(small)

    # Rounds are interleaved (route A, B, C, A, B, C, ...) so that changes in the machine's load hit all routes
    # alike; a route whose first run took longer than --max-repeat-seconds runs once.
    rows: dict[str, dict] = {}
    for repeat in range(ARGS.repeats):
        for name, function in candidates.items():
            if repeat > 0 and rows[name]["walls"][0] > ARGS.max_repeat_seconds:
                continue
            wall, cpu, load, result = timed(function, matrix)
            if repeat == 0:
                rows[name] = {"walls": [], "cpus": [], "loads": [], **check(result, planted, matrix_t)}
            del result
            row = rows[name]
            row["walls"].append(wall)
            row["cpus"].append(cpu)
            row["loads"].append(load)
            vectors = (f"residual {row['residual']:.1e}  orth {row['orthogonality']:.1e}" if "residual" in row
                       else "(values only)")
            print(f"[{repeat}] {name:68s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  eig err "
                  f"{row['eigenvalue_error']:.1e}  {vectors}  [load {load:.1f}]", flush=True)
    for row in rows.values():
        row["wall"], row["cpu"] = statistics.median(row["walls"]), statistics.median(row["cpus"])

    floor = rows.get("torch.linalg.eigvalsh (values only)", {}).get("wall")
    naive = rows.get("naive: scipy eigvalsh + 2 eigh(subset, evr)", {}).get("wall")
    print(f"\nmedians over up to {ARGS.repeats} interleaved runs")
    print("\n| route | wall s | cpu s | / torch eigvalsh | / naive | eigenvalue err | residual | orthogonality |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        ratio_floor = f"{row['wall'] / floor:.2f}" if floor else "-"
        ratio_naive = f"{row['wall'] / naive:.2f}" if naive else "-"
        residual = f"{row['residual']:.1e}" if "residual" in row else "-"
        orthogonality = f"{row['orthogonality']:.1e}" if "orthogonality" in row else "-"
        print(f"| {name} | {row['wall']:.2f} | {row['cpu']:.2f} | {ratio_floor} | {ratio_naive} | "
              f"{row['eigenvalue_error']:.1e} | {residual} | {orthogonality} |")

    exact = {name: row for name, row in rows.items()
             if "residual" in row and row["eigenvalue_error"] <= 1e-10 and row["residual"] <= 1e-10
             and row["orthogonality"] <= 1e-10}
    if exact:
        best = min(exact, key=lambda name: exact[name]["wall"])
        print(f"\nfastest exact route for all eigenvalues + {k} top/bottom vectors: {best} "
              f"({exact[best]['wall']:.2f} s wall, {exact[best]['cpu']:.2f} s cpu)")
    failed = [name for name, row in rows.items() if "residual" in row and name not in exact]
    if failed:
        print(f"NOT exact (eigenvalue error, residual or orthogonality > 1e-10): {failed}")
    print(f"load average at the end: {os.getloadavg()} on {os.cpu_count()} CPUs (timings are noisy on a shared "
          f"machine)")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps({"P": size, "k": k, "environment": env, "routes": rows}, indent=2))


if __name__ == "__main__":
    main()
