"""Compare every glued value of a re-execution with the record's: the check a reader runs to trust the paper.

``python book/build.py --verify NAME`` re-executes ``notebooks/NAME.md`` with the record's parameters and a fresh,
empty ``results_dir`` (nothing is read back from earlier runs), then calls :func:`compare_glued` on
``record/NAME.ipynb`` and the re-execution and prints :func:`format_table`.

Tolerances (:data:`RULES`, first matching pattern wins; patterns are ``fnmatch`` patterns on the glued name):

- wall times are ignored: names with a token ``seconds``, ``minutes``, ``hours``, ``time``, ``timings`` or
  ``duration`` (``seconds_train``, ``minutes_total``, ``page_seconds``), and ``goal_*`` / ``*_goal*`` (words
  that compare a wall time with the project's goal, e.g. ``goal_text``);
- ``scheduler_name`` is ignored (where the tasks ran, not what they computed);
- everything else: booleans, integers and strings exactly; floats with relative tolerance ``1e-6`` and absolute
  tolerance ``1e-12`` (``|a - b| <= atol + rtol * max(|a|, |b|)``; NaN agrees with NaN), element by element in
  lists, tuples and dicts; figures and other non-text outputs by their kind (``<png>``).
- ``*_error`` (a computed error against a reference, at rounding level, e.g. ``row_error`` ~ 1e-16): absolute
  tolerance ``1e-9``, since rounding differs between machines and BLAS builds while the claim is that it is tiny.

Per-key overrides are added to :data:`RULES` (or passed as ``rules=``) as ``(pattern, Rule(...))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

from record import is_time_like


@dataclass(frozen=True)
class Rule:
    """How a glued value is compared: ``ignore`` it, or compare with ``rtol``/``atol`` (floats; ints, strings and
    booleans are always compared exactly)."""

    rtol: float = 1e-6
    atol: float = 1e-12
    ignore: bool = False
    why: str = ""


DEFAULT = Rule(why="default")
TIME = Rule(ignore=True, why="wall time")
RULES: list[tuple[str, Rule]] = [
    ("goal_*", Rule(ignore=True, why="wall time against a goal")),
    ("*_goal*", Rule(ignore=True, why="wall time against a goal")),
    ("scheduler_name", Rule(ignore=True, why="where the tasks ran")),
    ("*_error", Rule(rtol=0.0, atol=1e-9, why="rounding-level error")),
]


def rule_for(name: str, rules: list[tuple[str, Rule]] | None = None) -> Rule:
    if is_time_like(name):
        return TIME
    for pattern, rule in (RULES if rules is None else rules):
        if fnmatch(name, pattern):
            return rule
    return DEFAULT


def agrees(a: Any, b: Any, rule: Rule = DEFAULT) -> bool:
    """Whether two glued values agree under ``rule``."""
    if rule.ignore:
        return True
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
        return abs(a - b) <= rule.atol + rule.rtol * max(abs(a), abs(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(agrees(x, y, rule) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agrees(a[k], b[k], rule) for k in a)
    return a == b


@dataclass(frozen=True)
class Row:
    name: str
    record: Any
    rerun: Any
    verdict: str  # "agrees", "DIFFERS", "ignored (<why>)", "MISSING in rerun", "MISSING in record"

    @property
    def ok(self) -> bool:
        return not (self.verdict.startswith("DIFFERS") or self.verdict.startswith("MISSING"))


MISSING = object()


def compare_glued(record: dict[str, Any], rerun: dict[str, Any], *,
                  rules: list[tuple[str, Rule]] | None = None) -> list[Row]:
    """One :class:`Row` per glued name of either side, in the record's order (then the rerun's new names)."""
    rows = []
    for name in [*record, *[n for n in rerun if n not in record]]:
        a, b = record.get(name, MISSING), rerun.get(name, MISSING)
        rule = rule_for(name, rules)
        if rule.ignore:
            verdict = f"ignored ({rule.why})"
        elif a is MISSING:
            verdict = "MISSING in record"
        elif b is MISSING:
            verdict = "MISSING in rerun"
        else:
            verdict = "agrees" if agrees(a, b, rule) else "DIFFERS"
        rows.append(Row(name, None if a is MISSING else a, None if b is MISSING else b, verdict))
    return rows


def _show(value: Any, width: int = 28) -> str:
    text = f"{value:.10g}" if isinstance(value, float) else repr(value) if not isinstance(value, str) else value
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[Row], *, only_problems: bool = False) -> str:
    """A plain-text table (key, record, rerun, agrees?) and a one-line summary."""
    shown = [r for r in rows if not r.ok] if only_problems else rows
    width = max([len(r.name) for r in shown] + [3])
    lines = [f"{'key':<{width}}  {'record':<28}  {'rerun':<28}  agrees?", "-" * (width + 70)]
    for r in shown:
        lines.append(f"{r.name:<{width}}  {_show(r.record):<28}  {_show(r.rerun):<28}  {r.verdict}")
    lines.append(summary(rows))
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    agree = sum(r.verdict == "agrees" for r in rows)
    ignored = sum(r.verdict.startswith("ignored") for r in rows)
    bad = [r for r in rows if not r.ok]
    verdict = "the rerun reproduces the record" if not bad else "the rerun does NOT reproduce the record"
    return (f"{len(rows)} glued values: {agree} agree, {ignored} ignored (wall times etc.), "
            f"{len(bad)} differ or are missing: {verdict}")
