"""The book's Reproducibility page, generated from the record's provenance and the README's benchmark table.

``book/build.py`` calls :func:`write_page` before every Sphinx build; the page is written to
``notebooks/_executed/reproducibility.md`` (build output, not tracked) and listed in ``_toc.yml``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import nbformat

from record import (BOOK_GOAL_MINUTES, GOAL_MINUTES, RECORD, ROOT, Status, book_chapters, record_of,
                    staleness)

PAGE = ROOT / "notebooks" / "_executed" / "reproducibility.md"


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MB"


def _cell(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text.replace("|", "\\|").replace("\n", " ")


def _duration(name: str, value: Any) -> str:
    """A glued wall time with its unit, read from its name (``minutes_total`` is in minutes, else seconds)."""
    if not isinstance(value, (int, float)):
        return str(value)
    tokens = set(name.lower().split("_"))
    return f"{value:.1f} min" if "minutes" in tokens else f"{value:.2f} h" if "hours" in tokens \
        else f"{value:.1f} s"


def _met(seconds: float | None, goal: float | None) -> str:
    if seconds is None or goal is None:
        return "—"
    return "met" if seconds <= 60 * goal else "missed"


def benchmark_section(readme: Path = ROOT / "README.md", benchmarks: Path = ROOT / "benchmarks") -> str:
    """The README's ``## Benchmarks`` section (its table names each figure's script), plus every script in
    ``benchmarks/`` with the first line of its docstring."""
    text = readme.read_text() if readme.is_file() else ""
    match = re.search(r"^## Benchmarks\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    body = match.group(1).strip() if match else "The README has no benchmark table."
    lines = ["## Benchmarks", "", "From the README (each row names the script that printed its figures):", "",
             body, "", "The scripts:", ""]
    for script in sorted(benchmarks.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        except SyntaxError:
            doc = ""
        first = doc.strip().split("\n\n")[0].replace("\n", " ") if doc else "(no docstring)"
        cited = "cited above" if f"benchmarks/{script.name}" in body else "not cited in the table"
        lines.append(f"- `python benchmarks/{script.name}`: {first} ({cited})")
    return "\n".join(lines) + "\n"


def chapter_section(name: str, meta: dict[str, Any] | None, status: Status) -> str:
    lines = [f"(repro-{name})=", f"## {name}", ""]
    if meta is None:
        lines += [f"No record yet (`record/{name}.ipynb` is missing). `python book/build.py --record {name}` "
                  "executes it at its defaults.", ""]
        return "\n".join(lines)
    m = meta.get("machine", {})
    state = {"fresh": "fresh (the source's code cells and parameters are those it ran)",
             "stale": "stale: " + "; ".join(status.reasons)}.get(status.state, status.state)
    lines += [
        f"- **State**: {state}.",
        f"- **Executed** {meta.get('date', '?')} → {meta.get('finished', '?')} (UTC), "
        f"{_minutes(meta.get('wall_seconds'))} of wall time; goal "
        f"{'none of its own' if GOAL_MINUTES.get(name) is None else str(GOAL_MINUTES[name]) + ' min'}: "
        f"{_met(meta.get('wall_seconds'), GOAL_MINUTES.get(name))}.",
        f"- **Code**: commit `{meta.get('code_commit')}`"
        + (f", with uncommitted changes in {', '.join(meta.get('dirty_files', []))}" if meta.get("dirty") else
           ", clean") + ".",
        f"- **Machine**: {m.get('cores')} cores, {m.get('cpu')}, {m.get('memory_gb')} GB, {m.get('system')}, "
        f"Python {m.get('python')}; load average (1, 5, 15 min) {m.get('load_before')} before, "
        f"{m.get('load_after')} after.",
        "- **Packages**: " + ", ".join(f"{k} {v}" for k, v in (meta.get("packages") or {}).items() if v) + ".",
        f"- **Results written**: {_mb(meta.get('results_written', {}).get('bytes'))} in "
        f"{meta.get('results_written', {}).get('files', '—')} files under `{meta.get('results_dir')}`"
        + (f"; results keys {meta['results_keys']}" if meta.get("results_keys") else "") + ".",
        f"- **Verify**: `python book/build.py --verify {name}` re-executes it at these parameters into a fresh "
        f"results folder (about {_minutes(meta.get('wall_seconds'))} again) and compares its "
        f"{meta.get('n_glued', 'glued')} glued values with the record's.",
    ]
    if status.library_commits:
        lines.append(f"- **Library changes since the record** ({len(status.library_commits)}; not re-executed):")
        lines += [f"  - `{c if len(c) <= 110 else c[:109] + '…'}`" for c in status.library_commits[:20]]
        if len(status.library_commits) > 20:
            lines.append(f"  - … and {len(status.library_commits) - 20} more")
    timings = meta.get("timings") or {}
    if timings:
        lines += ["", "| phase | wall time |", "|---|---|"]
        lines += [f"| {k} | {_duration(k, v)} |" for k, v in timings.items()]
    params = meta.get("parameters", {})
    effective, defaults = params.get("effective") or {}, params.get("defaults") or {}
    if effective:
        lines += ["", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)}{'' if defaults.get(k) == v else ' (injected)'} |"
                  for k, v in effective.items()]
    return "\n".join(lines) + "\n"


def render(*, record_dir: Path = RECORD, smoke: bool = False) -> str:
    """The page's MyST markdown."""
    names = book_chapters()
    metas, statuses = {}, {}
    for name in names:
        path = record_dir / f"{name}.ipynb"
        metas[name] = record_of(nbformat.read(path, as_version=4)) if path.is_file() else None
        statuses[name] = staleness(name, record_dir=record_dir)
    head = ["# Reproducibility", ""]
    if smoke:
        head += [":::{admonition} Smoke build", ":class: warning",
                 "The chapter pages of this build are smoke runs (tiny sizes, for CI). The record described below "
                 "is what `python book/build.py` renders.", ":::", ""]
    head += [
        "Every chapter page of this book is the chapter's notebook executed at its defaults and committed in "
        "`record/`, with its provenance in the notebook's metadata (`hessian_record`). `python book/build.py` "
        "renders the record and executes a chapter only when its record is missing or stale (its code cells or "
        "its parameters cell changed since); a change of the library since a record is listed here, not "
        "re-executed. `python book/build.py --rerun NAME` recomputes a chapter, `--verify NAME` re-executes it "
        "into a fresh results folder and compares every glued number with the record (tolerances: "
        "`book/verify.py`): exact for integers and words, relative 1e-6 for other numbers, wall times ignored.",
        "",
        "| chapter | executed | commit | wall time | goal | met? | load before → after | results written | state |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    total, complete = 0.0, True
    for name in names:
        meta, status = metas[name], statuses[name]
        goal = GOAL_MINUTES.get(name)
        if meta is None:
            complete = False
            head.append(f"| {{ref}}`{name} <repro-{name}>` | — | — | — | {f'{goal} min' if goal else '—'} | — | — | — | missing |")
            continue
        seconds = meta.get("wall_seconds")
        total += seconds or 0.0
        m = meta.get("machine", {})
        load = (f"{m['load_before'][0]:.2f} → {m['load_after'][0]:.2f}"
                if m.get("load_before") and m.get("load_after") else "—")
        head.append(
            f"| {{ref}}`{name} <repro-{name}>` | {(meta.get('date') or '')[:10]} | `{(meta.get('code_commit') or '?')[:8]}`"
            f"{' (dirty)' if meta.get('dirty') else ''} | {_minutes(seconds)} | {f'{goal} min' if goal else '—'} | "
            f"{_met(seconds, goal)} | {load} | {_mb(meta.get('results_written', {}).get('bytes'))} | "
            f"{status.state}{f', {len(status.library_commits)} library commit(s) since' if status.library_commits else ''} |")
    verdict = (f"{_met(total, BOOK_GOAL_MINUTES)}" if complete else "not all chapters recorded yet")
    head += ["", f"Whole book at its defaults: {_minutes(total) if total else '—'} against a goal of "
                 f"{BOOK_GOAL_MINUTES} min on this 2-core machine: {verdict}.", ""]
    sections = [chapter_section(name, metas[name], statuses[name]) for name in names]
    return "\n".join(head) + "\n" + "\n".join(sections) + "\n" + benchmark_section()


def write_page(*, record_dir: Path = RECORD, smoke: bool = False, path: Path = PAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(record_dir=record_dir, smoke=smoke))
    return path
