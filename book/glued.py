"""Read the numbers a chapter glued into its executed notebook, and compare two executions of it.

    python book/glued.py A.ipynb B.ipynb [--rtol 1e-9] [--ignore seconds,minutes]

prints one row per glued name that differs (or is missing on one side) and exits 1 if any does. Used to show that
a refactor left a chapter's numbers unchanged, and by ``book/build.py --verify``.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from pathlib import Path
from typing import Any

import nbformat

__all__ = ["glued_values", "glued_values_of", "compare"]


def _parse(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        # numpy reprs like np.float64(1.5), nan, inf
        cleaned = text.replace("np.float64(", "(").replace("np.int64(", "(")
        try:
            return ast.literal_eval(cleaned)
        except (ValueError, SyntaxError):
            if text in ("nan", "inf", "-inf"):
                return float(text)
            return text


def glued_values(path: str | Path) -> dict[str, Any]:
    """``{name: value}`` of every ``glue`` output in an executed notebook (text/plain, parsed where possible)."""
    return glued_values_of(nbformat.read(str(path), as_version=4))


def glued_values_of(notebook) -> dict[str, Any]:
    """:func:`glued_values` of a notebook already read (an ``nbformat`` node)."""
    out = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if not record:
                continue
            data = output.get("data", {})
            text = data.get(record["mime_prefix"] + "text/plain")
            if text is None:  # figures and other mime types: present, compared by name only
                out[record["name"]] = "<" + ",".join(sorted(k.split("/", 1)[-1] for k in data)) + ">"
            else:
                out[record["name"]] = _parse(text)
    return out


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    return a == b


def compare(before: dict[str, Any], after: dict[str, Any], *, rtol: float = 1e-9, atol: float = 0.0,
            ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``[(name, before, after)]`` for every name whose values differ or that only one side has.

    Names containing any of ``ignore`` (e.g. ``"seconds"``, ``"minutes"``: wall times) are skipped.
    """
    rows = []
    for name in sorted(set(before) | set(after)):
        if any(word in name for word in ignore):
            continue
        a, b = before.get(name, "<missing>"), after.get(name, "<missing>")
        if not _close(a, b, rtol, atol):
            rows.append((name, a, b))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rtol", type=float, default=1e-9)
    parser.add_argument("--atol", type=float, default=0.0)
    parser.add_argument("--ignore", default="seconds,minutes,time", help="comma-separated name fragments to skip")
    args = parser.parse_args()
    before, after = glued_values(args.before), glued_values(args.after)
    rows = compare(before, after, rtol=args.rtol, atol=args.atol,
                   ignore=tuple(w for w in args.ignore.split(",") if w))
    print(f"{len(before)} glued names before, {len(after)} after; {len(rows)} differ")
    for name, a, b in rows:
        print(f"  {name}: {a!r} -> {b!r}")
    sys.exit(1 if rows else 0)


if __name__ == "__main__":
    main()
