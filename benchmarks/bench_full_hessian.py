"""Full float64 Hessian of LeNet-tiny on 50 MNIST images: the seed repository's method vs ours, in one run.

Seed method: vmap of forward-over-reverse HVPs (``jvp(grad(loss))``) over one-hot chunks of 64, then symmetrised.
Ours: ``hessian_core.full_hessian`` (``"structured"``, chosen by ``"auto"`` for this model) and, for reference,
our generic ``"rows"`` path (cached gradient graph + batched double backward) with ``--with-rows``.

    python benchmarks/bench_full_hessian.py [--n-images 50] [--repeats 1] [--with-rows] [--data-dir DIR]

Prints times, the ratio seed/ours (goal: >= 2x) and the largest entry difference (goal: <= 1e-10).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from hessian_book.data import load_mnist
from hessian_book.models import lenet_tiny
from hessian_book.calibration import print_calibration
from hessian_core.operators import full_hessian


def seed_method(model: nn.Module, loss_fn, batch, chunk: int = 64) -> torch.Tensor:
    """The seed repository's approach: vmapped forward-over-reverse HVPs over one-hot chunks, symmetrised."""
    x, y = batch
    x = x.double()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().double() for p in model.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    P = sum(sizes)

    def loss(*ps):
        return loss_fn(functional_call(model, dict(zip(names, ps)), (x,)), y)

    def hvp_flat(v):
        tangents = tuple(t.reshape(s) for t, s in zip(v.split(sizes), shapes))
        _, out = jvp(grad(loss, argnums=tuple(range(len(params)))), params, tangents)
        return torch.cat([o.reshape(-1) for o in out])

    H = torch.empty(P, P, dtype=torch.float64)
    for start in range(0, P, chunk):
        stop = min(P, start + chunk)
        E = torch.zeros(stop - start, P, dtype=torch.float64)
        E[torch.arange(stop - start), torch.arange(start, stop)] = 1
        H[start:stop] = vmap(hvp_flat)(E)
    return (H + H.T) / 2


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR", "../shared/data/mnist"))
    parser.add_argument("--with-rows", action="store_true",
                        help="also time our generic rows path (slow: one double backward per parameter)")
    args = parser.parse_args()
    print_calibration()  # the machine's speed now, beside every figure below (hessian_book.calibration)

    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}")
    images, labels = load_mnist("train", args.data_dir)
    batch = (images[: args.n_images], labels[: args.n_images])
    # A briefly trained model: at initialisation the Hessian is atypically small.
    model = lenet_tiny(seed=42)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(100):
        idx = torch.arange(step * 128, (step + 1) * 128) % len(images)
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
        optimiser.step()
    loss_fn = nn.CrossEntropyLoss()
    print(f"LeNet-tiny, {sum(p.numel() for p in model.parameters())} parameters, {args.n_images} MNIST images, "
          f"float64, {args.repeats} repeat(s), median times\n")

    t_ours, H_ours = timed(lambda: full_hessian(model, loss_fn, batch, progress=False), args.repeats)
    rows = []
    if args.with_rows:
        t_rows, H_rows = timed(lambda: full_hessian(model, loss_fn, batch, method="rows", progress=False),
                               args.repeats)
        rows.append(("ours, generic rows (double backward)", t_rows, (H_rows - H_ours).abs().max().item()))
    t_seed, H_seed = timed(lambda: seed_method(model, loss_fn, batch), args.repeats)
    diff = (H_seed - H_ours).abs().max().item()
    scale = H_seed.abs().max().item()

    print(f"{'method':45s} {'time (s)':>9s} {'seed/this':>10s} {'max |ΔH|':>10s}")
    print(f"{'seed: vmap fwd-over-rev HVPs, chunks of 64':45s} {t_seed:9.2f} {1.0:10.2f} {'(ref)':>10s}")
    for name, t, d in rows:
        print(f"{name:45s} {t:9.2f} {t_seed / t:10.2f} {d:10.1e}")
    print(f"{'ours: full_hessian (auto = structured)':45s} {t_ours:9.2f} {t_seed / t_ours:10.2f} {diff:10.1e}")
    print(f"\nmax |H| = {scale:.3g}")
    speedup = t_seed / t_ours
    print(f"goal >= 2x faster, same matrix to 1e-10: speed-up {speedup:.1f}x "
          f"({'met' if speedup >= 2 else 'MISSED'}), max difference {diff:.1e} ({'met' if diff <= 1e-10 else 'MISSED'})")


if __name__ == "__main__":
    main()
