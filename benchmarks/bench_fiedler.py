"""Fiedler dendrogram of the full LeNet-tiny Hessian (5,994 parameters, 50 MNIST images, float64), in one run:

* ours: ``hessian_core.fiedler_linkage`` with its defaults for large subgraphs (one Cholesky + shift-invert Lanczos
  per split above ``dense_max`` = 1000 vertices, dense LAPACK below);
* the alternative: the same recursion with a dense ``eigh`` at every split (``dense_max`` > P).

    python benchmarks/bench_fiedler.py [--checkpoint PATH] [--data-dir DIR] [--repeats 1]

The Hessian is taken at ``--checkpoint`` (a ``checkpoint_*.pt`` of the MNIST chapter, e.g. its final step), or at
LeNet-tiny's seeded initialisation if none is given. Prints both times, their ratio, whether the two trees are the
same, and the goal (<= 2 min for ours).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from hessian_book.data import load_mnist
from hessian_book.runs import hessian_subsample
from hessian_core.fiedler import fiedler_linkage
from hessian_book.models import lenet_tiny
from hessian_core.operators import full_hessian
from hessian_book.calibration import print_calibration
from hessian_core.partitions import adjusted_rand_index, top_clusters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a checkpoint_*.pt from the MNIST chapter's results")
    parser.add_argument("--data-dir", default=None, help="MNIST root (default: $MNIST_DATA_DIR, else data/mnist)")
    parser.add_argument("--n-images", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print_calibration()  # the machine's speed now, beside every figure below (hessian_book.calibration)

    model = lenet_tiny(seed=42)
    where = "seeded initialisation"
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=False)["model"])
        where = os.path.basename(args.checkpoint)
    x, y = load_mnist("train", args.data_dir)
    H = full_hessian(model, torch.nn.CrossEntropyLoss(), hessian_subsample(x, y, args.n_images, 43),
                     progress=False).numpy()
    print(f"Hessian of LeNet-tiny at {where} on {args.n_images} MNIST images: P = {H.shape[0]}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")

    def timed(**options) -> tuple[float, np.ndarray]:
        best, Z = np.inf, None
        for _ in range(args.repeats):
            start = time.perf_counter()
            Z = fiedler_linkage(H, progress=False, **options)
            best = min(best, time.perf_counter() - start)
        return best, Z

    ours, Z_ours = timed()
    dense, Z_dense = timed(dense_max=H.shape[0] + 1)
    same = [adjusted_rand_index(top_clusters(Z_ours, k), top_clusters(Z_dense, k)) for k in (2, 4, 16, 64)]
    heights = np.max(np.abs(np.sort(Z_ours[:, 2]) - np.sort(Z_dense[:, 2])) / np.sort(Z_dense[:, 2]))
    print(f"ours (shift-invert Lanczos above 1000 vertices): {ours:7.1f} s")
    print(f"dense eigh at every split:                       {dense:7.1f} s")
    print(f"ratio dense/ours = {dense / ours:.2f}x")
    print(f"same tree: ARI of the top 2/4/16/64-cluster cuts = {', '.join(f'{a:.3f}' for a in same)}; "
          f"largest relative difference of sorted merge heights {heights:.1e}")
    print(f"goal (full 5,994-parameter Fiedler dendrogram <= 120 s): {'met' if ours <= 120 else 'NOT met'} "
          f"({ours:.1f} s)")


if __name__ == "__main__":
    main()
