"""Numbers and words for the chapters' prose, glued by myst-nb (imported only when a glue function is called).

A sentence a rerun could contradict is never typed: its number is glued, and so is its direction word, produced
here from the computed interval (:func:`direction_word`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["glue_value", "glue_values", "direction_word", "plain", "GlueClass", "exact", "numerical",
           "statistical", "conclusion", "ignored"]


def plain(value: Any) -> Any:
    """numpy scalars as Python numbers: myst-nb formats the ``text/plain`` repr, and numpy 2's
    ``np.float64(1.5)`` repr defeats its format specs. ``None`` becomes NaN, so a format spec still applies."""
    if value is None:
        return float("nan")
    return value.item() if hasattr(value, "item") else value


def glue_value(name: str, value: Any) -> None:
    """Glue ``value`` under ``name`` for the prose (``{glue:text}`name:.3g```), without displaying it."""
    from myst_nb import glue

    glue(name, plain(value), display=False)


def glue_values(values: Mapping[str, Any], *, prefix: str = "") -> None:
    """Glue every ``name: value`` of a mapping (names prefixed with ``prefix``)."""
    for name, value in values.items():
        glue_value(prefix + name, value)


def direction_word(low: float, high: float, *, up: str = "rises", down: str = "falls",
                   flat: str = "shows no clear change") -> str:
    """The word for a change whose interval is ``[low, high]``: ``up`` when it lies above zero, ``down`` when
    below, ``flat`` when it contains zero (or is undefined)."""
    if any(not isinstance(v, (int, float)) or math.isnan(v) for v in (low, high)):
        return flat
    if low > 0:
        return up
    if high < 0:
        return down
    return flat


# ---------------------------------------------------------------------------------------------------------------
# How ``book/build.py --verify`` compares a glued value with the record's. A chapter module declares its glued
# values' classes in ``GLUE_CLASSES = {fnmatch pattern: GlueClass}`` (first matching pattern wins); undeclared
# names get a default by their value (``book/verify.py``).

CLASSES = ("exact", "numerical", "statistical", "conclusion", "ignored")


@dataclass(frozen=True)
class GlueClass:
    """The class of a glued value, for ``--verify``.

    ``exact``: set by the parameters (counts, sizes, steps, quoted constants): must be equal.
    ``numerical``: computed; on the record's numerical path equal bitwise (or within ``rtol``/``atol``: rounding);
    on another path the chapter measured no uncertainty for it, so it is shown, not judged.
    ``statistical``: computed, with an uncertainty the chapter measures: on the record's path compared as
    ``numerical``; on another path it agrees when the rerun's value lies in the record's interval
    [``low``, ``high``] (glued names: e.g. the central range over image draws) and the record's in the rerun's,
    or within ``halfwidth(glued)`` (computed from the record's glued values) of the record's value.
    ``conclusion``: verdict words and in-range statements (or a claim such as "this error is at rounding level",
    with ``atol``): must agree on any path.
    ``ignored``: wall times, where the tasks ran.
    """

    kind: str
    rtol: float = 0.0
    atol: float = 0.0
    low: str | None = None
    high: str | None = None
    halfwidth: Callable[[Mapping[str, Any]], float] | None = None
    why: str = ""

    def __post_init__(self) -> None:
        if self.kind not in CLASSES:
            raise ValueError(f"kind must be one of {CLASSES}, got {self.kind!r}")
        if (self.low is None) != (self.high is None):
            raise ValueError("low and high name the two ends of one interval: give both or neither")
        if self.kind == "statistical" and self.low is None and self.halfwidth is None:
            raise ValueError("a statistical value needs its uncertainty: low/high glued names or a halfwidth")


def exact(why: str = "set by the parameters") -> GlueClass:
    return GlueClass("exact", why=why)


def numerical(*, rtol: float = 0.0, atol: float = 0.0, why: str = "computed") -> GlueClass:
    return GlueClass("numerical", rtol=rtol, atol=atol, why=why)


def statistical(*, low: str | None = None, high: str | None = None,
                halfwidth: Callable[[Mapping[str, Any]], float] | None = None, why: str = "") -> GlueClass:
    return GlueClass("statistical", low=low, high=high, halfwidth=halfwidth, why=why)


def conclusion(*, atol: float = 0.0, why: str = "a verdict") -> GlueClass:
    return GlueClass("conclusion", atol=atol, why=why)


def ignored(why: str) -> GlueClass:
    return GlueClass("ignored", why=why)
