"""Build the HTML book from the paper of record (``record/``), executing only what is asked for.

    python book/build.py                      # the book from record/; executes nothing: a chapter whose record
                                              # is missing (or stale: code cells or parameters cell changed) is
                                              # shown from its smoke copy in tests/golden/ (or its stale record)
                                              # with a banner naming the command that records it
    python book/build.py --plan               # one line per chapter: state, estimated time (cost model, at the
                                              # reference speed) against its budget, library commits since its
                                              # record; then stop (--calibrate: also at this machine's speed now;
                                              # --verbose: list the commits)
    python book/build.py --rerun NAME|all     # re-execute these chapters at their defaults into record/, then build
    python book/build.py --record NAME|all    # execute at the defaults into record/ only (no book)
    python book/build.py --verify NAME        # re-execute NAME into a fresh results folder and compare every glued
                                              # value with record/NAME.ipynb by class (exact, numerical,
                                              # statistical, conclusion; book/verify.py): exit 1 when a
                                              # conclusion or exact value (or, on the record's numerical
                                              # path, a numerical one) disagrees
    python book/build.py --verify NAME --compare OLD.ipynb   # the same table for an executed notebook (e.g. an
                                              # earlier record) against record/NAME.ipynb; executes nothing
    python book/build.py --preset smoke       # every notebook with preset="smoke" (fast) into notebooks/_executed/,
                                              # each once, two at a time in dependency order, sharing one
                                              # temporary results folder; then the smoke book (smoke banners)
    python book/build.py --only core_checks   # with --preset: execute one notebook (others executed before);
                                              # without: the same as --rerun core_checks
    python book/build.py --golden             # write tests/golden/<name>.ipynb: the smoke executions (as
                                              # --preset smoke) that the tests compare every glued value with
    python book/build.py --from-executed      # the smoke book from the test session's smoke executions in
                                              # notebooks/_executed/ (no execution; what CI does after the tests)
    python book/build.py --from-golden        # the smoke book from tests/golden/ (no execution)
    python book/build.py --no-book            # execute only

Notebooks are Jupytext MyST markdown files in ``notebooks/``. papermill cannot read them, so each is converted
with jupytext and executed with papermill (its ``parameters`` cell overridden). A record execution writes
``record/<name>.ipynb`` with lean outputs and its provenance in the metadata (``book/record.py``), including the
machine's calibrations taken just before and just after (``hessian_book.calibration``; a record's time at the
reference speed uses their mean factor; ``--verify`` calibrates the same way). Every build
then writes the pages the book shows into ``notebooks/_executed/`` (lean outputs, a provenance note or a smoke
banner at the top), generates the Reproducibility page, and renders them with Jupyter Book 1.x as they are
(``execute_notebooks: off``): building the book never reruns an experiment behind your back.

Every execution runs on the pinned numerical path (``hessian_book.numerics``: ATen AVX2 kernels, MKL's
AVX2 branch (``HESSIAN_NUMERICS=portable``: COMPATIBLE), oneDNN AVX2, OpenBLAS Haswell, fixed thread counts), set in this process's environment before
torch is imported and inherited by the kernels and their worker processes; ``HESSIAN_UNPINNED=1`` runs the CPU's
own path instead, and the provenance records which.
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

from hessian_book.calibration import Calibration, calibrate, combine, from_dict  # noqa: E402

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
    """Convert ``notebooks/<name>.md`` and execute it into ``out_path``; returns the wall time in seconds.

    The kernel inherits this process's environment, pinned here (:mod:`hessian_book.numerics`) unless
    ``HESSIAN_UNPINNED=1``: the notebook imports torch in its first cell, too late to choose a path itself."""
    import jupytext
    import papermill
    from hessian_book.numerics import pin_environment

    pin_environment()

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


def calibrated() -> Calibration:
    """The machine's calibration now (~10 s), printed: taken before and after every record execution and
    ``--verify``."""
    result = calibrate()
    print(f"  {result.summary()}", flush=True)
    return result


def record_chapter(name: str, *, record_dir: Path | None = None, parameters: dict | None = None) -> float:
    """Execute ``name`` at its defaults (plus ``parameters``) into ``record_dir/<name>.ipynb`` (default
    ``record/``) with lean outputs and provenance (with calibrations taken just before and just after); fails
    loudly when the record is no longer lean. Returns the wall time."""
    record_dir = record_dir or RECORD
    parameters = dict(parameters or {})
    calibration = calibrated()
    run = rec.Run.start(name, parameters, _results_dir(name, parameters), calibration=calibration.as_dict())
    with tempfile.TemporaryDirectory() as tmp:
        executed = Path(tmp) / f"{name}.ipynb"
        seconds = execute(name, executed, parameters)
        notebook = nbformat.read(executed, as_version=4)
    run.calibration_after = calibrated().as_dict()
    mean = combine(from_dict(run.calibration), from_dict(run.calibration_after))
    print(f"  {name}: {_clock(seconds)} of wall time, {_clock(mean.to_reference(seconds))} at the reference speed "
          f"(mean factor {mean.speed_factor:.2f} of the calibrations before and after)", flush=True)
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


def estimates(names: list[str]) -> dict[str, "cost.Estimate | str"]:
    """Each chapter's cost-model estimate at its defaults (``book/cost.py``), or why there is none."""
    import cost

    out: dict[str, cost.Estimate | str] = {}
    try:
        units = cost.load_units()
    except (OSError, ValueError, KeyError) as error:
        why = f"no {cost.UNITS_FILE.name}: run benchmarks/bench_cost_units.py" if isinstance(error, OSError) else \
            f"unreadable {cost.UNITS_FILE.name}: {error}"
        return {n: why for n in names}
    for name in names:
        try:
            out[name] = cost.estimate(name, units=units)
        except Exception as error:  # noqa: BLE001 - a plan must print even when one chapter's model fails
            out[name] = f"{error.__class__.__name__}: {error}"
    return out


def plan(names: list[str], forced: set[str], *, record_dir: Path | None = None, verbose: bool = False,
         calibration: Calibration | None = None, estimated: dict | None = None
         ) -> tuple[list[str], list[rec.Status]]:
    """Print one line per chapter (state, estimate at the reference speed and, with ``calibration``, at the speed
    measured now, against its budget; library commits since its record, listed with ``verbose``) and what the
    build will execute, in execution order; return (to execute, statuses)."""
    record_dir = record_dir or RECORD
    statuses = [rec.staleness(n, record_dir=record_dir) for n in names]
    # Only what was asked for executes: a missing or stale record is rendered from its smoke copy or as it stands,
    # with a banner naming the command that records it (record_hint).
    todo = rec.execution_order([s.name for s in statuses if s.name in forced], book=BOOK_NOTEBOOKS)
    estimated = estimates(names) if estimated is None else estimated
    factor = calibration.speed_factor if calibration is not None else None
    print(f"record/: {len(names)} chapters; estimates from the cost model (book/cost.py) at the reference speed"
          + (f"; measured now: {calibration.summary()}" if calibration is not None else
             " (--calibrate: also at this machine's speed now)"), flush=True)
    for s in statuses:
        state = s.state if s.state == "fresh" else f"{s.state} ({'; '.join(s.reasons)})"
        if s.name in forced:
            state += ", forced"
        e = estimated.get(s.name)
        guess = e.text(factor) if hasattr(e, "text") else f"est. unknown ({e})"
        took = f"record {_clock(s.wall_seconds)}" if s.wall_seconds is not None else "no record"
        commits = (f"; {len(s.library_commits)} library commit(s) since its record ({s.commit and s.commit[:10]})"
                   if s.library_commits else "")
        print(f"  {s.name:<20} {state}; {guess}; {took}{commits}", flush=True)
        if verbose:
            for line in s.library_commits:
                print(f"      {line}", flush=True)
    unrecorded = [s for s in statuses if s.needs_execution and s.name not in forced]
    for s in unrecorded:
        shown = "its smoke copy" if s.state == "missing" else "its stale record"
        print(f"  {s.name}: not executed unasked; the book shows {shown} with a banner. "
              f"{record_hint(s.name, estimated.get(s.name))}", flush=True)
    if todo:
        known = [estimated[n].seconds for n in todo if hasattr(estimated.get(n), "seconds")]
        unknown = len(todo) - len(known)
        total = sum(known)
        now = f" ({_clock(total * factor)} at the measured speed)" if factor and known else ""
        print(f"will execute {len(todo)} chapter(s), in this order: {', '.join(todo)}; estimated "
              + (f"{_clock(total)} at the reference speed{now}" if known else "unknown")
              + (f" plus {unknown} chapter(s) of unknown time" if unknown and known else ""), flush=True)
    elif unrecorded:
        print(f"nothing to execute: {len(unrecorded)} chapter(s) without a fresh record are shown as they stand "
              "(--record NAME or --rerun NAME computes them)", flush=True)
    else:
        print("nothing to execute: every record is fresh", flush=True)
    return todo, statuses


def record_hint(name: str, estimate=None) -> str:
    """The command that records ``name`` at its defaults, with the cost model's estimate when there is one."""
    guess = (f" (estimated {_clock(estimate.seconds)} at the reference speed; `--plan --calibrate`: at this "
             "machine's speed now)" if hasattr(estimate, "seconds") else "")
    return f"Record it: `python book/build.py --record {name}`{guess}."


def run_with_progress(todo: list[str], estimates: dict[str, float | None], action) -> None:
    """Call ``action(name)`` for each chapter, printing progress and the remaining estimate (seconds, at the
    speed the caller expects) between them."""
    start = time.perf_counter()
    for i, name in enumerate(todo, 1):
        remaining = [estimates.get(n) for n in todo[i - 1:]]
        left = sum(x for x in remaining if x)
        print(f"[{i}/{len(todo)}] {name}: executing (estimated {_clock(estimates.get(name))}; "
              f"about {_clock(left) if left else 'unknown'} left in all; started {time.strftime('%H:%M:%S')})",
              flush=True)
        seconds = action(name)
        print(f"[{i}/{len(todo)}] {name}: done in {_clock(seconds)}; {_clock(time.perf_counter() - start)} "
              "elapsed", flush=True)


def write_pages(sources: dict[str, Path], statuses: dict[str, rec.Status] | None = None,
                hints: dict[str, str] | None = None) -> None:
    """The pages the book shows: lean copies of ``sources[name]`` in notebooks/_executed/, with the provenance
    note (record) or the smoke banner at the top; ``hints[name]``: how to record a chapter shown without a fresh
    record (:func:`record_hint`)."""
    for name, path in sources.items():
        notebook = nbformat.read(path, as_version=4)
        _, removed = rec.lean(notebook)
        for line in removed:
            print(f"  {name} page: removed {line}", flush=True)
        rec.write_notebook(rec.page(notebook, status=(statuses or {}).get(name), hint=(hints or {}).get(name)),
                           EXECUTED / f"{name}.ipynb")


def record_sources(statuses: dict[str, rec.Status], *, record_dir: Path | None = None
                   ) -> dict[str, Path]:
    """What each chapter's page is rendered from: its record (fresh or stale) or, with no record, its smoke copy
    (``tests/golden/<name>.ipynb``)."""
    record_dir = record_dir or RECORD
    return {n: (GOLDEN if s.state == "missing" else record_dir) / f"{n}.ipynb" for n, s in statuses.items()}


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


def verify(name: str, *, against: Path | None = None, scratch: Path | None = None,
           compare: Path | None = None) -> int:
    """Re-execute ``name`` with the reference's parameters and a fresh results folder; compare every glued value
    with the reference (default ``record/<name>.ipynb``). With ``compare`` (an executed notebook of ``name``, e.g.
    another record) nothing executes: that notebook is compared with the reference as a rerun would be, on the
    numerical path its provenance records. Returns the exit status (0: reproduced)."""
    reference = Path(against) if against else RECORD / f"{name}.ipynb"
    if not reference.is_file():
        sys.exit(f"--verify {name}: no {reference} to compare with (python book/build.py --record {name})")
    ref = nbformat.read(reference, as_version=4)
    parameters = rec.executed_parameters(ref)
    parameters.update((rec.record_of(ref) or {}).get("parameters", {}).get("injected") or {})
    if compare is not None:
        return _compare_executed(name, ref, reference, Path(compare))
    if not against:
        status = rec.staleness(name, record_dir=RECORD)
        if status.state == "stale":
            print(f"warning: the record is stale ({'; '.join(status.reasons)}): the rerun executes the current "
                  "source", flush=True)
    calibration = calibrated()
    scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix=f"verify-{name}-"))
    results = scratch / "results"
    if results.exists() and any(results.iterdir()):
        sys.exit(f"--verify: {results} is not empty; the rerun must start from a fresh results folder")
    parameters["results_dir"] = str(results)
    meta = rec.record_of(ref) or {}
    print(f"verify {name}: re-executing with {parameters} (the reference took "
          f"{_clock(meta.get('wall_seconds') or ref.metadata.get('papermill', {}).get('duration'))})", flush=True)
    out = scratch / f"{name}.ipynb"
    seconds = execute(name, out, parameters)  # pins this process's environment, which the kernel inherits
    calibration = combine(calibration, calibrated())
    print(f"re-executed in {_clock(seconds)} ({_clock(calibration.to_reference(seconds))} at the reference speed, "
          f"mean factor {calibration.speed_factor:.2f} of the calibrations before and after) into {out}\n")
    # The rerun's path: this process's, whose environment and machine the kernel shares.
    return _classed_table(name, reference, out, (meta.get("numerical_path"), rec.current_numerical_path()),
                          ("record", "rerun "))


def _compare_executed(name: str, ref, reference: Path, other: Path) -> int:
    """:func:`verify` without executing: ``other`` (an executed notebook) against ``ref`` (read from
    ``reference``), each on the numerical path its own provenance records."""
    if not other.is_file():
        sys.exit(f"--compare: no {other}")
    paths = tuple((rec.record_of(nb) or {}).get("numerical_path") for nb in (ref, nbformat.read(other, as_version=4)))
    return _classed_table(name, reference, other, paths, (f"reference ({reference})", f"compared ({other})"))


def _classed_table(name: str, reference: Path, other: Path, paths: tuple, labels: tuple[str, str]) -> int:
    """Print ``book/verify.py``'s classed table of ``other``'s glued values against ``reference``'s, numerical
    values judged bitwise when ``paths`` (their numerical paths) match; returns the exit status (0: reproduced)."""
    from hessian_book.numerics import describe_path, path_differences
    from verify import chapter_classes, compare_glued, format_table, reproduced

    differences = path_differences(*paths)
    path_note = (f"{labels[0]}: {describe_path(paths[0])}\n{labels[1]}: {describe_path(paths[1])}\n"
                 + ("same numerical path: numerical values compared bitwise (or to rounding)" if not differences
                    else "numerical paths differ (" + "; ".join(differences) + "): computed values judged "
                    "against the uncertainty the chapter measures (statistical), or shown, not judged"))
    rows = compare_glued(glued_values(reference), glued_values(other), classes=chapter_classes(name),
                         same_path=not differences)
    print(format_table(rows, path_note=path_note))
    return 0 if reproduced(rows) else 1


# ---------------------------------------------------------------------------------------------------------------
# Smoke executions: every chapter at preset="smoke", each executed once, two at a time in dependency order, into
# ONE results folder (so the Fiedler and mechanistic chapters read the MNIST, grokking and depth smoke runs instead
# of training them again); compared with the committed golden copies; the smoke book built from them.

CHECKED_TAG = "nbval-check-output"  # cells whose outputs are compared as nbval compares them
# nbval's output keys that are never compared (its defaults without --nbdime, as under --nbval-lax)
NBVAL_SKIP = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
              "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


# hessian_book.training.STEP_BACKEND_ENV (named here without importing torch before the path is pinned)
STEP_BACKEND_ENV = "HESSIAN_STEP_BACKEND"
SMOKE_STEP_BACKEND = "eager"  # as tests/conftest.py sets it for the test session


def execute_smoke(name: str, out_path: Path, results_dir: Path) -> float:
    """Execute ``name`` at ``preset="smoke"`` into ``out_path`` with ``results_dir`` as its results folder; returns
    the wall time. Callers share one ``results_dir`` over the chapters, executed in :func:`record.execution_order`.

    Training steps run with the step backend of ``HESSIAN_STEP_BACKEND``, ``"eager"`` unless set (as in the test
    session): compiled and eager steps round differently, so the golden copies and the test session's executions
    must use the same one to take the same numerical course. The notebook's ``hessian_record`` metadata says what
    ran: ``name``, the injected parameters, the numerical path of this process (which the kernel inherits;
    :mod:`hessian_book.numerics`), the step backend, the wall time: what :func:`compare_smoke` and
    ``--verify NAME --against`` read."""
    os.environ.setdefault(STEP_BACKEND_ENV, SMOKE_STEP_BACKEND)
    parameters = {"preset": "smoke", "results_dir": str(Path(results_dir).resolve())}
    seconds = execute(name, out_path, parameters)
    notebook = nbformat.read(out_path, as_version=4)
    notebook.metadata["hessian_record"] = {"name": name, "parameters": {"injected": parameters},
                                           "numerical_path": rec.current_numerical_path(),
                                           "step_backend": os.environ[STEP_BACKEND_ENV], "wall_seconds": seconds}
    rec.write_notebook(notebook, out_path)
    return seconds


SMOKE_WORKERS = 2  # smoke executions at once: the machine's two cores (each kernel computes on one thread)


def _smoke_task(name: str, out_path: str, results_dir: str) -> tuple[float | None, str]:
    """:func:`execute_smoke` in a worker process: ``(seconds, "")``, or ``(None, the error)`` (an exception
    raised by papermill does not always survive pickling back to the parent)."""
    import traceback

    try:
        return execute_smoke(name, Path(out_path), Path(results_dir)), ""
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        return None, traceback.format_exc()


def _smoke_priorities(names: list[str]) -> dict[str, float]:
    """Each chapter's longest chain of smoke executions, itself and the chapters that read it, in seconds of its
    golden copy's wall time (0 where there is none): the scheduler starts the longest chain first."""
    own: dict[str, float] = {}
    for name in names:
        try:
            own[name] = float(nbformat.read(GOLDEN / f"{name}.ipynb", as_version=4)
                              .metadata["hessian_record"]["wall_seconds"])
        except (OSError, KeyError, TypeError, ValueError):
            own[name] = 0.0
    chain: dict[str, float] = {}
    for name in reversed(rec.execution_order(names, book=BOOK_NOTEBOOKS)):
        readers = [n for n in names if name in rec.DEPENDS_ON.get(n, ())]
        chain[name] = own[name] + max((chain[n] for n in readers), default=0.0)
    return chain


class _InProcess:
    """A pool of one that runs each task in this process as it is submitted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future: Future = Future()
        future.set_result(fn(*args))
        return future


def dependency_failed(name: str, errors: dict[str, str]) -> str | None:
    """The error of ``name`` when a chapter it reads (:data:`record.DEPENDS_ON`) has an entry in ``errors``: it is
    then not executed (``None`` when none has)."""
    failed = [d for d in rec.DEPENDS_ON.get(name, ()) if d in errors]
    return f"not executed: the smoke execution of {', '.join(failed)} failed" if failed else None


def execute_smoke_parallel(names: list[str], out_dir: Path, results_dir: Path, *, workers: int | None = None,
                           task=None) -> tuple[dict[str, float], dict[str, str]]:
    """:func:`execute_smoke` of each of ``names`` into ``out_dir/<name>.ipynb``, sharing ``results_dir``, up to
    ``workers`` at a time: a chapter starts once the chapters it reads (:data:`record.DEPENDS_ON`, among
    ``names``) have finished, the longest remaining chain first. Returns the wall times and, for each chapter that
    failed or was not executed because a chapter it reads failed, the error. ``workers`` defaults to
    :data:`SMOKE_WORKERS`; with 1 each chapter executes in this process. ``task(name, out_path, results_dir)``
    (default :func:`_smoke_task`; a module-level function, as it is sent to spawned processes) returns
    ``(seconds, error)``.

    The smoke kernels compute on the pinned path (one thread each) and never read what a concurrent execution
    writes, so their results do not depend on what runs beside them; only their wall times do."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from hessian_book.numerics import pin_environment

    workers = SMOKE_WORKERS if workers is None else workers
    task = task or _smoke_task
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    pin_environment()  # before the workers start: they and their kernels inherit the path
    os.environ.setdefault(STEP_BACKEND_ENV, SMOKE_STEP_BACKEND)
    names = rec.execution_order(names, book=BOOK_NOTEBOOKS)
    priority = _smoke_priorities(names)
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    pending = sorted(names, key=lambda n: -priority[n])
    start = time.perf_counter()
    pool = (_InProcess() if workers == 1 else
            ProcessPoolExecutor(max_workers=min(workers, len(names)) or 1,
                                mp_context=multiprocessing.get_context("spawn")))
    with pool:
        running: dict = {}
        while pending or running:
            for name in list(pending):
                deps = [d for d in rec.DEPENDS_ON.get(name, ()) if d in names]
                skipped = dependency_failed(name, errors)
                if skipped:
                    errors[name] = skipped
                    pending.remove(name)
                elif all(d in seconds for d in deps) and len(running) < workers:
                    print(f"[smoke] {name}: executing (started {time.strftime('%H:%M:%S')})", flush=True)
                    running[pool.submit(task, name, str(Path(out_dir) / f"{name}.ipynb"),
                                        str(results_dir))] = name
                    pending.remove(name)
            if not running:
                if pending:  # cannot happen without a cycle in DEPENDS_ON
                    raise RuntimeError(f"no smoke execution can start: {pending}")
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                value, error = future.result()
                if error:
                    errors[name] = error
                    print(f"[smoke] {name}: FAILED", flush=True)
                else:
                    seconds[name] = value
                    print(f"[smoke] {name}: done in {_clock(value)} (load {os.getloadavg()[0]:.1f}); "
                          f"{_clock(time.perf_counter() - start)} elapsed", flush=True)
    return seconds, errors


def execute_smoke_all(names: list[str], out_dir: Path, results_dir: Path | None = None, *,
                      workers: int | None = None) -> dict[str, float]:
    """:func:`execute_smoke_parallel` of ``names`` into ``out_dir/<name>.ipynb``, sharing ``results_dir``
    (default: a new temporary folder); returns the wall times, or raises on the first failed chapter."""
    results_dir = Path(results_dir) if results_dir else Path(tempfile.mkdtemp(prefix="smoke-results-"))
    print(f"smoke executions share the results folder {results_dir}", flush=True)
    seconds, errors = execute_smoke_parallel(names, out_dir, results_dir, workers=workers)
    if errors:
        raise RuntimeError("smoke executions failed:\n" + "\n".join(f"{n}: {e}" for n, e in errors.items()))
    return seconds


def _code_sources(notebook) -> list[str]:
    return [c.source.strip() for c in notebook.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def _nbval_outputs(outputs) -> dict[str, list]:
    """A cell's outputs as nbval compares them: streams coalesced, keys flattened, :data:`NBVAL_SKIP` dropped."""
    import copy

    from nbval.plugin import coalesce_streams, transform_streams_for_comparison

    flat: dict[str, list] = {}
    for output in transform_streams_for_comparison(coalesce_streams(copy.deepcopy(list(outputs)))):
        for key, value in output.items():
            if key in NBVAL_SKIP:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for k, v in items:
                if k not in NBVAL_SKIP:
                    flat.setdefault(k, []).append(v)
    return flat


def compare_smoke(name: str, executed: Path, golden: Path | None = None):
    """Compare a smoke execution with its golden copy (default ``tests/golden/<name>.ipynb``).

    Every glued value by ``book/verify.py``'s :func:`~verify.compare_glued` (the chapter's ``GLUE_CLASSES``;
    numerical values judged to rounding where both copies record the same pinned numerical path and training step
    backend, else only the exact values and conclusions), plus one row per cell tagged ``nbval-check-output``: its outputs must equal
    the golden copy's as nbval (``--nbval-lax``) compares them (an exact row). Returns ``(rows, path_note)``;
    :func:`verify.reproduced` of the rows is the verdict."""
    from glued import glued_values_of
    from hessian_book.numerics import describe_path, path_differences
    from verify import Row, chapter_classes, compare_glued

    golden = Path(golden) if golden else GOLDEN / f"{name}.ipynb"
    reference, rerun = nbformat.read(golden, as_version=4), nbformat.read(executed, as_version=4)
    metas = [rec.record_of(nb) or {} for nb in (reference, rerun)]
    paths = [m.get("numerical_path") for m in metas]
    differences = path_differences(*paths)
    backends = [m.get("step_backend") for m in metas]
    if backends[0] != backends[1]:
        differences.append(f"step backend: {backends[0]} vs {backends[1]}")
    path_note = (f"golden: {describe_path(paths[0])}\nsmoke:  {describe_path(paths[1])}\n"
                 + ("same numerical path: numerical values compared bitwise (or to rounding)" if not differences
                    else "numerical paths differ (" + "; ".join(differences) + "): exact values and conclusions "
                    "compared; numerical ones shown, not judged"))
    rows = compare_glued(glued_values_of(reference), glued_values_of(rerun), classes=chapter_classes(name),
                         same_path=not differences)
    executed_cells = {c.source.strip(): c for c in rerun.cells if c.cell_type == "code"}
    for index, cell in enumerate(reference.cells):
        if CHECKED_TAG not in cell.metadata.get("tags", []):
            continue
        label = f"[{CHECKED_TAG} cell {index}]"
        other = executed_cells.get(cell.source.strip())
        if other is None:
            rows.append(Row(label, cell.source[:40], None, "exact", "MISSING in rerun", True))
            continue
        a, b = _nbval_outputs(cell.outputs), _nbval_outputs(other.outputs)
        rows.append(Row(label, a, b, "exact", "agrees" if a == b else "DIFFERS", True, "as nbval compares"))
    return rows, path_note


def check_smoke_pages(pages: dict[str, Path]) -> list[str]:
    """Why ``pages`` are not one smoke session's executions of the current sources (``[]`` when they are): each
    exists, ran at preset smoke, has the code cells of ``notebooks/<name>.md``, and all share one results
    folder."""
    problems, folders = [], {}
    for name, path in pages.items():
        if not Path(path).is_file():
            problems.append(f"{name}: no {path}")
            continue
        notebook = nbformat.read(path, as_version=4)
        if not rec.is_smoke(notebook):
            problems.append(f"{name}: {path} was not executed at preset smoke")
        if _code_sources(notebook) != _code_sources(rec.read_source(name)):
            problems.append(f"{name}: {path} was executed from other code than notebooks/{name}.md")
        folders[name] = ((rec.record_of(notebook) or {}).get("parameters", {}).get("injected") or {}).get(
            "results_dir")
    if len(set(folders.values())) > 1 or None in folders.values():
        problems.append("the pages were not executed by one smoke session sharing one results folder: "
                        + ", ".join(f"{n}: {f}" for n, f in folders.items()))
    return problems


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
    parser.add_argument("--from-executed", action="store_true",
                        help="build the smoke book from notebooks/_executed/ as the test session executed it (each "
                             "smoke notebook once, sharing one results folder; tests/book/test_smoke.py) without "
                             "executing anything")
    parser.add_argument("--from-golden", action="store_true",
                        help="build the book from the smoke-preset golden copies in tests/golden/ without executing "
                             "anything (they must be fresh: the test suite checks that and re-executes them)")
    parser.add_argument("--rerun", nargs="+", metavar="NAME", help="re-execute at the defaults into record/ "
                        "(NAME or all), then build")
    parser.add_argument("--record", nargs="+", metavar="NAME", help="execute at the defaults into record/ "
                        "(NAME or all); no book")
    parser.add_argument("--plan", action="store_true", help="print one line per chapter (state, estimate, budget, "
                        "library commits since its record) and what the build would execute, then stop")
    parser.add_argument("--calibrate", action="store_true", help="--plan: calibrate first (~10 s) and give the "
                        "estimates at this machine's speed now too")
    parser.add_argument("--verbose", action="store_true", help="--plan: list the library commits since each record")
    parser.add_argument("--verify", metavar="NAME", help="re-execute NAME into a fresh results folder and compare "
                        "its glued values with the record's")
    parser.add_argument("--against", type=Path, help="--verify: the executed notebook to compare with "
                        "(default record/NAME.ipynb), e.g. tests/golden/NAME.ipynb")
    parser.add_argument("--scratch", type=Path, help="--verify: the folder for the rerun (default: a new temp dir)")
    parser.add_argument("--compare", type=Path, help="--verify: compare this executed notebook of NAME (e.g. an "
                        "earlier record: git show REV:record/NAME.ipynb) with the reference instead of re-executing")
    args = parser.parse_args(argv)

    # The pinned numerical path for this process and every kernel and worker it starts, before torch is imported
    # (hessian_book.numerics; HESSIAN_UNPINNED=1 runs the CPU's own path and the provenance says so).
    from hessian_book.numerics import pin_environment

    pin_environment()

    # Notebooks run with cwd notebooks/: make the data location absolute. Default: <repo>/data/mnist.
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ.get("MNIST_DATA_DIR") or ROOT / "data" / "mnist").resolve())

    if args.verify:
        check_tools(book=False, execute=True)
        sys.exit(verify(_names([args.verify])[0], against=args.against, scratch=args.scratch,
                        compare=args.compare))

    smoke_mode = args.preset is not None or args.from_golden or args.golden or args.from_executed
    forced = set(_names(args.rerun) + _names(args.record) + ([] if smoke_mode else _names(args.only)))
    book = not (args.golden or args.no_book or args.record or args.plan)
    will_execute = not args.from_golden and not args.from_executed and not args.plan
    check_tools(book=book, execute=will_execute)

    if args.golden:  # as the test session executes them: in dependency order, sharing one results folder
        execute_smoke_all(_names(args.only) or BOOK_NOTEBOOKS, GOLDEN)
        return

    if args.from_executed:
        pages = {n: EXECUTED / f"{n}.ipynb" for n in BOOK_NOTEBOOKS}
        problems = check_smoke_pages(pages)
        if problems:
            sys.exit("--from-executed: run the README's test command first (it executes every smoke notebook "
                     "into notebooks/_executed/):\n  " + "\n  ".join(problems))
        write_pages(pages)
        print(f"wrote {len(pages)} smoke pages from the test session's executions into {EXECUTED}", flush=True)
        if book:
            build_book(smoke=True)
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
        if args.preset == "smoke":  # one shared results folder, as the test session executes them
            execute_smoke_all(names, EXECUTED)
        else:
            parameters = {"preset": args.preset}
            run_with_progress(names, {}, lambda name: execute(name, EXECUTED / f"{name}.ipynb", parameters))
        missing = [n for n in BOOK_NOTEBOOKS if not (EXECUTED / f"{n}.ipynb").is_file()]
        if book and missing:
            sys.exit(f"not executed yet: {missing}; run without --only first")
        write_pages({n: EXECUTED / f"{n}.ipynb" for n in BOOK_NOTEBOOKS})
        if book:
            build_book(smoke=args.preset == "smoke")
        return

    # The record: execute what is missing, stale or forced; then the book from record/.
    names = BOOK_NOTEBOOKS if not args.record else _names(args.record)
    calibration = calibrated() if args.calibrate else None
    estimated = estimates(names)
    todo, statuses = plan(names, forced, verbose=args.verbose, calibration=calibration, estimated=estimated)
    if args.plan:
        return
    if args.record:
        todo = rec.execution_order(list(forced), book=BOOK_NOTEBOOKS)
    if todo and calibration is None:
        calibration = calibrated()  # the remaining-time estimates at the speed of now
    # the cost model's estimate at the speed measured now; the record's wall time where there is no estimate
    expected = {s.name: (estimated[s.name].seconds * calibration.speed_factor
                         if calibration is not None and hasattr(estimated.get(s.name), "seconds")
                         else s.wall_seconds) for s in statuses}
    run_with_progress(todo, expected, lambda name: record_chapter(name))
    if not book:
        return
    statuses = {n: rec.staleness(n, record_dir=RECORD) for n in BOOK_NOTEBOOKS}
    hints = {n: record_hint(n, estimated.get(n)) for n, s in statuses.items() if s.needs_execution}
    write_pages(record_sources(statuses), statuses, hints)
    build_book(smoke=False)
    for name, hint in hints.items():
        shown = "its smoke copy" if statuses[name].state == "missing" else "its stale record"
        print(f"note: {name} has no fresh record; the book shows {shown} with a banner. {hint}", flush=True)


if __name__ == "__main__":
    main()
