"""The unit costs of the cost model behind ``book/build.py --plan`` (``book/cost.py``), in reference-speed seconds.

    python benchmarks/bench_cost_units.py             # writes benchmarks/cost_units.json (a few minutes)
    python benchmarks/bench_cost_units.py --out FILE
    python benchmarks/bench_cost_units.py --only mechanistic   # re-measure one group into the existing file

Each unit operation the chapters repeat (an AdamW step of the grokking transformer or of a depth-chapter MLP, one
checkpoint's Lanczos extremes / SLQ / progress measures, an exact Hessian, a dense eigendecomposition, an SGD step
of LeNet-tiny, a Fiedler tree, ...) is timed on one thread at one or two sizes. Each point is stored with its *work*
(the size measure its cost is taken to grow with, named in ``work``) and its time scaled to the reference speed
(:mod:`hessian_book.calibration`): a full calibration is printed before and after, and each measurement is
divided by its own speed factor, the mean of short calibrations (~1 s) just before and after it, since the load
of a shared machine drifts within minutes. ``book/cost.py`` fits ``seconds = a + b * work`` through a unit's
points (least squares through two or more; one point: proportional) and counts how many of each a chapter does
from its parameters. Memory-bound units (exact Hessians, eigendecompositions) slow down under a shared machine's
load more than the calibration's small step does: measure on a quiet machine where possible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from hessian_book.numerics import pin_environment, unpinned_requested

pin_environment()  # before torch is imported: the records' numerical path (HESSIAN_UNPINNED=1: the CPU's own)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn

from hessian_book.calibration import calibrate, print_calibration

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "cost_units.json"


def _speed() -> float:
    """A short calibration (about 1.3 s at the reference speed): the speed factor of this moment."""
    return calibrate(n_blocks=5, block_steps=20, warmup=5, min_blocks=5).speed_factor


_FACTORS: list[float] = []


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """The fastest of ``repeats`` calls (seconds) and the last value. A short calibration before and after (the
    load of a shared machine drifts within minutes): their mean is the speed factor of this measurement."""
    before = _speed()
    best, value = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    _FACTORS.append((before + _speed()) / 2)
    return best, value


def transformer_units(points: dict, tmp: Path) -> None:
    from hessian_book.circuit import progress_measures
    from hessian_book.data import modular_addition_split
    from hessian_book.measure import dense_spectrum, extreme_eigenvalues, slq_density
    from hessian_book.models import ModAddTransformer, n_parameters
    from hessian_book.store import ResultStore
    from hessian_book.training import split_evaluator, train_full_batch_adamw
    from hessian_core import full_hessian

    # (name, p, d_model, d_mlp, hessian samples, lanczos k, block): the grokking smoke preset and its defaults
    sizes = [("small", 23, 8, 16, 30, 3, 2), ("default", 113, 32, 128, 200, 6, 4)]
    for label, p, d, m, n_h, k, block in sizes:
        split = modular_addition_split(p, 0.3, 0)
        model = ModAddTransformer(p, d, 1, m, 0)
        P = n_parameters(model)
        n_train = len(split["train"][1])
        steps = 300
        runs = iter(range(10))

        def train(n_steps: int = steps):  # a fresh store each call, so that nothing is read back
            store = ResultStore(str(tmp), f"units_{label}_{next(runs)}", dict(p=p, d=d, m=m))
            return train_full_batch_adamw(
                model, *split["train"], store=store, n_steps=n_steps, checkpoint_steps=[n_steps], lr=1e-3,
                weight_decay=0.5, log_steps=range(0, n_steps + 1, 100),
                evaluate=split_evaluator(split["train"], split["test"]))

        first, _ = timed(lambda: train(20))  # the first call: compiling the step (where it is compiled), warm-up
        seconds, _ = timed(train)
        add(points, "transformer_step", label, seconds / steps, n_train * P, steps=steps, P=P, n_train=n_train)
        _FACTORS.append(_FACTORS[-2])  # the first call's own factor
        add(points, "transformer_first_call", label, max(first - 20 * seconds / steps, 0.0), n_train * P,
            what="a training call's fixed cost beyond its steps (compiling the step)")
        batch = tuple(t[:n_h] for t in split["train"])
        slq_density(model, batch, n_probes=1, n_steps=5)  # warm-up
        seconds, out = timed(lambda: extreme_eigenvalues(model, batch, k=k, tol=1e-6, block_size=block))
        add(points, "transformer_lanczos", label, seconds, n_h * P * k, hvps=out.hvps, k=k, block=block)
        seconds, out = timed(lambda: slq_density(model, batch, n_probes=3, n_steps=30))
        add(points, "transformer_slq", label, seconds, n_h * P * 90, hvps=out.hvps)
        seconds, _ = timed(lambda: progress_measures(model, p, train=split["train"], frequencies=[1, 2, 3]))
        add(points, "transformer_progress", label, seconds, p * p * P)
    # exact Hessians of the transformer (work n P^2) at sizes affordable here: the defaults' P = 19,808 is
    # extrapolated along the line
    for label, p, d, m, n_h in (("p23", 23, 8, 16, 30), ("p113_d8", 113, 8, 16, 200)):
        split = modular_addition_split(p, 0.3, 0)
        model = ModAddTransformer(p, d, 1, m, 0)
        P = n_parameters(model)
        batch = tuple(t[:n_h] for t in split["train"])
        seconds, _ = timed(lambda: full_hessian(model, nn.CrossEntropyLoss(), batch, progress=False))
        add(points, "transformer_hessian", label, seconds, n_h * P * P, P=P, n=n_h)


def eigen_units(points: dict) -> None:
    from hessian_core import eigendecomposition

    rng = np.random.default_rng(0)
    # 6,000: the size the LeNet chapters use (P = 5,994); a line through 1,500 and 3,000 alone, extrapolated as P³,
    # put LeNet's eigendecomposition at 14 s where the MNIST record measured ~9 s (LAPACK runs faster per flop on
    # larger matrices), and the least-squares line through all three also extrapolates better to P = 19,808
    for P in (1500, 3000, 6000):
        A = rng.standard_normal((P, P))
        A = (A + A.T) / 2
        seconds, _ = timed(lambda: eigendecomposition(A, n_top=50, n_bottom=50, progress=False))
        add(points, "eigendecomposition", f"P{P}", seconds, P ** 3, P=P)
        # the eigenvalues alone: torch's (MKL), what the MNIST chapter's draws and subsample sizes call, and
        # numpy's (OpenBLAS's LAPACK), the core checks' independent reference; at P = 6,000 numpy's took 1.5x
        # the full eigendecomposition with 100 vectors (2 Dec), so the two are separate units
        At = torch.from_numpy(A)
        seconds, _ = timed(lambda: torch.linalg.eigvalsh(At))
        add(points, "eigvalsh", f"P{P}", seconds, P ** 3, P=P)
        seconds, _ = timed(lambda: np.linalg.eigvalsh(A))
        add(points, "numpy_eigvalsh", f"P{P}", seconds, P ** 3, P=P)


def lenet_units(points: dict) -> None:
    from hessian_book.chapters import fiedler_lenet
    from hessian_book.chapters.core_checks import train_briefly
    from hessian_book.data import load_mnist
    from hessian_book.models import lenet_tiny
    from hessian_book.runs import hessian_subsample
    from hessian_core import full_hessian, gauss_newton, hessian_operator, lanczos, parameter_labels, top_eigenvalue

    images, labels = load_mnist("train", os.environ.get("MNIST_DATA_DIR") or None)
    steps = 200
    model = lenet_tiny(seed=0)
    seconds, _ = timed(lambda: train_briefly(model, images, labels, steps=steps, seed=0, progress=False))
    add(points, "lenet_sgd_step", "batch128", seconds / steps, 1)
    def forward():
        with torch.no_grad():
            return model(images[:10000]).argmax(1)

    seconds, _ = timed(forward)
    add(points, "lenet_forward", "10k", seconds / 10000, 1, what="per image")
    loss = nn.CrossEntropyLoss()
    for n in (10, 50):
        batch = hessian_subsample(images, labels, n, 1)
        seconds, _ = timed(lambda: full_hessian(model, loss, batch, progress=False))
        add(points, "lenet_hessian", f"n{n}", seconds, n)
    batch = hessian_subsample(images, labels, 50, 1)
    seconds, _ = timed(lambda: gauss_newton(model, loss, batch))
    add(points, "lenet_gauss_newton", "n50", seconds, 50)
    seconds, _ = timed(lambda: top_eigenvalue(hessian_operator(model, loss, batch), tol=1e-6, progress=False))
    add(points, "lenet_top_eigenvalue", "n50", seconds, 1)
    seconds, _ = timed(lambda: lanczos(hessian_operator(model, loss, batch), 20, which="both", tol=1e-10,
                                       progress=False))
    add(points, "lenet_lanczos_k20", "n50", seconds, 1)
    config = fiedler_lenet.Config()
    layers, _ = parameter_labels(model)
    seconds, _ = timed(lambda: fiedler_lenet._lenet_tree(model, batch, layers, config.tree_options(),
                                                         config.top_tree_options()))
    add(points, "lenet_trees", "n50", seconds, 1, what="the |H| tree, the scaled tree and the Hessian")
    seconds, _ = timed(lambda: fiedler_lenet._draw_tree(model, batch, config.top_tree_options()))
    add(points, "lenet_draw_tree", "n50", seconds, 1, what="one subsample draw's top tree and its Hessian")


def fiedler_transformer_units(points: dict) -> None:
    from hessian_book.chapters import fiedler_lenet
    from hessian_book.data import modular_addition_split
    from hessian_book.models import ModAddTransformer, n_parameters
    from hessian_core import fiedler_linkage, full_hessian

    config = fiedler_lenet.Config()
    options = {**config.tree_options(), "max_depth": config.grokking_max_depth}
    split = modular_addition_split(113, 0.3, 0)
    model = ModAddTransformer(113, 8, 1, 16, 0)
    P = n_parameters(model)
    H = full_hessian(model, nn.CrossEntropyLoss(), tuple(t[:200] for t in split["train"]), progress=False).numpy()
    seconds, _ = timed(lambda: fiedler_linkage(H, progress=False, **options))
    add(points, "transformer_tree", "p113_d8", seconds, P * P, P=P, max_depth=options["max_depth"])


def mlp_units(points: dict, tmp: Path) -> None:
    from hessian_book.data import modular_addition_split
    from hessian_book.models import ModAddMLP, n_parameters
    from hessian_book.sharpness import adam_preconditioner, hessian_extremes
    from hessian_book.store import ResultStore
    from hessian_book.training import checkpoint_name, full_batch_evaluator, train_full_batch_adamw

    split = modular_addition_split(97, 0.3, 0, with_equals=False)
    n_train = len(split["train"][1])
    for depth in (1, 4):
        model = ModAddMLP(97, depth, 128, "onehot", 0)
        P = n_parameters(model)
        steps = 300
        runs = iter(range(10))
        stores = []

        def train(n_steps: int = steps):  # a fresh store each call, so that nothing is read back
            stores.append(ResultStore(str(tmp), f"mlp_units_{depth}_{next(runs)}", dict(depth=depth)))
            return train_full_batch_adamw(
                model, *split["train"], store=stores[-1], n_steps=n_steps, checkpoint_steps=[n_steps], lr=3e-3,
                weight_decay=3.0, log_steps=range(0, n_steps + 1, 100),
                evaluate=full_batch_evaluator(split["train"], split["test"]))

        first, _ = timed(lambda: train(20))  # the first call: compiling the step, warm-up
        seconds, _ = timed(train)
        add(points, "mlp_step", f"depth{depth}", seconds / steps, n_train * P, P=P)
        _FACTORS.append(_FACTORS[-2])
        add(points, "mlp_first_call", f"depth{depth}", max(first - 20 * seconds / steps, 0.0), n_train * P,
            what="a training call's fixed cost beyond its steps (compiling the step)")
        store = stores[-1]
        state = store.load(checkpoint_name(steps))
        # the faster of two calls: the first pays one-off set-up that a chapter's worker pays once for its ~180
        # checkpoints (one call, as measured before, put the depth record's Hessians at 3.4x their time)
        seconds, out = timed(lambda: hessian_extremes(model, nn.CrossEntropyLoss(), split["train"], tol=1e-2,
                                                      dtype=torch.float32,
                                                      preconditioner=adam_preconditioner(state["optimiser"])),
                             repeats=2)
        add(points, "mlp_hessian_extremes", f"depth{depth}", seconds, n_train * P, P=P,
            hvps=int(out.get("n_hvp", 0)))


def mechanistic_units(points: dict, tmp: Path) -> None:
    """The mechanistic chapter's solves and tests, each as the chapter calls it, at its smoke preset's transformer
    (p 23, d 32, MLP 64, 30 pairs, 13 eigenvectors) and at its defaults' (p 113, d 32, MLP 128, 200 pairs, 20),
    on a model trained 300 steps. A trained model's solves can cost far more (at the smoke run's final state the
    Hessian's Lanczos reached its cap and fell back to a dense solve): bench_estimates.py says how far these carry."""
    from hessian_book.data import modular_addition_split
    from hessian_book.mechanism import (CURVATURES, EPS_GRID, block_of_top_vectors, circuit_tests,
                                        curvature_eigenpairs, decision_error_rates, hessian_top_eigenpairs,
                                        planted_curvature_operator)
    from hessian_book.models import ModAddTransformer, n_parameters
    from hessian_book.store import ResultStore
    from hessian_book.training import split_evaluator, train_full_batch_adamw
    from hessian_core import lanczos

    # (label, p, d_model, d_mlp, hessian samples, eigenvectors, test draws, lr, weight decay)
    for label, p, d, m, n_h, k, n_draws, lr, wd in (("smoke", 23, 32, 64, 30, 13, 200, 6e-3, 1.5),
                                                    ("default", 113, 32, 128, 200, 20, 1000, 1e-3, 0.5)):
        split = modular_addition_split(p, 0.3, 0)
        model = ModAddTransformer(p, d, 1, m, 0)
        P = n_parameters(model)
        train_full_batch_adamw(model, *split["train"], store=ResultStore(str(tmp), f"mech_units_{label}", {}),
                               n_steps=300, checkpoint_steps=[300], lr=lr, weight_decay=wd,
                               log_steps=range(0, 301, 100), evaluate=split_evaluator(split["train"], split["test"]))
        batch = tuple(t[:n_h] for t in split["train"])
        for matrix in CURVATURES:  # the chapter's curvature eigenpairs at a pick, tol 1e-5 (its lanczos_tol)
            seconds, out = timed(lambda: curvature_eigenpairs(model, batch, matrix, k=k, tol=1e-5))
            add(points, f"mechanistic_{matrix}", label, seconds, n_h * P * k, P=P, k=k, products=int(out.products))
        seconds, (values, vectors) = timed(lambda: hessian_top_eigenpairs(model, batch, k, tol=1e-5))
        add(points, "mechanistic_top", label, seconds, n_h * P * k, P=P, k=k)
        key = [1, 2, 3, 5, 8]  # five key frequencies, as many as the recorded reference run has (6, 13, 26, 36, 56)
        block = block_of_top_vectors(vectors, model)
        seconds, _ = timed(lambda: circuit_tests(values, vectors, model, key, block=block, eps_grid=EPS_GRID,
                                                 n_draws=n_draws))
        # work 1: a call's cost depends on the null's size (at p = 23 all C(11, 5) = 462 sets, at p = 113 the
        # n_draws sampled ones) and the cluster reading, not on n_draws alone; the two presets' mean prices a call
        add(points, "mechanistic_circuit_test", label, seconds / len(EPS_GRID), 1, P=P, n_draws=n_draws,
            what="one circuit_test (one eps)")
        n_sims = 5  # the chapter's 50 (smoke) / 200: each simulation is one test per strength and one null
        seconds, _ = timed(lambda: decision_error_rates(model, key, block=block, k=k, n_sims=n_sims,
                                                        n_draws=n_draws, eps=0.02, strengths=(1.0, 0.7, 0.5)))
        add(points, "mechanistic_error_sim", label, seconds / (4 * n_sims), n_draws, P=P,
            what="one simulated test (planted eigenpairs, clusters, the test) with n_draws null draws")
        op = planted_curvature_operator(model, key, block="W_E", structure=True)
        seconds, _ = timed(lambda: lanczos(op, 2 * len(key) + 2, which="largest", tol=1e-8, max_iter=4000,
                                           return_vectors=True, progress=False))
        add(points, "mechanistic_planted", label, seconds, P, P=P, what="one planted control's Lanczos")


def add(points: dict, unit: str, label: str, seconds: float, work: float, **extra) -> None:
    """Store a point measured by the last :func:`timed` call (its speed factor scales it to the reference)."""
    factor = _FACTORS[-1]
    reference = seconds / factor
    points.setdefault(unit, []).append(dict(label=label, work=float(work), seconds=round(reference, 6),
                                            measured_seconds=round(seconds, 6), speed_factor=round(factor, 3),
                                            **extra))
    print(f"  {unit:<24} {label:<10} {seconds:9.4f} s measured at factor {factor:4.2f} = {reference:9.4f} s at the "
          f"reference speed (work {work:.4g})", flush=True)


WORK = {
    "transformer_step": "n_train * P (one full-batch AdamW step, logging every 100 steps included)",
    "transformer_lanczos": "hessian_samples * P * lanczos_k (extreme_eigenvalues, tol 1e-6)",
    "transformer_slq": "hessian_samples * P * probes * steps",
    "transformer_progress": "p^2 * P (progress measures of one checkpoint)",
    "transformer_hessian": "n * P^2 (hessian_core.full_hessian)",
    "transformer_tree": "P^2 (fiedler_linkage at the grokking_max_depth, the Hessian given)",
    "eigendecomposition": "P^3 (all eigenvalues, 50 vectors at each end)",
    "eigvalsh": "P^3 (torch.linalg.eigvalsh)", "numpy_eigvalsh": "P^3 (numpy.linalg.eigvalsh)",
    "lenet_sgd_step": "1 (batch 128)", "lenet_forward": "1 (per image)", "lenet_hessian": "images",
    "lenet_gauss_newton": "images (proportional)", "lenet_top_eigenvalue": "1 (50 images, tol 1e-6)",
    "lenet_lanczos_k20": "1 (20 at each end, tol 1e-10, 50 images)", "lenet_trees": "1 (50 images)",
    "lenet_draw_tree": "1 (50 images)",
    "mlp_step": "n_train * P (full-batch AdamW, logging every 100 steps)",
    "transformer_first_call": "n_train * P (a training call's fixed cost: compiling its step where compiled)",
    "mlp_first_call": "n_train * P (a training call's fixed cost: compiling its step where compiled)",
    "mlp_hessian_extremes": "n_train * P (λ_max, λ_min and Adam's preconditioned λ_max, tol 1e-2, float32)",
    **{f"mechanistic_{m}": "hessian_samples * P * n_eigenvectors (curvature_eigenpairs, tol 1e-5)"
       for m in ("hessian", "gauss_newton", "block_hessian", "gradient_covariance")},
    "mechanistic_top": "hessian_samples * P * n_eigenvectors (hessian_top_eigenpairs, tol 1e-5)",
    "mechanistic_circuit_test": "1 (one circuit_test at one eps; the mean of the smoke and default presets' calls)",
    "mechanistic_error_sim": "n_test_draws (one simulated test of decision_error_rates)",
    "mechanistic_planted": "P (one planted control's Lanczos, tol 1e-8, cap 4,000 products)",
}


#: The measured groups, in the order a full run takes them (``--only`` names some).
GROUPS = {"transformer": transformer_units, "mlp": mlp_units, "eigen": lambda points, tmp: eigen_units(points),
          "lenet": lambda points, tmp: lenet_units(points),
          "fiedler_transformer": lambda points, tmp: fiedler_transformer_units(points),
          "mechanistic": mechanistic_units}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", choices=sorted(GROUPS), nargs="+",
                        help="measure these groups only and replace their units in the existing --out file (the "
                             "other units and the file's calibrations are kept; the run's own are stored under "
                             "'updates')")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    before = print_calibration()
    points: dict = {}
    started = time.perf_counter()
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as tmp:
        for group in args.only or GROUPS:
            GROUPS[group](points, Path(tmp))
    measured = time.perf_counter() - started
    after = print_calibration()
    if args.only:
        out = json.loads(args.out.read_text())
        out["units"].update(points)
        out["work"] = WORK
        out.setdefault("updates", []).append(dict(
            groups=args.only, units=sorted(points), calibration_before=before.as_dict(),
            calibration_after=after.as_dict(), seconds=round(measured, 1), pinned=not unpinned_requested(),
            torch=torch.__version__))
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"updated {len(points)} units of {args.out} ({measured:.0f} s of measurements)")
        return
    out = dict(
        about="Unit costs of book/cost.py, seconds at the reference speed (hessian_book.calibration): each "
              "measured time divided by its own speed factor, the mean of short calibrations just before and "
              "after it. Written by benchmarks/bench_cost_units.py; fit seconds = a + b * work through each "
              "unit's points.",
        calibration_before=before.as_dict(), calibration_after=after.as_dict(),
        seconds=round(measured, 1), pinned=not unpinned_requested(), torch=torch.__version__, python=sys.version.split()[0], work=WORK,
        units=points)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({measured:.0f} s of measurements; speed factor {before.speed_factor:.2f} before, "
          f"{after.speed_factor:.2f} after)")


if __name__ == "__main__":
    main()
