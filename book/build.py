"""Execute the book's notebooks with papermill, then build the HTML book with Jupyter Book 1.x.

    python book/build.py                      # every notebook at its own defaults, then the book
    python book/build.py --preset smoke       # every notebook with preset="smoke" (fast), then the book
    python book/build.py --only core_checks   # execute one notebook (others must have been executed before)
    python book/build.py --golden             # write tests/golden/<name>.ipynb at preset="smoke" for nbval
    python book/build.py --from-golden        # the smoke book from tests/golden/ (no execution; what CI does
                                              # after the tests have re-executed those copies with nbval)
    python book/build.py --no-book            # execute only

Notebooks are Jupytext MyST markdown files in ``notebooks/``. papermill cannot read them, so each is converted
with jupytext, executed with papermill (its ``parameters`` cell overridden), and written to
``notebooks/_executed/<name>.ipynb``, which ``_toc.yml`` lists. The book renders those executed notebooks as they
are (``execute_notebooks: off``): building it never reruns an experiment behind your back.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import papermill

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = NOTEBOOKS / "_executed"
GOLDEN = ROOT / "tests" / "golden"

# Book order; every entry is notebooks/<name>.md.
# fiedler_lenet reads the runs of mnist_lenet and grokking_modadd, so it comes after both.
BOOK_NOTEBOOKS = ["core_checks", "mnist_lenet", "grokking_modadd", "fiedler_lenet", "mlp_depth_modadd"]


def execute(name: str, out_path: Path, parameters: dict) -> float:
    """Convert ``notebooks/<name>.md`` and execute it into ``out_path``; returns the wall time in seconds."""
    source = NOTEBOOKS / f"{name}.md"
    notebook = jupytext.read(source)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / f"{name}.ipynb"
        jupytext.write(notebook, converted)
        start = time.perf_counter()
        # Write next to the target and rename, so an interrupted run never leaves a half-written page.
        partial = out_path.with_name(f".partial.{out_path.name}")
        try:
            papermill.execute_notebook(
                str(converted), str(partial), parameters=parameters, cwd=str(NOTEBOOKS),
                kernel_name="python3", progress_bar=False,
            )
            os.replace(partial, out_path)
        finally:
            partial.unlink(missing_ok=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="passed to every notebook as the `preset` parameter")
    parser.add_argument("--only", nargs="*", default=None, help="execute only these notebooks")
    parser.add_argument("--golden", action="store_true", help="write smoke-preset golden copies for nbval")
    parser.add_argument("--no-book", action="store_true", help="execute notebooks but do not build the HTML")
    parser.add_argument("--from-golden", action="store_true",
                        help="build the book from the smoke-preset golden copies in tests/golden/ without executing "
                             "anything (they must be fresh: the test suite checks that and re-executes them)")
    args = parser.parse_args()
    cli = Path(sys.executable).with_name("jupyter-book")
    if not args.golden and not args.no_book and not cli.exists() and shutil.which("jupyter-book") is None:
        # check the tools before any heavy work (the [test] extra does not install jupyter-book)
        sys.exit('jupyter-book is not installed here: pip install -e ".[book]" first')
    if args.from_golden:
        for name in BOOK_NOTEBOOKS:
            EXECUTED.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(GOLDEN / f"{name}.ipynb", EXECUTED / f"{name}.ipynb")
        print(f"copied {len(BOOK_NOTEBOOKS)} golden smoke notebooks into {EXECUTED}", flush=True)

    # Notebooks run with cwd notebooks/: make the data location absolute. Default: <repo>/data/mnist.
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ.get("MNIST_DATA_DIR") or ROOT / "data" / "mnist").resolve())
    names = args.only if args.only is not None else BOOK_NOTEBOOKS
    unknown = [n for n in names if not (NOTEBOOKS / f"{n}.md").is_file()]
    if unknown:
        sys.exit(f"--only: no notebooks/<name>.md for {unknown}")
    for name in [] if args.from_golden else names:
        if args.golden:
            seconds = execute(name, GOLDEN / f"{name}.ipynb", {"preset": "smoke"})
        else:
            parameters = {} if args.preset is None else {"preset": args.preset}
            seconds = execute(name, EXECUTED / f"{name}.ipynb", parameters)
        print(f"executed {name} in {seconds:.1f} s", flush=True)
    if args.golden or args.no_book:
        return
    missing = [n for n in BOOK_NOTEBOOKS if not (EXECUTED / f"{n}.ipynb").is_file()]
    if missing:
        sys.exit(f"not executed yet: {missing}; run without --only first")
    # The CLI installed beside this interpreter (jupyter_book 1.x has no ``python -m`` entry point).
    subprocess.run([str(cli) if cli.exists() else "jupyter-book", "build", str(ROOT), "--path-output", str(ROOT)],
                   check=True)
    print(f"book: {ROOT / '_build' / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
