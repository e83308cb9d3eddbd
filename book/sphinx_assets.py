"""A Sphinx extension of the book: each page loads every script once.

sphinx-thebe (loaded by Jupyter Book 1.x) adds its inline configuration script
(``const THEBE_JS_URL = ...``) twice to every page under Sphinx 7, and the second copy throws
"Identifier 'THEBE_JS_URL' has already been declared" in the reader's browser (found by book/check_pages.py).
This drops exact duplicates (same file, same inline body, same attributes) from each page's scripts.
"""

from __future__ import annotations


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


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
