"""When to show progress bars: in a terminal yes, in a rendered notebook or a CI log no."""

from __future__ import annotations

import sys

__all__ = ["show_progress"]


def show_progress(progress: bool | None = None) -> bool:
    """``progress`` if given, else whether stderr is a terminal.

    Inside a notebook executed by papermill (the book) stderr is not a terminal, so long runs print no bars into
    the rendered pages; ``python -c …`` or a script in a shell shows them.
    """
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())
