"""A Sphinx extension of the book: each page loads every script once.

sphinx-thebe (loaded by Jupyter Book 1.x) adds its inline configuration script
(``const THEBE_JS_URL = ...``) twice to every page under Sphinx 7, and the second copy throws
"Identifier 'THEBE_JS_URL' has already been declared" in the reader's browser (found by book/check_pages.py).
This drops exact duplicates (same file, same inline body, same attributes) from each page's scripts.

It also ships plotly.js once: a page with a checkpoint explorer (``hessian_book.explorer``) loads
``_static/plotly.min.js`` by a relative ``<script src>``; when the build finishes and some page references
``plotly.min.js``, the file is copied from the installed plotly wheel into ``_static/`` (a book without explorers
does not carry its 4.8 MB).
"""

from __future__ import annotations

from pathlib import Path


def _key(script) -> tuple:
    filename = getattr(script, "filename", script) or ""  # one copy comes as None, the other as ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def pages_referencing(html_dir: Path, name: str) -> list[Path]:
    """The built pages (``*.html`` outside ``_static``) whose text contains ``name``."""
    html_dir = Path(html_dir)
    return sorted(p for p in html_dir.rglob("*.html")
                  if "_static" not in p.relative_to(html_dir).parts and name in p.read_text(errors="replace"))


def ship_plotly(app, exception) -> None:
    """Copy the plotly wheel's ``plotly.min.js`` into ``_static/`` when a built page references it."""
    if exception is not None or getattr(app.builder, "format", None) != "html":
        return
    from hessian_book.explorer import PLOTLY_JS_NAME, plotly_bundle_path

    outdir = Path(app.outdir)
    if pages_referencing(outdir, PLOTLY_JS_NAME):
        static = outdir / "_static"
        static.mkdir(exist_ok=True)
        (static / PLOTLY_JS_NAME).write_bytes(plotly_bundle_path().read_bytes())


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.connect("build-finished", ship_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
