"""Build the HTML book from the paper of record (``record/``), executing only what is missing or stale.

    python book/build.py                      # the book from record/; executes a chapter only where its record
                                              # is missing or stale (code cells or parameters cell changed)
    python book/build.py --plan               # say what would execute and roughly how long, then stop
    python book/build.py --rerun NAME|all     # re-execute these chapters at their defaults into record/, then build
    python book/build.py --record NAME|all    # execute at the defaults into record/ only (no book)
    python book/build.py --verify NAME        # re-execute NAME into a fresh results folder and compare every glued
                                              # value with record/NAME.ipynb (exit 1 on disagreement)
    python book/build.py --preset smoke       # every notebook with preset="smoke" (fast) into notebooks/_executed/,
                                              # then the smoke book (pages carry a smoke banner)
    python book/build.py --only core_checks   # with --preset: execute one notebook (others executed before);
                                              # without: the same as --rerun core_checks
    python book/build.py --golden             # write tests/golden/<name>.ipynb at preset="smoke" for nbval
    python book/build.py --from-golden        # the smoke book from tests/golden/ (no execution; what CI does
                                              # after the tests have re-executed those copies with nbval)
    python book/build.py --no-book            # execute only

Notebooks are Jupytext MyST markdown files in ``notebooks/``. papermill cannot read them, so each is converted
with jupytext and executed with papermill (its ``parameters`` cell overridden). A record execution writes
``record/<name>.ipynb`` with lean outputs and its provenance in the metadata (``book/record.py``). Every build
then writes the pages the book shows into ``notebooks/_executed/`` (lean outputs, a provenance note or a smoke
banner at the top), generates the Reproducibility page, and renders them with Jupyter Book 1.x as they are
(``execute_notebooks: off``): building the book never reruns an experiment behind your back.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))  # book/ modules, also when imported from tests

import record as rec  # noqa: E402
from glued import glued_values  # noqa: E402

ROOT = rec.ROOT
NOTEBOOKS = rec.NOTEBOOKS
EXECUTED = NOTEBOOKS / "_executed"
GOLDEN = ROOT / "tests" / "golden"
RECORD = rec.RECORD
TOC = ROOT / "_toc.yml"

# Book order (fiedler_lenet reads the runs of mnist_lenet and grokking_modadd; mechanistic_modadd those of
# grokking_modadd and mlp_depth_modadd: record.DEPENDS_ON orders their execution after them).
BOOK_NOTEBOOKS = rec.book_chapters()


def execute(name: str, out_path: Path, parameters: dict) -> float:
    """Convert ``notebooks/<name>.md`` and execute it into ``out_path``; returns the wall time in seconds."""
    import jupytext
    import papermill

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


def _results_dir(name: str, parameters: dict) -> Path | None:
    """The results folder an execution writes to (relative paths are relative to notebooks/, its cwd); None when
    the chapter makes a temporary one (``results_dir = ""``)."""
    value = parameters.get("results_dir", rec.parameter_defaults(rec.read_source(name)).get("results_dir", ""))
    return (NOTEBOOKS / value).resolve() if value else None


def record_chapter(name: str, *, record_dir: Path | None = None, parameters: dict | None = None) -> float:
    """Execute ``name`` at its defaults (plus ``parameters``) into ``record_dir/<name>.ipynb`` (default
    ``record/``) with lean outputs and provenance; fails loudly when the record is no longer lean. Returns the
    wall time."""
    record_dir = record_dir or RECORD
    parameters = dict(parameters or {})
    run = rec.Run.start(name, parameters, _results_dir(name, parameters))
    with tempfile.TemporaryDirectory() as tmp:
        executed = Path(tmp) / f"{name}.ipynb"
        seconds = execute(name, executed, parameters)
        notebook = nbformat.read(executed, as_version=4)
    notebook, removed = rec.lean(notebook)
    for line in removed:
        print(f"  lean: removed {line}", flush=True)
    notebook.metadata["hessian_record"] = rec.provenance(run, notebook, rec.read_source(name), seconds)
    rec.write_notebook(notebook, record_dir / f"{name}.ipynb")
    for warning in rec.check_sizes(record_dir):  # raises RecordTooLarge when over the limits
        print(f"  warning: {warning}", flush=True)
    return seconds


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan(names: list[str], forced: set[str], *, record_dir: Path | None = None
         ) -> tuple[list[str], list[rec.Status]]:
    """Print what the build will execute (in execution order) and roughly how long; return (to execute,
    statuses)."""
    record_dir = record_dir or RECORD
    statuses = [rec.staleness(n, record_dir=record_dir) for n in names]
    todo = rec.execution_order([s.name for s in statuses if s.needs_execution or s.name in forced],
                               book=BOOK_NOTEBOOKS)
    print(f"record/: {len(names)} chapters", flush=True)
    for s in statuses:
        state = s.state if s.state == "fresh" else f"{s.state} ({'; '.join(s.reasons)})"
        if s.name in forced:
            state += ", forced"
        print(f"  {s.name:<20} {state}; the record took {_clock(s.wall_seconds)}", flush=True)
        if s.library_commits:
            print(f"    library changed since its record ({s.commit and s.commit[:10]}): reported, not re-executed",
                  flush=True)
            for line in s.library_commits[:15]:
                print(f"      {line}", flush=True)
            if len(s.library_commits) > 15:
                print(f"      ... {len(s.library_commits) - 15} more", flush=True)
    if todo:
        known = [s.wall_seconds for s in statuses if s.name in todo and s.wall_seconds]
        unknown = len(todo) - len(known)
        estimate = _clock(sum(known)) if known else "unknown"
        print(f"will execute {len(todo)} chapter(s), in this order: {', '.join(todo)}; estimated {estimate}"
              + (f" plus {unknown} chapter(s) of unknown time" if unknown and known else "")
              + " (from the records' wall times)", flush=True)
    else:
        print("nothing to execute: every record is fresh", flush=True)
    return todo, statuses


def run_with_progress(todo: list[str], estimates: dict[str, float | None], action) -> None:
    """Call ``action(name)`` for each chapter, printing progress and the remaining estimate between them."""
    start = time.perf_counter()
    for i, name in enumerate(todo, 1):
        remaining = [estimates.get(n) for n in todo[i - 1:]]
        left = sum(x for x in remaining if x)
        print(f"[{i}/{len(todo)}] {name}: executing (its record took {_clock(estimates.get(name))}; "
              f"about {_clock(left) if left else 'unknown'} left in all; started {time.strftime('%H:%M:%S')})",
              flush=True)
        seconds = action(name)
        print(f"[{i}/{len(todo)}] {name}: done in {_clock(seconds)}; {_clock(time.perf_counter() - start)} "
              "elapsed", flush=True)


def write_pages(sources: dict[str, Path], statuses: dict[str, rec.Status] | None = None) -> None:
    """The pages the book shows: lean copies of ``sources[name]`` in notebooks/_executed/, with the provenance
    note (record) or the smoke banner at the top."""
    for name, path in sources.items():
        notebook = nbformat.read(path, as_version=4)
        _, removed = rec.lean(notebook)
        for line in removed:
            print(f"  {name} page: removed {line}", flush=True)
        rec.write_notebook(rec.page(notebook, status=(statuses or {}).get(name)), EXECUTED / f"{name}.ipynb")


def write_toc(path: Path = EXECUTED / "_toc.yml") -> Path:
    """``_toc.yml`` without the chapters whose source does not exist (yet): the TOC the build uses."""
    import yaml

    toc = yaml.safe_load(TOC.read_text())

    def keep(entry) -> bool:
        file = entry.get("file", "")
        if file.startswith("notebooks/_executed/") and file.rsplit("/", 1)[-1] != "reproducibility":
            return file.rsplit("/", 1)[-1] in BOOK_NOTEBOOKS
        return True

    def prune(node):
        if isinstance(node, dict):
            return {k: ([prune(e) for e in v if not isinstance(e, dict) or keep(e)] if isinstance(v, list)
                        else prune(v)) for k, v in node.items()}
        return node

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(prune(toc), sort_keys=False))
    return path


def check_tools(*, book: bool, execute: bool) -> None:
    """Fail before any heavy work when a tool the build needs is missing."""
    missing = []
    if book:
        cli = Path(sys.executable).with_name("jupyter-book")
        if not cli.exists() and shutil.which("jupyter-book") is None:
            missing.append("jupyter-book")
        if importlib.util.find_spec("sphinx-mathjax-offline") is None:
            missing.append("sphinx-mathjax-offline")
    if execute:
        missing += [m for m in ("papermill", "jupytext", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"missing here: {', '.join(missing)}; install the book's tools first: pip install -e \".[book]\"")


def build_book(*, smoke: bool) -> None:
    import reproducibility

    page = reproducibility.write_page(smoke=smoke, record_dir=RECORD)
    print(f"wrote {page.relative_to(ROOT)}", flush=True)
    toc = write_toc()
    cli = Path(sys.executable).with_name("jupyter-book")
    start = time.perf_counter()
    # The CLI installed beside this interpreter (jupyter_book 1.x has no ``python -m`` entry point).
    subprocess.run([str(cli) if cli.exists() else "jupyter-book", "build", str(ROOT), "--path-output", str(ROOT),
                    "--toc", str(toc)], check=True)
    print(f"book: {ROOT / '_build' / 'html' / 'index.html'} (Sphinx build {time.perf_counter() - start:.0f} s)")


def verify(name: str, *, against: Path | None = None, scratch: Path | None = None) -> int:
    """Re-execute ``name`` with the reference's parameters and a fresh results folder; compare every glued value
    with the reference (default ``record/<name>.ipynb``). Returns the exit status (0: reproduced)."""
    from verify import compare_glued, format_table

    reference = Path(against) if against else RECORD / f"{name}.ipynb"
    if not reference.is_file():
        sys.exit(f"--verify {name}: no {reference} to compare with (python book/build.py --record {name})")
    ref = nbformat.read(reference, as_version=4)
    parameters = rec.executed_parameters(ref)
    parameters.update((rec.record_of(ref) or {}).get("parameters", {}).get("injected") or {})
    if not against:
        status = rec.staleness(name, record_dir=RECORD)
        if status.state == "stale":
            print(f"warning: the record is stale ({'; '.join(status.reasons)}): the rerun executes the current "
                  "source", flush=True)
    scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix=f"verify-{name}-"))
    results = scratch / "results"
    if results.exists() and any(results.iterdir()):
        sys.exit(f"--verify: {results} is not empty; the rerun must start from a fresh results folder")
    parameters["results_dir"] = str(results)
    meta = rec.record_of(ref) or {}
    print(f"verify {name}: re-executing with {parameters} (the reference took "
          f"{_clock(meta.get('wall_seconds') or ref.metadata.get('papermill', {}).get('duration'))})", flush=True)
    out = scratch / f"{name}.ipynb"
    seconds = execute(name, out, parameters)
    rows = compare_glued(glued_values(reference), glued_values(out))
    print(f"re-executed in {_clock(seconds)} into {out}\n")
    print(format_table(rows))
    return 0 if all(r.ok for r in rows) else 1


def _names(values: list[str] | None) -> list[str]:
    if not values:
        return []
    names = BOOK_NOTEBOOKS if "all" in values else values
    unknown = [n for n in names if not (NOTEBOOKS / f"{n}.md").is_file()]
    if unknown:
        sys.exit(f"no notebooks/<name>.md for {unknown}; chapters: {', '.join(BOOK_NOTEBOOKS)}")
    return list(names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="passed to every notebook as the `preset` parameter; "
                        "executes into notebooks/_executed/ (never into record/)")
    parser.add_argument("--only", nargs="*", default=None, help="execute only these notebooks")
    parser.add_argument("--golden", action="store_true", help="write smoke-preset golden copies for nbval")
    parser.add_argument("--no-book", action="store_true", help="execute notebooks but do not build the HTML")
    parser.add_argument("--from-golden", action="store_true",
                        help="build the book from the smoke-preset golden copies in tests/golden/ without executing "
                             "anything (they must be fresh: the test suite checks that and re-executes them)")
    parser.add_argument("--rerun", nargs="+", metavar="NAME", help="re-execute at the defaults into record/ "
                        "(NAME or all), then build")
    parser.add_argument("--record", nargs="+", metavar="NAME", help="execute at the defaults into record/ "
                        "(NAME or all); no book")
    parser.add_argument("--plan", action="store_true", help="print what the build would execute, then stop")
    parser.add_argument("--verify", metavar="NAME", help="re-execute NAME into a fresh results folder and compare "
                        "its glued values with the record's")
    parser.add_argument("--against", type=Path, help="--verify: the executed notebook to compare with "
                        "(default record/NAME.ipynb), e.g. tests/golden/NAME.ipynb")
    parser.add_argument("--scratch", type=Path, help="--verify: the folder for the rerun (default: a new temp dir)")
    args = parser.parse_args(argv)

    # Notebooks run with cwd notebooks/: make the data location absolute. Default: <repo>/data/mnist.
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ.get("MNIST_DATA_DIR") or ROOT / "data" / "mnist").resolve())

    if args.verify:
        check_tools(book=False, execute=True)
        sys.exit(verify(_names([args.verify])[0], against=args.against, scratch=args.scratch))

    smoke_mode = args.preset is not None or args.from_golden or args.golden
    forced = set(_names(args.rerun) + _names(args.record) + ([] if smoke_mode else _names(args.only)))
    book = not (args.golden or args.no_book or args.record or args.plan)
    will_execute = not args.from_golden and not args.plan
    check_tools(book=book, execute=will_execute)

    if args.golden:
        for name in rec.execution_order(_names(args.only) or BOOK_NOTEBOOKS, book=BOOK_NOTEBOOKS):
            seconds = execute(name, GOLDEN / f"{name}.ipynb", {"preset": "smoke"})
            print(f"executed {name} in {seconds:.1f} s", flush=True)
        return

    if args.from_golden:
        missing = [n for n in BOOK_NOTEBOOKS if not (GOLDEN / f"{n}.ipynb").is_file()]
        if missing:
            sys.exit(f"no golden copy for {missing}: python book/build.py --golden --only {' '.join(missing)}")
        write_pages({n: GOLDEN / f"{n}.ipynb" for n in BOOK_NOTEBOOKS})
        print(f"wrote {len(BOOK_NOTEBOOKS)} smoke pages from the golden copies into {EXECUTED}", flush=True)
        if book:
            build_book(smoke=True)
        return

    if args.preset is not None:
        names = rec.execution_order(_names(args.only) if args.only is not None else BOOK_NOTEBOOKS,
                                    book=BOOK_NOTEBOOKS)
        parameters = {"preset": args.preset}

        def action(name):
            return execute(name, EXECUTED / f"{name}.ipynb", parameters)

        run_with_progress(names, {}, action)
        missing = [n for n in BOOK_NOTEBOOKS if not (EXECUTED / f"{n}.ipynb").is_file()]
        if book and missing:
            sys.exit(f"not executed yet: {missing}; run without --only first")
        write_pages({n: EXECUTED / f"{n}.ipynb" for n in BOOK_NOTEBOOKS})
        if book:
            build_book(smoke=args.preset == "smoke")
        return

    # The record: execute what is missing, stale or forced; then the book from record/.
    names = BOOK_NOTEBOOKS if not args.record else _names(args.record)
    todo, statuses = plan(names, forced)
    if args.plan:
        return
    if args.record:
        todo = rec.execution_order(list(forced), book=BOOK_NOTEBOOKS)
    estimates = {s.name: s.wall_seconds for s in statuses}
    run_with_progress(todo, estimates, lambda name: record_chapter(name))
    if not book:
        return
    statuses = {n: rec.staleness(n, record_dir=RECORD) for n in BOOK_NOTEBOOKS}
    write_pages({n: RECORD / f"{n}.ipynb" for n in BOOK_NOTEBOOKS}, statuses)
    build_book(smoke=False)


if __name__ == "__main__":
    main()
