"""The paper of record: chapters executed at their defaults into ``record/``, with provenance and lean outputs.

``record/<name>.ipynb`` is the executed notebook of ``notebooks/<name>.md`` at its defaults. Its notebook metadata
``hessian_record`` holds the provenance (see :func:`provenance`): the code commit and whether the tree was dirty,
the date, the machine (cores, CPU, load before and after), package versions, the parameters (injected and the
parameters cell's defaults), the chapter's glued ``results_keys`` and ``timings`` (when it glues them; otherwise
the glued wall times, names with ``seconds``/``minutes``), the total wall time, the machine's calibrations taken
just before and just after the execution (:mod:`hessian_book.calibration`: ms per reference step, GFLOP/s, load;
``calibration`` is ``None`` in records made before calibrations existed, ``calibration_after`` is absent in records
made before it was taken), the numerical path it ran on (:mod:`hessian_book.numerics`: pinned or
not, CPU model and flags, ATen capability, MKL branch, oneDNN ISA, BLAS libraries, threads, torch build), the disk
use of the results it wrote, and the hashes of the source's code cells that decide whether the record is stale
(:func:`staleness`).

Chapters can expose, through ``hessian_book.glue.glue_value``:

- ``timings``: ``{phase: seconds}`` of this execution (recorded as the chapter's wall time per phase);
- ``results_keys``: ``{what: ResultStore key}`` of the stored results the page reads (recorded so that a reader
  can find them in ``results/``).

This module only reads and writes notebooks (nbformat, jupytext); executing them is ``book/build.py``'s job.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
RECORD = ROOT / "record"
LIBRARY = ("hessian_core", "hessian_book")  # library code: a change since a record is reported, not re-executed

# Book order. mechanistic_modadd joins right after grokking_modadd once its source exists.
_BOOK_ORDER = ["core_checks", "mnist_lenet", "grokking_modadd", "mechanistic_modadd", "fiedler_lenet",
               "mlp_depth_modadd"]
# Execution dependencies: a chapter reads the stored runs of these, so it executes after them.
DEPENDS_ON = {
    "fiedler_lenet": ("mnist_lenet", "grokking_modadd"),
    "mechanistic_modadd": ("grokking_modadd", "mlp_depth_modadd"),
}
# The project's budgets (issue 18): wall time at the defaults on the 2-core machine, in minutes at the reference
# speed of hessian_book.calibration (12 ms per step of the grokking transformer). The whole book: 100 minutes.
GOAL_MINUTES = {"core_checks": 3, "mnist_lenet": 15, "grokking_modadd": 30, "mechanistic_modadd": 15,
                "fiedler_lenet": 15, "mlp_depth_modadd": 20}
BOOK_GOAL_MINUTES = 100

MAX_FILE_BYTES = 10 * 2**20     # one record notebook
MAX_RECORD_BYTES = 50 * 2**20   # the whole record/ folder
LARGE_OUTPUT_BYTES = 2 * 2**20  # one output (a figure, an animation): reported as large

PACKAGES = ("hessian-core", "torch", "numpy", "scipy", "matplotlib", "pandas", "seaborn", "distributed",
            "jupyter-book", "myst-nb", "sphinx", "papermill", "jupytext", "nbformat", "ipykernel")

PROVENANCE_TAG = "hessian-record-provenance"  # the markdown cell build.py puts at the top of a page
TIME_TOKENS = {"seconds", "minutes", "hours", "time", "timings", "duration"}


def book_chapters(notebooks: Path = NOTEBOOKS) -> list[str]:
    """The book's chapters in reading order: every entry of the book order whose ``notebooks/<name>.md`` exists
    (so a chapter still being written, e.g. mechanistic_modadd, is tolerated when absent)."""
    return [name for name in _BOOK_ORDER if (notebooks / f"{name}.md").is_file()]


def execution_order(names: list[str], *, book: list[str] | None = None) -> list[str]:
    """``names`` ordered so that each comes after the chapters it depends on (:data:`DEPENDS_ON`) among
    ``names``; otherwise in book order. Dependencies that are not in ``names`` impose nothing."""
    book = book if book is not None else _BOOK_ORDER
    rank = {n: i for i, n in enumerate(book)}
    pending = sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))
    ordered: list[str] = []
    while pending:
        for name in pending:
            if all(dep in ordered or dep not in pending for dep in DEPENDS_ON.get(name, ())):
                ordered.append(name)
                pending.remove(name)
                break
        else:  # a cycle: cannot happen with DEPENDS_ON as written
            raise ValueError(f"circular dependencies among {pending}")
    return ordered


# ---------------------------------------------------------------------------------------------------------------
# Source hashes: what makes a record stale


def _cell_hash(sources: list[str]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.strip().encode())
        digest.update(b"\0")
    return digest.hexdigest()


def source_hashes(notebook) -> dict[str, str]:
    """``{"code": ..., "parameters": ...}``: sha256 of the code cells (in order; stripped; papermill's injected
    cell excluded) and of the cell tagged ``parameters``. Prose (markdown cells) does not enter either."""
    code = [c.source for c in notebook.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    parameters = [c.source for c in notebook.cells
                  if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    return {"code": _cell_hash(code), "parameters": _cell_hash(parameters)}


def read_source(name: str, notebooks: Path = NOTEBOOKS):
    import jupytext

    return jupytext.read(notebooks / f"{name}.md")


def parameter_defaults(notebook) -> dict[str, Any]:
    """The values the ``parameters`` cell assigns (executed on its own: it holds literals only)."""
    cells = [c for c in notebook.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    values: dict[str, Any] = {}
    if cells:
        exec(cells[0].source, {}, values)  # noqa: S102 - the project's own parameters cell
    return {k: v for k, v in values.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------------------------
# Provenance


def _git(*args: str, cwd: Path = ROOT) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def code_state(name: str, *, root: Path = ROOT) -> dict[str, Any]:
    """The commit the code is at and whether the chapter's code (library + its source) has uncommitted changes."""
    paths = [*LIBRARY, f"notebooks/{name}.md"]
    try:
        porcelain = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=root, capture_output=True,
                                   text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        porcelain = ""
    dirty = [line[3:] for line in porcelain.splitlines() if line.strip()]
    return {"commit": _git("rev-parse", "HEAD", cwd=root) or None, "dirty": bool(dirty), "dirty_files": dirty}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "memory_gb": memory_gb,
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def disk_usage(path: Path | None) -> dict[str, int]:
    """``{"bytes": ..., "files": ...}`` under ``path`` (0 when it does not exist or is None)."""
    total = files = 0
    if path is None:
        return {"bytes": 0, "files": 0}
    for folder, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(folder, n)).st_size
                files += 1
            except OSError:
                pass
    return {"bytes": total, "files": files}


def is_time_like(name: str) -> bool:
    """A glued name that holds a wall time (``seconds_train``, ``minutes_total``, ``page_seconds``, ``timings``)."""
    return bool(TIME_TOKENS & set(name.lower().split("_")))


def glued_timings(glued: dict[str, Any]) -> dict[str, Any]:
    """The chapter's wall time per phase: its glued ``timings`` when it glues one, else every glued time-like
    number (seconds or minutes by their names)."""
    if isinstance(glued.get("timings"), dict):
        return dict(glued["timings"])
    return {k: v for k, v in glued.items() if is_time_like(k) and isinstance(v, (int, float))
            and not isinstance(v, bool)}


@dataclass
class Run:
    """What :func:`provenance` needs to know about one execution, gathered before and after it."""

    name: str
    injected: dict[str, Any]
    results_dir: Path | None
    started: str = ""
    load_before: list[float] = field(default_factory=list)
    disk_before: dict[str, int] = field(default_factory=dict)
    code: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # hessian_book.calibration.Calibration.as_dict(), taken just before
    calibration_after: dict[str, Any] | None = None  # the same, taken just after (set by the caller)
    numerical_path: dict[str, Any] | None = None  # hessian_book.numerics.numerical_path() of the executing env

    @classmethod
    def start(cls, name: str, injected: dict[str, Any], results_dir: Path | None, *,
              calibration: dict[str, Any] | None = None,
              numerical_path: dict[str, Any] | None = None) -> "Run":
        """``numerical_path`` defaults to this process's (:func:`current_numerical_path`): the kernel that
        executes the chapter inherits this process's environment on this machine, so it runs the same path."""
        results_dir = Path(results_dir) if results_dir is not None else None
        numerical_path = dict(numerical_path) if numerical_path is not None else current_numerical_path()
        return cls(name=name, injected=dict(injected), results_dir=results_dir,
                   started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   load_before=load_average(), disk_before=disk_usage(results_dir), code=code_state(name),
                   calibration=dict(calibration) if calibration else None, numerical_path=numerical_path)


def current_numerical_path() -> dict[str, Any]:
    """:func:`hessian_book.numerics.numerical_path` of this process (pinned or not, CPU and flags, ATen
    capability, MKL branch, oneDNN ISA, BLAS libraries, threads, torch build)."""
    from hessian_book.numerics import numerical_path

    return numerical_path()


def provenance(run: Run, notebook, source, wall_seconds: float) -> dict[str, Any]:
    """The ``hessian_record`` metadata of an executed notebook (``source``: the Jupytext source it ran)."""
    from glued import glued_values_of  # book/glued.py

    glued = glued_values_of(notebook)
    defaults = parameter_defaults(source)
    disk_after = disk_usage(run.results_dir)
    return {
        "name": run.name,
        "code_commit": run.code.get("commit"),
        "dirty": run.code.get("dirty"),
        "dirty_files": run.code.get("dirty_files", []),
        "date": run.started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_before": run.load_before, "load_after": load_average()},
        "packages": package_versions(),
        "parameters": {"injected": run.injected, "defaults": _jsonable(defaults),
                       "effective": _jsonable({**defaults, **run.injected})},
        "source_hash": source_hashes(source),
        "results_keys": _jsonable(glued.get("results_keys")),
        "timings": _jsonable(glued_timings(glued)),
        "wall_seconds": round(wall_seconds, 1),
        # the machine's speed just before and just after (hessian_book.calibration); None: not calibrated
        "calibration": _jsonable(run.calibration) if run.calibration else None,
        "calibration_after": _jsonable(run.calibration_after) if run.calibration_after else None,
        # the numerical path the chapter ran on (hessian_book.numerics); None in records made before it was kept
        "numerical_path": _jsonable(run.numerical_path) if run.numerical_path else None,
        "results_dir": str(run.results_dir) if run.results_dir is not None else None,
        "results_written": {"bytes": disk_after["bytes"] - run.disk_before.get("bytes", 0),
                            "files": disk_after["files"] - run.disk_before.get("files", 0)},
        "n_glued": len(glued),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def record_of(notebook) -> dict[str, Any] | None:
    return notebook.metadata.get("hessian_record")


# ---------------------------------------------------------------------------------------------------------------
# Lean outputs

_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_DROP_WHEN_PNG = ("image/svg+xml", "application/pdf", "image/jpeg")


def _last_carriage_segment(text: str) -> str:
    # a progress bar redraws itself with '\r': keep what the line finally showed
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def lean(notebook) -> tuple[Any, list[str]]:
    """A copy of ``notebook`` with lean outputs, and the list of what was removed (one line each).

    Removed: stderr streams (warnings, progress bars), widget outputs (tqdm.auto) and the widget state, progress
    bars' intermediate redraws in stdout, other renderings of a figure that has a PNG, per-cell execution
    timestamps. Kept: stdout, PNG/GIF figures, HTML tables, glued values, errors (a traceback must stay visible).
    """
    out = copy.deepcopy(notebook)
    removed: list[str] = []
    out.metadata.pop("widgets", None)
    for index, cell in enumerate(out.cells):
        cell.metadata.pop("execution", None)
        pm = cell.metadata.get("papermill")
        if isinstance(pm, dict):  # keep only the duration (papermill's per-cell timestamps are noise in a diff)
            cell.metadata["papermill"] = {k: pm[k] for k in ("duration", "status", "exception") if k in pm}
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream" and output.get("name") == "stderr":
                removed.append(f"cell {index}: stderr ({len(output.get('text', ''))} characters): "
                               + output.get("text", "").strip().splitlines()[0][:120] if output.get("text", "").strip()
                               else f"cell {index}: empty stderr")
                continue
            if kind == "stream" and "\r" in output.get("text", ""):
                output["text"] = _last_carriage_segment(output["text"])
            if kind in ("display_data", "execute_result"):
                data = output.get("data", {})
                if _WIDGET_MIME in data:
                    removed.append(f"cell {index}: widget output (progress bar)")
                    continue
                if "image/png" in data:
                    for mime in _DROP_WHEN_PNG:
                        if data.pop(mime, None) is not None:
                            removed.append(f"cell {index}: {mime} rendering beside a PNG")
            kept.append(output)
        cell["outputs"] = kept
    return out, removed


def output_sizes(notebook) -> list[tuple[int, str, int]]:
    """``[(cell index, mime type, bytes)]`` of the outputs' data, largest first."""
    sizes = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            for mime, value in output.get("data", {}).items():
                sizes.append((index, mime, len(value if isinstance(value, str) else json.dumps(value))))
    return sorted(sizes, key=lambda row: -row[2])


class RecordTooLarge(RuntimeError):
    """A record notebook or the record folder exceeds its size limit."""


def check_sizes(folder: Path = RECORD, *, max_file: int = MAX_FILE_BYTES, max_total: int = MAX_RECORD_BYTES
                ) -> list[str]:
    """Raise :class:`RecordTooLarge` naming every file over ``max_file`` and the total if over ``max_total``;
    returns warnings for single outputs over :data:`LARGE_OUTPUT_BYTES`."""
    problems, warnings = [], []
    total = 0
    for path in sorted(Path(folder).glob("*.ipynb")):
        size = path.stat().st_size
        total += size
        if size > max_file:
            largest = output_sizes(nbformat.read(path, as_version=4))[:3]
            problems.append(f"{path.name}: {size / 2**20:.1f} MB > {max_file / 2**20:.0f} MB "
                            f"(largest outputs: {largest})")
        else:
            for index, mime, n in output_sizes(nbformat.read(path, as_version=4)):
                if n > LARGE_OUTPUT_BYTES:
                    warnings.append(f"{path.name}: cell {index} {mime} is {n / 2**20:.1f} MB")
    if total > max_total:
        problems.append(f"{folder}: {total / 2**20:.1f} MB in all > {max_total / 2**20:.0f} MB")
    if problems:
        raise RecordTooLarge("the record is not lean:\n  " + "\n  ".join(problems))
    return warnings


# ---------------------------------------------------------------------------------------------------------------
# Staleness


@dataclass
class Status:
    """Where a chapter's record stands against its source and the library."""

    name: str
    state: str                      # "missing", "stale" or "fresh"
    reasons: list[str]
    library_commits: list[str]      # `git log --oneline <record commit>..HEAD -- hessian_core hessian_book`
    wall_seconds: float | None      # the record's total wall time
    commit: str | None = None

    @property
    def needs_execution(self) -> bool:
        return self.state != "fresh"


def library_commits_since(commit: str | None, *, root: Path = ROOT) -> list[str]:
    """One line per commit to the library since ``commit`` (``["<commit> is not in this clone's history"]``
    when git cannot tell)."""
    if not commit:
        return ["the record names no commit"]
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True)
    if known.returncode != 0:
        return [f"{commit[:12]} is not in this clone's history: cannot list the library's changes"]
    log = _git("log", "--oneline", f"{commit}..HEAD", "--", *LIBRARY, cwd=root)
    return [line for line in log.splitlines() if line]


def staleness(name: str, *, record_dir: Path = RECORD, notebooks: Path = NOTEBOOKS, root: Path = ROOT) -> Status:
    """Compare ``record_dir/<name>.ipynb`` with ``notebooks/<name>.md``: missing, stale (its code cells or its
    parameters cell changed, or it was not executed at the defaults), or fresh. Library changes since the
    record's commit are listed, never counted as staleness."""
    path = record_dir / f"{name}.ipynb"
    if not path.is_file():
        return Status(name, "missing", ["no record"], [], None)
    meta = record_of(nbformat.read(path, as_version=4))
    if not meta:
        return Status(name, "stale", ["the record has no provenance (hessian_record metadata)"], [], None)
    now = source_hashes(read_source(name, notebooks))
    then = meta.get("source_hash", {})
    reasons = []
    if now["parameters"] != then.get("parameters"):
        reasons.append("its parameters cell changed")
    if now["code"] != then.get("code"):
        if now["parameters"] == then.get("parameters"):
            reasons.append("its code cells changed")
        else:
            reasons.append("its code cells changed (the parameters cell is one)")
    injected = meta.get("parameters", {}).get("injected") or {}
    if injected:
        reasons.append(f"it was executed with parameters {injected}, not at the defaults")
    commit = meta.get("code_commit")
    return Status(name, "stale" if reasons else "fresh", reasons, library_commits_since(commit, root=root),
                  meta.get("wall_seconds"), commit)


# ---------------------------------------------------------------------------------------------------------------
# The page: a provenance cell at the top, or a smoke banner


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _insert_after_title(notebook, cell) -> None:
    cells = notebook.cells
    position = 1 if cells and cells[0].cell_type == "markdown" and cells[0].source.lstrip().startswith("# ") else 0
    cells.insert(position, cell)


def provenance_markdown(meta: dict[str, Any], status: Status | None = None) -> str:
    """The lean note shown at the top of a recorded chapter's page."""
    m = meta.get("machine", {})
    load = (f"load {m['load_before'][0]:.2f} before and {m['load_after'][0]:.2f} after"
            if m.get("load_before") and m.get("load_after") else "load not recorded")
    commit = (meta.get("code_commit") or "unknown")[:10]
    dirty = " with uncommitted changes" if meta.get("dirty") else ""
    date = (meta.get("date") or "")[:16].replace("T", " ")
    text = (f"Executed at the chapter's defaults on {date} UTC from commit `{commit}`{dirty}, on {m.get('cores')} "
            f"cores ({m.get('cpu')}), {load}, in {_minutes(meta.get('wall_seconds'))}. Parameters, package "
            f"versions, wall time per phase and how to verify these numbers: "
            f"{{ref}}`reproducibility <repro-{meta.get('name')}>`.")
    from hessian_book.numerics import describe_path

    text += f" Numerics: {describe_path(meta.get('numerical_path'))}."
    if status is not None and status.library_commits:
        text += (f" The library has changed since ({len(status.library_commits)} commit(s)); this page shows the "
                 f"record as executed.")
    if status is not None and status.state == "stale":
        text += " This record is stale: " + "; ".join(status.reasons) + "."
    return f":::{{admonition}} The record\n:class: note\n{text}\n:::\n"


SMOKE_BANNER = (":::{admonition} Smoke run\n:class: warning\n"
                "This page was executed at the smoke preset: tiny sizes, for CI. Its numbers test the machinery; "
                "they are not the chapter's results, and it renders no verdict. The book of record is built "
                "from `record/` with `python book/build.py`.\n:::\n")


def executed_parameters(notebook) -> dict[str, Any]:
    return dict(notebook.metadata.get("papermill", {}).get("parameters") or {})


def is_smoke(notebook) -> bool:
    params = executed_parameters(notebook)
    meta = record_of(notebook) or {}
    params.update(meta.get("parameters", {}).get("injected") or {})
    return params.get("preset") == "smoke"


def unrecorded_banner(hint: str) -> str:
    """The banner of a chapter the book shows from its smoke copy because it has no record at its defaults."""
    return (":::{admonition} Not recorded yet: a smoke run\n:class: warning\n"
            "This chapter has no record at its defaults, so this page shows its smoke run: tiny sizes, for CI. Its "
            "numbers test the machinery; they are not the chapter's results, and it renders no verdict. The build "
            f"does not compute a chapter unasked. {hint}\n:::\n")


def page(notebook, *, status: Status | None = None, hint: str | None = None):
    """The notebook as the book shows it: lean outputs, and at the top a smoke banner (executed at preset smoke;
    with ``hint``, the banner of a chapter shown from its smoke copy for want of a record) or the provenance note
    (a record; ``hint`` is added when it is stale). Earlier inserted cells are replaced."""
    out, _ = lean(notebook)
    out.cells = [c for c in out.cells if PROVENANCE_TAG not in c.metadata.get("tags", [])]
    meta = record_of(out)
    if is_smoke(out):
        text = unrecorded_banner(hint) if hint else SMOKE_BANNER
    elif meta:
        text = provenance_markdown(meta, status)
        if hint and status is not None and status.state == "stale":
            text = text.replace("\n:::\n", f" {hint}\n:::\n")
    else:
        return out
    _insert_after_title(out, nbformat.v4.new_markdown_cell(text, metadata={"tags": [PROVENANCE_TAG]}))
    return out


def write_notebook(notebook, path: Path) -> None:
    """Write atomically (a reader never sees half a notebook)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial.{path.name}")
    nbformat.write(notebook, str(partial))
    os.replace(partial, path)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
