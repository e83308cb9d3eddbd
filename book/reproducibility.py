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

from hessian_book.calibration import REFERENCE_MS_PER_STEP, Calibration, combine, from_dict
from hessian_book.numerics import PINNED_ENV, describe_path
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


def record_calibration(meta: dict[str, Any]) -> Calibration | None:
    """The record's calibration: the mean of the ones taken before and after its execution
    (:func:`hessian_book.calibration.combine`; only the one before in records made before the one after was
    taken); None when it has none."""
    return combine(from_dict(meta.get("calibration")), from_dict(meta.get("calibration_after")))


def reference_seconds(meta: dict[str, Any]) -> float | None:
    """The record's wall time scaled to the reference speed by its own calibration (:func:`record_calibration`);
    None when the record has no calibration (made before calibrations existed: no factor is assumed) or no wall
    time."""
    calibration = record_calibration(meta)
    seconds = meta.get("wall_seconds")
    if calibration is None or seconds is None:
        return None
    return calibration.to_reference(seconds)


def calibration_text(meta: dict[str, Any]) -> str:
    """``"31.2 ms/step (×2.60), 20.1 GFLOP/s, load 1.20 → 1.50"`` (one calibration, before), ``"before 31.2
    ms/step (×2.60), after 25.0 (×2.08): mean ×2.34, 20.1 GFLOP/s, load 1.20 → 1.50"`` (before and after) or
    ``"not calibrated"``."""
    before, after = from_dict(meta.get("calibration")), from_dict(meta.get("calibration_after"))
    c = combine(before, after)
    if c is None:
        return "not calibrated"
    rest = f"{c.gflops:.1f} GFLOP/s, load {c.load_before:.2f} → {c.load_after:.2f}"
    if before is None or after is None:
        return f"{c.ms_per_step:.1f} ms/step (×{c.speed_factor:.2f}), {rest}"
    return (f"before {before.ms_per_step:.1f} ms/step (×{before.speed_factor:.2f}), after {after.ms_per_step:.1f} "
            f"(×{after.speed_factor:.2f}): mean ×{c.speed_factor:.2f}, {rest}")


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
    reference = reference_seconds(meta)
    budget = GOAL_MINUTES.get(name)
    lines += [
        f"- **State**: {state}.",
        f"- **Executed** {meta.get('date', '?')} → {meta.get('finished', '?')} (UTC), "
        f"{_minutes(meta.get('wall_seconds'))} of wall time"
        + (f", {_minutes(reference)} at the reference speed; budget "
           f"{'none' if budget is None else str(budget) + ' min'}: {_met(reference, budget)}."
           if reference is not None else
           f"; not calibrated (recorded before calibrations existed), so it is not judged against its budget "
           f"({'none' if budget is None else str(budget) + ' min'} at the reference speed)."),
        f"- **Calibration** (`hessian_book.calibration`, just before the execution"
        f"{' and just after' if meta.get('calibration_after') else ''}): {calibration_text(meta)}"
        + (f"; the reference speed is {REFERENCE_MS_PER_STEP:g} ms/step."
           if meta.get("calibration") else "."),
        f"- **Code**: commit `{meta.get('code_commit')}`"
        + (f", with uncommitted changes in {', '.join(meta.get('dirty_files', []))}" if meta.get("dirty") else
           ", clean") + ".",
        f"- **Machine**: {m.get('cores')} cores, {m.get('cpu')}, {m.get('memory_gb')} GB, {m.get('system')}, "
        f"Python {m.get('python')}; load average (1, 5, 15 min) {m.get('load_before')} before, "
        f"{m.get('load_after')} after.",
        f"- **Numerics**: {describe_path(meta.get('numerical_path'))}"
        + (f"; CPU flags {', '.join(meta['numerical_path']['cpu'].get('simd_flags', []))}"
           if meta.get("numerical_path") else "") + ".",
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
        "renders the record and computes nothing: a chapter without a record is shown from its smoke copy, one "
        "whose record is stale (its code cells or its parameters cell changed since) as it stands, each with a "
        "banner naming the command that records it; a change of the library since a record is listed here, not "
        "re-executed. `python book/build.py --record NAME` (or `--rerun NAME`) computes a chapter, `--verify NAME` re-executes it "
        "into a fresh results folder and compares every glued value with the record by its class "
        "(`book/verify.py`): exact values (set by the parameters) and conclusions (verdict words, in-range "
        "statements) must agree; computed values agree bitwise on the record's numerical path, and on another "
        "path are judged against the uncertainty the chapter measures; wall times are ignored. See "
        "{ref}`repro-numerics`.",
        "",
        f"Budgets are wall times on this 2-core machine at the *reference speed*: {REFERENCE_MS_PER_STEP:g} ms "
        "for one single-thread full-batch AdamW step of the grokking transformer. Each execution is preceded by a "
        "~10-second calibration (`hessian_book.calibration`: that step's median time, a float64 matmul rate, "
        "the load) and followed by another, both stored in the record; the wall time divided by their mean speed "
        "factor (measured ÷ reference) is the time at the reference speed, which is what a budget is judged on "
        "(records made before the second calibration was taken use the one before). A record made before "
        "calibrations existed says \"not calibrated\" and is not judged.",
        "",
        "| chapter | executed | commit | wall time | calibration | at the reference speed | budget | met? "
        "| load before → after | results written | state |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    total, complete, calibrated = 0.0, True, True
    for name in names:
        meta, status = metas[name], statuses[name]
        goal = GOAL_MINUTES.get(name)
        if meta is None:
            complete = False
            budget = f"{goal} min" if goal else "—"
            head.append(f"| {{ref}}`{name} <repro-{name}>` | — | — | — | — | — | {budget} | — | — | — | missing |")
            continue
        seconds = meta.get("wall_seconds")
        reference = reference_seconds(meta)
        if reference is None:
            calibrated = False
        else:
            total += reference
        m = meta.get("machine", {})
        load = (f"{m['load_before'][0]:.2f} → {m['load_after'][0]:.2f}"
                if m.get("load_before") and m.get("load_after") else "—")
        head.append(
            f"| {{ref}}`{name} <repro-{name}>` | {(meta.get('date') or '')[:10]} | `{(meta.get('code_commit') or '?')[:8]}`"
            f"{' (dirty)' if meta.get('dirty') else ''} | {_minutes(seconds)} | {calibration_text(meta)} | "
            f"{_minutes(reference) if reference is not None else 'not calibrated'} | "
            f"{f'{goal} min' if goal else '—'} | "
            f"{_met(reference, goal) if reference is not None else 'not judged'} | {load} | "
            f"{_mb(meta.get('results_written', {}).get('bytes'))} | "
            f"{status.state}{f', {len(status.library_commits)} library commit(s) since' if status.library_commits else ''} |")
    verdict = (_met(total, BOOK_GOAL_MINUTES) if complete and calibrated else
               "not all chapters recorded yet" if not complete else
               "not judged: some records are not calibrated")
    head += ["", f"Whole book at its defaults, at the reference speed: "
                 f"{_minutes(total) if total and calibrated else '—'} against a budget of "
                 f"{BOOK_GOAL_MINUTES} min on this 2-core machine: {verdict}.", ""]
    sections = [chapter_section(name, metas[name], statuses[name]) for name in names]
    return ("\n".join(head) + "\n" + numerics_section(metas) + "\n" + "\n".join(sections) + "\n"
            + benchmark_section())


def numerics_section(metas: dict[str, dict[str, Any] | None]) -> str:
    """The numerical path the records ran on and what a reader should expect on their own machine, from the
    records' provenance (``numerical_path``) and the pinned settings."""
    pinned = {n: m["numerical_path"] for n, m in metas.items() if m and (m.get("numerical_path") or {}).get("pinned")}
    unpinned = [n for n, m in metas.items() if m and m.get("numerical_path") and n not in pinned]
    unknown = [n for n, m in metas.items() if m and not m.get("numerical_path")]
    cpus = sorted({p.get("cpu", {}).get("model") or "?" for p in pinned.values()})
    settings = ", ".join(f"`{k}={v}`" for k, v in PINNED_ENV.items())
    lines = ["(repro-numerics)=", "## The numerical path, and what to expect on your machine", "",
             "Training is chaotic: a different order of floating-point operations in one kernel changes the trained "
             "network and everything measured on it. Which kernels run depends on the CPU unless pinned, so every "
             "execution that feeds this book runs a fixed, portable path (`hessian_book.numerics`), set by "
             f"`book/build.py` before torch is imported and inherited by the kernels and their workers: {settings} "
             "(ATen's AVX2 kernels, MKL's AVX2 branch (on a non-Intel CPU MKL falls back to its own fixed branch, "
             "recorded), oneDNN limited to AVX2, OpenBLAS's Haswell kernels, fixed thread counts), and 256-bit "
             "vectors for compiled kernels. `HESSIAN_NUMERICS=portable` pins MKL's vendor-independent COMPATIBLE "
             "branch instead (measured 1.7x slower per training step on this project's AMD EPYC); "
             "`HESSIAN_UNPINNED=1` runs the CPU's own path; the provenance says which.", ""]
    facts = []
    if pinned:
        facts.append(f"{len(pinned)} record(s) ran on the pinned path ({', '.join(sorted(pinned))}), on "
                     f"{' and '.join(cpus)}")
    if unpinned:
        facts.append(f"{len(unpinned)} ran unpinned ({', '.join(unpinned)})")
    if unknown:
        facts.append(f"{len(unknown)} were made before the path was pinned and recorded ({', '.join(unknown)})")
    if facts:
        lines += ["Of the records: " + "; ".join(facts) + ".", ""]
    expect = ("**On your machine.** With the pinned path (any x86-64 CPU with AVX2 and FMA, the torch, MKL, "
              "oneDNN and OpenBLAS builds the records list, and `python book/build.py`, which pins it), "
              "`--verify` expects the computed numbers of a pinned record to agree bitwise")
    if len(cpus) >= 2:
        expect += f"; records on this path exist from {len(cpus)} CPU models ({', '.join(cpus)})"
    elif cpus:
        expect += (f" (bitwise agreement is shown on {cpus[0]} only; across CPU models it is expected, not yet "
                   "shown: the CPU's cache sizes still steer oneDNN's blocking)")
    expect += (". On a CPU without AVX2, with other library builds, unpinned, or against a record whose path is "
               "not pinned" + (" (" + ", ".join(unpinned + unknown) + ")" if unpinned or unknown else "")
               + ", expect statistical agreement only: the exact values (set by the parameters) and the "
                 "conclusions should agree, and each computed value should lie within the uncertainty the "
                 "chapter measures (the spread over image draws, runs or seeds), which `--verify` states beside "
                 "it; a conclusion that does not reproduce is a finding, and `--verify` names it.")
    lines += [expect, ""]
    return "\n".join(lines) + "\n"


def write_page(*, record_dir: Path = RECORD, smoke: bool = False, path: Path = PAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(record_dir=record_dir, smoke=smoke))
    return path
