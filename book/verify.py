"""Compare every glued value of a re-execution with the record's, by class, and say whether the conclusions hold.

``python book/build.py --verify NAME`` re-executes ``notebooks/NAME.md`` with the record's parameters and a fresh,
empty ``results_dir`` (nothing is read back from earlier runs) on the pinned numerical path
(:mod:`hessian_book.numerics`), then calls :func:`compare_glued` on ``record/NAME.ipynb`` and the re-execution
and prints :func:`format_table`.

Every glued value has a class (:class:`hessian_book.glue.GlueClass`):

- **exact** (set by the parameters: counts, sizes, steps, quoted constants): equal, on any machine;
- **numerical** (computed): where the rerun's numerical path is the record's (:func:`hessian_book.numerics.
  path_differences` finds nothing), equal bitwise, or within the class's ``rtol``/``atol`` (rounding); on another
  path the value is shown beside the record's but not judged, unless the chapter measured its uncertainty:
- **statistical** (computed, with an uncertainty the chapter itself measures: the spread over image draws, runs,
  seeds): on the same path compared as numerical; on another path it agrees when the rerun's value lies in the
  record's interval (and the record's in the rerun's), or within the stated half-width; the uncertainty is
  printed beside the value;
- **conclusion** (verdict words, in-range statements, "this error is at rounding level"): must agree on any path;
- **ignored**: wall times (names with a token ``seconds``, ``minutes``, ``hours``, ``time``, ``timings``,
  ``duration``; ``goal_*``, ``*_goal*``), ``scheduler_name``, ``n_workers`` (where the tasks ran).

A chapter module declares its classes in ``GLUE_CLASSES = {fnmatch pattern: GlueClass}`` (first match wins).
Undeclared names get :func:`default_class`: words and booleans are conclusions, integers exact, ``*_error``
conclusions at ``atol`` 1e-9 (rounding differs between BLAS builds; the claim is that it is tiny), other numbers
numerical (``rtol`` 1e-6), statistical where the chapter glues an interval for them (``X_lo``/``X_hi``,
``X_low``/``X_high`` or ``X_min``/``X_max`` beside ``X``, ``X_median``, ``X_mean`` or ``X_est``; the interval's
ends themselves stay numerical); figures (``<png>``) exact by kind.

The exit status (:func:`reproduced`) depends on the conclusions and the exact values, and on the numerical values
only where the paths match: a statistical disagreement, or a numerical one across paths, is reported, not failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

from hessian_book.glue import GlueClass, conclusion, exact, ignored, numerical, statistical
from record import is_time_like

WALL_TIME = ignored("wall time")
IGNORED_NAMES: list[tuple[str, GlueClass]] = [
    ("goal_*", ignored("wall time against a goal")),
    ("*_goal*", ignored("wall time against a goal")),
    ("scheduler_name", ignored("where the tasks ran")),
    ("n_workers", ignored("where the tasks ran")),
]
DEFAULT_RTOL = 1e-6
ERROR_CLASS = conclusion(atol=1e-9, why="rounding-level error")
_RANGE_SUFFIXES = (("lo", "hi"), ("low", "high"), ("min", "max"))
_CENTRE_SUFFIXES = ("median", "mean", "est")


def chapter_classes(name: str) -> dict[str, GlueClass]:
    """The ``GLUE_CLASSES`` a chapter module declares (``{}`` when it declares none)."""
    import importlib

    try:
        module = importlib.import_module(f"hessian_book.chapters.{name}")
    except ImportError:
        return {}
    return dict(getattr(module, "GLUE_CLASSES", {}))


def _interval(name: str, names: set[str]) -> tuple[str, str] | None:
    """The glued interval ``(low name, high name)`` the chapter gives for ``name``, if any."""
    stem, _, last = name.rpartition("_")
    stems = [name]
    if stem and last in _CENTRE_SUFFIXES:
        stems.append(stem)
    for lo, hi in _RANGE_SUFFIXES:
        if stem and last in (lo, hi) and f"{stem}_{lo}" in names and f"{stem}_{hi}" in names:
            return None  # an end of an interval: an estimated quantile, with no spread of its own
        for s in stems:
            if f"{s}_{lo}" in names and f"{s}_{hi}" in names:
                return f"{s}_{lo}", f"{s}_{hi}"
    return None


def default_class(name: str, value: Any, names: set[str] = frozenset()) -> GlueClass:
    """The class of an undeclared glued value (``names``: every glued name of the record, to find intervals)."""
    if isinstance(value, bool) or isinstance(value, str) and not (value.startswith("<") and value.endswith(">")):
        return conclusion(why="words")
    if isinstance(value, str):
        return exact(why="an output's kind")
    if name.endswith("_error"):
        return ERROR_CLASS
    if isinstance(value, int):
        return exact(why="an integer")
    interval = _interval(name, set(names))
    if interval and isinstance(value, (int, float)):
        return statistical(low=interval[0], high=interval[1], why="an interval the chapter glues")
    return numerical(rtol=DEFAULT_RTOL, why="a number")


def class_for(name: str, value: Any, declared: dict[str, GlueClass] | None = None,
              names: set[str] = frozenset()) -> GlueClass:
    """Wall times and where-it-ran names are ignored; then the chapter's declaration; then :func:`default_class`."""
    if is_time_like(name):
        return WALL_TIME
    for pattern, cls in IGNORED_NAMES:
        if fnmatch(name, pattern):
            return cls
    for pattern, cls in (declared or {}).items():
        if fnmatch(name, pattern):
            return cls
    return default_class(name, value, names)


def agrees(a: Any, b: Any, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Equal (booleans and integers exactly, a boolean never equal to an integer), or numbers within
    ``|a - b| <= atol + rtol * max(|a|, |b|)`` (NaN agrees with NaN), element by element in lists and dicts."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= atol + rtol * max(abs(a), abs(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(agrees(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agrees(a[k], b[k], rtol=rtol, atol=atol) for k in a)
    return a == b


def _bitwise(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


@dataclass(frozen=True)
class Row:
    name: str
    record: Any
    rerun: Any
    kind: str      # the class applied: exact, numerical, statistical, conclusion, ignored
    verdict: str   # "agrees", "agrees (bitwise)", "agrees (to rounding)", "within <uncertainty>", "DIFFERS", ...
    counts: bool   # whether a disagreement fails the verification
    note: str = ""  # the uncertainty a statistical value was judged against, or why it was not judged

    @property
    def agrees(self) -> bool:
        return not (self.verdict.startswith(("DIFFERS", "MISSING", "outside")) or self.verdict == "differs")

    @property
    def ok(self) -> bool:
        """Not a failure of the verification (a statistical or cross-path numerical difference is reported only)."""
        return self.agrees or not self.counts


MISSING = object()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _statistical(name: str, a: Any, b: Any, cls: GlueClass, record: dict, rerun: dict) -> tuple[str, str]:
    """(verdict, note) of a value judged against the uncertainty the chapter measured."""
    x, y = _number(a), _number(b)
    if x is None or y is None or math.isnan(x) or math.isnan(y):
        return ("agrees" if agrees(a, b) else "differs", "not a number: compared as is")
    if cls.low is not None:
        lo, hi = _number(record.get(cls.low)), _number(record.get(cls.high))
        if lo is None or hi is None:
            return "differs", f"the record has no interval {cls.low}..{cls.high}"
        inside = lo <= y <= hi
        lo2, hi2 = _number(rerun.get(cls.low)), _number(rerun.get(cls.high))
        back = lo2 is None or hi2 is None or lo2 <= x <= hi2
        note = f"record's range {lo:.4g}..{hi:.4g}" + (f", rerun's {lo2:.4g}..{hi2:.4g}" if lo2 is not None
                                                        and hi2 is not None else "")
        note += f" ({cls.why})" if cls.why else ""
        return ("within range" if inside and back else "outside range"), note
    width = float(cls.halfwidth(record))
    note = f"±{width:.3g}" + (f" ({cls.why})" if cls.why else "")
    return ("within ±" if abs(x - y) <= width else "outside ±"), note


def compare_glued(record: dict[str, Any], rerun: dict[str, Any], *,
                  classes: dict[str, GlueClass] | None = None, same_path: bool = True) -> list[Row]:
    """One :class:`Row` per glued name of either side, in the record's order (then the rerun's new names).

    ``classes``: the chapter's declared ``GLUE_CLASSES``; ``same_path``: whether the rerun ran on the record's
    numerical path (then numerical and statistical values are compared bitwise or to rounding)."""
    rows = []
    names = set(record) | set(rerun)
    for name in [*record, *[n for n in rerun if n not in record]]:
        a, b = record.get(name, MISSING), rerun.get(name, MISSING)
        cls = class_for(name, a if a is not MISSING else b, classes, names)
        kind = cls.kind
        if kind in ("numerical", "statistical"):
            kind = "numerical" if same_path else "statistical"
        counts = kind in ("exact", "conclusion", "numerical") or (kind != "ignored" and MISSING in (a, b))
        note = ""
        if kind == "ignored":
            verdict = f"ignored ({cls.why})"
        elif a is MISSING:
            verdict = "MISSING in record"
        elif b is MISSING:
            verdict = "MISSING in rerun"
        elif kind == "numerical":
            tolerance = dict(rtol=cls.rtol, atol=cls.atol)
            verdict = ("agrees (bitwise)" if _bitwise(a, b) else "agrees (to rounding)"
                       if agrees(a, b, **tolerance) else "DIFFERS")
            if verdict == "agrees (to rounding)":
                note = f"rtol {cls.rtol:g}, atol {cls.atol:g}"
        elif kind == "statistical":
            if cls.kind == "statistical":
                verdict, note = _statistical(name, a, b, cls, record, rerun)
            else:  # numerical across paths: the chapter measured no uncertainty for it
                verdict = "agrees (bitwise)" if _bitwise(a, b) else "not judged"
                x, y = _number(a), _number(b)
                if verdict == "not judged":
                    note = "no measured uncertainty" + (
                        f"; relative difference {abs(x - y) / max(abs(x), abs(y)):.2g}"
                        if x is not None and y is not None and max(abs(x), abs(y)) > 0 else "")
        else:  # exact, conclusion
            verdict = "agrees" if agrees(a, b, rtol=cls.rtol, atol=cls.atol) else "DIFFERS"
        rows.append(Row(name, None if a is MISSING else a, None if b is MISSING else b, kind, verdict, counts,
                        note))
    return rows


def _show(value: Any, width: int = 24) -> str:
    text = f"{value:.10g}" if isinstance(value, float) else repr(value) if not isinstance(value, str) else value
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[Row], *, only_problems: bool = False, path_note: str = "") -> str:
    """A plain-text table (key, class, record, rerun, verdict, uncertainty) and the summary."""
    shown = [r for r in rows if not r.agrees] if only_problems else rows
    width = max([len(r.name) for r in shown] + [3])
    lines = [f"{'key':<{width}}  {'class':<11}  {'record':<24}  {'rerun':<24}  verdict",
             "-" * (width + 100)]
    for r in shown:
        note = f"  [{r.note}]" if r.note else ""
        lines.append(f"{r.name:<{width}}  {r.kind:<11}  {_show(r.record):<24}  {_show(r.rerun):<24}  "
                     f"{r.verdict}{note}")
    lines.append("")
    lines.append(summary(rows, path_note=path_note))
    return "\n".join(lines)


def reproduced(rows: list[Row]) -> bool:
    """Whether the verification passes: every conclusion and exact value (and, on the record's path, every
    numerical value) agrees and none is missing."""
    return all(r.ok for r in rows)


def summary(rows: list[Row], *, path_note: str = "") -> str:
    """Counts per class, which conclusions reproduced and which did not, and the verdict."""
    lines = []
    if path_note:
        lines.append(path_note)
    parts = []
    for kind in ("exact", "numerical", "statistical", "conclusion"):
        of_kind = [r for r in rows if r.kind == kind]
        if not of_kind:
            continue
        agree = sum(r.agrees and r.verdict != "not judged" for r in of_kind)
        text = f"{kind} {agree}/{len(of_kind)} agree"
        if kind == "numerical":
            text += f" ({sum(r.verdict == 'agrees (bitwise)' for r in of_kind)} bitwise)"
        if kind == "statistical":
            judged = [r for r in of_kind if r.verdict.startswith(("within", "outside"))]
            rest = [r for r in of_kind if r not in judged]
            equal = sum(r.verdict == "agrees (bitwise)" for r in rest)
            text = (f"statistical {sum(r.agrees for r in judged)}/{len(judged)} within the chapter's measured "
                    "uncertainty" + (f", {len(rest)} without a measured uncertainty ({equal} bitwise equal, "
                                     f"{len(rest) - equal} differ: shown, not judged)" if rest else ""))
        parts.append(text)
    ignored_n = sum(r.kind == "ignored" for r in rows)
    lines.append(f"{len(rows)} glued values: " + "; ".join(parts) + f"; {ignored_n} ignored (wall times etc.)")
    conclusions = [r for r in rows if r.kind == "conclusion"]
    held = [r.name for r in conclusions if r.agrees]
    failed = [r.name for r in conclusions if not r.agrees]
    if conclusions:
        lines.append(f"conclusions reproduced ({len(held)}): {', '.join(held) or 'none'}")
        lines.append(f"conclusions NOT reproduced ({len(failed)}): {', '.join(failed) or 'none'}")
    outside = [r.name for r in rows if r.kind == "statistical" and not r.agrees and r.verdict != "not judged"]
    if outside:
        lines.append(f"statistical values outside the measured uncertainty (reported, not failed): "
                     f"{', '.join(outside)}")
    bad = [r.name for r in rows if not r.ok]
    if not bad:
        lines.append("the rerun reproduces the record: every conclusion and exact value agrees"
                     + ("" if not any(r.kind == "numerical" for r in rows) else
                        ", and every numerical value on the same numerical path"))
    else:
        lines.append(f"the rerun does NOT reproduce the record: {len(bad)} value(s) that must agree do not: "
                     + ", ".join(bad))
    return "\n".join(lines)
