"""How close the cost model's estimates (``book/cost.py``) come to measured times: each chapter run at a preset
(default ``smoke``: seconds each) with a calibration before it, its measured time scaled to the reference speed,
against the estimate the model gives for that very configuration.

    MNIST_DATA_DIR=../shared/data/mnist python benchmarks/bench_estimates.py            # every chapter, smoke
    python benchmarks/bench_estimates.py --chapters core_checks mlp_depth_modadd --preset smoke

The chapters run in execution order in one shared, fresh results folder (the Fiedler and mechanistic chapters read
the MNIST, grokking and depth runs made just before, as the model assumes), each through its module's
``run(config)`` in this process (no notebook: start-up and figures are not part of the comparison). The ratio
measured / estimated is printed per chapter with the load; ``tests/book/test_cost.py`` asserts it stays within
:data:`SMOKE_FACTOR` for the cheap smoke runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book"))

from hessian_book.numerics import pin_environment  # noqa: E402

pin_environment()  # before torch is imported: the records' and the unit costs' numerical path (HESSIAN_UNPINNED=1:
# the CPU's own)

import cost  # noqa: E402
import record as rec  # noqa: E402

from hessian_book.calibration import calibrate, print_calibration  # noqa: E402

SMOKE_FACTOR = 3.0  # at the smoke presets the estimate is within this factor of the measured, calibrated time


@dataclass(frozen=True)
class Comparison:
    """One chapter: measured wall seconds, the speed factor around it, the measured time at the reference speed,
    the model's estimate (reference speed) and their ratio."""

    name: str
    measured: float
    speed_factor: float
    reference: float
    estimate: float
    load: float

    @property
    def ratio(self) -> float:
        return self.reference / self.estimate

    def line(self) -> str:
        return (f"{self.name:<20} measured {self.measured:8.1f} s at factor {self.speed_factor:4.2f} = "
                f"{self.reference:8.1f} s at the reference speed; estimated {self.estimate:8.1f} s; measured / "
                f"estimated {self.ratio:5.2f} (load {self.load:.2f})")


def chapter_config(name: str, preset: str, results_dir: str):
    module = importlib.import_module(f"hessian_book.chapters.{name}")
    return module, module.Config.from_parameters({"preset": preset, "results_dir": results_dir})


def compare(name: str, *, preset: str = "smoke", results_dir: str, quick: bool = False) -> Comparison:
    """Run chapter ``name`` at ``preset`` in ``results_dir`` between two calibrations and compare with its
    estimate (``quick``: short calibrations, for tests)."""
    options = dict(n_blocks=5, block_steps=20, min_blocks=5) if quick else {}
    module, config = chapter_config(name, preset, results_dir)
    estimate = cost.estimate(name, config).seconds
    before = calibrate(**options)
    started = time.perf_counter()
    module.run(config, progress=False)
    measured = time.perf_counter() - started
    after = calibrate(**options)
    factor = (before.speed_factor + after.speed_factor) / 2
    return Comparison(name=name, measured=measured, speed_factor=factor, reference=measured / factor,
                      estimate=estimate, load=(before.load_before + after.load_after) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chapters", nargs="*", default=None, help="default: every chapter of the book")
    parser.add_argument("--preset", default="smoke")
    args = parser.parse_args()
    print_calibration()
    names = rec.execution_order(args.chapters or rec.book_chapters(), book=rec.book_chapters())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-estimates-") as results:
        for name in names:
            rows.append(compare(name, preset=args.preset, results_dir=results))
            print(rows[-1].line(), flush=True)
    worst = max(rows, key=lambda r: max(r.ratio, 1 / r.ratio))
    print(f"worst: {worst.name}, measured / estimated {worst.ratio:.2f}"
          + (f" (stated bound at the smoke preset: within a factor {SMOKE_FACTOR:g})" if args.preset == "smoke"
             else ""))
    print_calibration()


if __name__ == "__main__":
    main()
