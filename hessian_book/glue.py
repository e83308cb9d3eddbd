"""Numbers and words for the chapters' prose, glued by myst-nb (imported only when a glue function is called).

A sentence a rerun could contradict is never typed: its number is glued, and so is its direction word, produced
here from the computed interval (:func:`direction_word`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["glue_value", "glue_values", "direction_word", "plain"]


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
