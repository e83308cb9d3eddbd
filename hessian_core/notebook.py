"""Helpers for the book's notebooks (myst-nb is imported only when they are called)."""

from __future__ import annotations

from typing import Any

__all__ = ["glue_value"]


def glue_value(name: str, value: Any) -> None:
    """Glue ``value`` under ``name`` for the prose (``{glue:text}`name:.3g```), without displaying it.

    numpy scalars are turned into Python numbers first: myst-nb formats the ``text/plain`` repr, and numpy 2's
    ``np.float64(1.5)`` repr defeats its format specs.
    """
    from myst_nb import glue

    glue(name, value.item() if hasattr(value, "item") else value, display=False)
