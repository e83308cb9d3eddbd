"""book/check_pages.py on tiny hand-made HTML folders (a good one passes; a broken image, a traceback, a stderr
output, a build warning, a broken link, unrendered math, a network request, a text table each fail), and the
offline check of a small book built with the project's _config.yml (no CDN). The browser tests need Debian's
chromium and the playwright wheel (the ``check`` extra) and are skipped cleanly without them."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import check_pages  # noqa: E402

CHROMIUM = check_pages.find_chromium()
try:
    import playwright  # noqa: F401

    HAVE_PLAYWRIGHT = True
except ImportError:
    HAVE_PLAYWRIGHT = False
browser = pytest.mark.skipif(CHROMIUM is None or not HAVE_PLAYWRIGHT,
                             reason="needs Debian's chromium and the playwright wheel (pip install -e '.[check]')")

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

# A stand-in for MathJax: typesets every .math element by adding an mjx-container (what MathJax 3 does).
FAKE_MATHJAX = """
window.MathJax = {startup: {promise: Promise.resolve()}, typesetPromise: async () => {
  document.querySelectorAll('.math').forEach(m => m.appendChild(document.createElement('mjx-container')));
}};
"""

GOOD_BODY = """
<h1 id="top">A page</h1>
<p>Inline math <span class="math notranslate nohighlight">\\(x^2\\)</span> and a glued <span class="pasted-text">3.14</span>.</p>
<img src="_images/fig.png" alt="a figure">
<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>
<a href="other.html#section">a link</a> <a href="#top">up</a> <a href="https://example.org/">outside, not loaded</a>
<div class="cell_output docutils container"><div class="output text_plain">ok</div></div>
"""


def write_page(folder: Path, name: str, body: str, *, mathjax: bool = True) -> None:
    script = '<script src="_static/mathjax.js"></script>' if mathjax else ""
    (folder / name).write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'>{script}</head>"
                               f"<body>{body}</body></html>")


def good_book(folder: Path) -> Path:
    (folder / "_images").mkdir(parents=True)
    (folder / "_static").mkdir()
    (folder / "_images" / "fig.png").write_bytes(PNG)
    (folder / "_static" / "mathjax.js").write_text(FAKE_MATHJAX)
    write_page(folder, "index.html", GOOD_BODY)
    write_page(folder, "other.html", '<h2 id="section">Section</h2><p>No math here.</p>')
    return folder


BROKEN = {
    "image": ('<img src="_images/missing.png">', "image(s) not loaded"),
    "traceback": ('<div class="cell_output"><div class="output traceback"><pre>Traceback (most recent call last):'
                  '\nValueError</pre></div></div>', "traceback"),
    "stderr": ('<div class="cell_output"><div class="output stderr"><pre>RuntimeWarning</pre></div></div>',
               "stderr"),
    "glue warning": ('<div class="system-message"><p class="system-message-title">System Message: WARNING/2</p>'
                     '<p>No key "x" found in the document</p></div>', "build warning"),
    "link": ('<a href="nowhere.html">broken</a>', "broken internal link"),
    "fragment": ('<a href="other.html#no-such-id">broken</a>', "broken internal link"),
    "math": ('<p><span class="math notranslate nohighlight">\\(y\\)</span></p>', "math element(s) not rendered"),
    "network": ('<img src="https://cdn.example.org/x.png">', "network request"),
    "text table": ("<p>| a | b |\n|---|---|\n| 1 | 2 |</p>", "table(s) left as text"),
    "javascript": ("<script>undefinedFunction();</script>", "JavaScript error"),
}


@pytest.fixture(scope="module")
def chromium_browser():
    """One browser for the module's tests (starting one takes seconds, a minute on a loaded machine)."""
    with check_pages.open_browser(CHROMIUM) as b:
        yield b


@browser
def test_a_good_page_passes(tmp_path, chromium_browser):
    reports = check_pages.check(good_book(tmp_path), browser=chromium_browser)
    table = check_pages.format_reports(reports)
    assert [r.page for r in reports] == ["index.html", "other.html"]
    assert all(r.ok for r in reports), table
    index = reports[0]
    assert (index.images, index.math, index.tables, index.requests) == ("1/1", "1/1", 1, 0)
    assert index.links == "2/2"  # other.html#section and #top; the https link is not the book's
    assert "2 pages: 2 ok, 0 failed" in table


@browser
@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_page_fails(tmp_path, kind, chromium_browser):
    folder = good_book(tmp_path)
    body, message = BROKEN[kind]
    write_page(folder, "index.html", GOOD_BODY + body, mathjax=kind != "math")
    reports = check_pages.check(folder, browser=chromium_browser)
    index = next(r for r in reports if r.page == "index.html")
    assert not index.ok and any(message in p for p in index.problems), index.problems
    assert "FAIL" in check_pages.format_reports(reports) and "1 failed" in check_pages.format_reports(reports)


@browser
def test_main_exits_1_on_a_failed_page_and_0_on_a_good_book(tmp_path, chromium_browser, monkeypatch):
    from contextlib import contextmanager

    @contextmanager
    def shared(chromium):  # Playwright's sync API cannot start twice in one thread: reuse the module's browser
        yield chromium_browser

    monkeypatch.setattr(check_pages, "open_browser", shared)
    good = good_book(tmp_path / "good")
    assert check_pages.main([str(good), "--chromium", CHROMIUM]) == 0
    write_page(good, "other.html", '<img src="_images/missing.png">')
    assert check_pages.main([str(good), "--chromium", CHROMIUM]) == 1


@browser
def test_a_redirect_page_is_checked_by_its_target(tmp_path, chromium_browser):
    folder = good_book(tmp_path)
    (folder / "start.html").write_text('<meta http-equiv="Refresh" content="0; url=index.html" />')
    (folder / "lost.html").write_text('<meta http-equiv="Refresh" content="0; url=gone.html" />')
    reports = {r.page: r for r in check_pages.check(folder, browser=chromium_browser)}
    assert reports["start.html"].ok and reports["start.html"].links == "redirect"
    assert not reports["lost.html"].ok and "missing page" in reports["lost.html"].problems[0]


@browser
def test_a_glued_nan_is_counted_not_failed(tmp_path, chromium_browser):
    folder = good_book(tmp_path)
    write_page(folder, "index.html", GOOD_BODY + '<p>took <span class="pasted-text">nan</span> s</p>')
    index = check_pages.check(folder, browser=chromium_browser)[0]
    assert index.ok and index.nan == 1


def test_external_assets_finds_cdn_scripts_and_styles_but_not_links(tmp_path):
    good_book(tmp_path)
    assert check_pages.external_assets(tmp_path) == {}
    write_page(tmp_path, "cdn.html", '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js">'
               '</script><link rel="stylesheet" href="//cdnjs.cloudflare.com/x.css">'
               '<a href="https://example.org/">a link is fine</a>', mathjax=False)
    assert check_pages.external_assets(tmp_path) == {
        "cdn.html": ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js", "//cdnjs.cloudflare.com/x.css"]}


def test_pages_skip_static_folders(tmp_path):
    good_book(tmp_path)
    (tmp_path / "_static" / "x.html").write_text("<html></html>")
    assert [p.name for p in check_pages.pages_of(tmp_path)] == ["index.html", "other.html"]


def _jupyter_book() -> str | None:
    cli = Path(sys.executable).with_name("jupyter-book")
    return str(cli) if cli.exists() else shutil.which("jupyter-book")


@pytest.mark.skipif(_jupyter_book() is None, reason="needs the book's tools (pip install -e '.[book]')")
def test_a_book_built_with_the_project_config_loads_nothing_from_a_cdn(tmp_path):
    """The offline MathJax: a one-page book with math, built with the project's _config.yml, references no
    network script or stylesheet, and ships MathJax in _static."""
    import importlib.util

    if importlib.util.find_spec("sphinx-mathjax-offline") is None:
        pytest.skip("sphinx-mathjax-offline is not installed (pip install -e '.[book]')")
    book = tmp_path / "book"
    book.mkdir()
    config = (ROOT / "_config.yml").read_text().replace("sphinx.ext.autodoc, sphinx.ext.napoleon, ", "")
    config = config.replace("sphinx_assets: book/", f"sphinx_assets: {ROOT / 'book'}")
    (book / "_config.yml").write_text(config)
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (book / "intro.md").write_text("# Intro\n\nInline $x^2$ and display\n\n$$ \\int_0^1 f(x)\\,dx $$\n")
    subprocess.run([_jupyter_book(), "build", str(book), "--path-output", str(book)], check=True,
                   capture_output=True, timeout=300)
    html = book / "_build" / "html"
    assert "mathjax/tex-chtml.js" in (html / "intro.html").read_text()
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert check_pages.external_assets(html) == {}
    # book/sphinx_assets.py: sphinx-thebe's inline config once (twice is a JavaScript error in the browser)
    assert (html / "intro.html").read_text().count("const THEBE_JS_URL") == 1


def explorer_book(tmp_path: Path, glued: dict[str, str] | None, *, checks=None) -> tuple[Path, list]:
    """A book folder with one chapter page holding an explorer of two runs (plotly.min.js in ``_static`` as the
    book ships it) and, unless ``glued`` is None, the executed notebook it was built from with those glue records."""
    import numpy as np

    from hessian_book.explorer import (BOOK_PLOTLY_JS, FIRST_AND_LAST, PLOTLY_JS_NAME, ExplorerRun, explorer_figure,
                                       explorer_html, plotly_bundle_path)

    rng = np.random.default_rng(3)
    runs = []
    for r in range(2):
        steps = np.array([0, 100, 250, 500, 1000]) + r
        spectra = [np.concatenate([rng.normal(0, 1e-3, 300), rng.lognormal(i + r, 0.5, 5)]) for i in range(5)]
        runs.append(ExplorerRun(name=f"run {r}", steps=steps, spectra=spectra,
                                curves={"loss": (steps, np.exp(-steps / 300.0))}))
    folder = tmp_path / "html"
    page = folder / "notebooks" / "_executed" / "chapter.html"
    page.parent.mkdir(parents=True)
    (folder / "_static").mkdir()
    shutil.copyfile(plotly_bundle_path(), folder / "_static" / PLOTLY_JS_NAME)
    fragment = explorer_html(explorer_figure(runs, max_points=60), plotly_js=BOOK_PLOTLY_JS,
                             checks=FIRST_AND_LAST if checks is None else checks)
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{fragment}</body></html>")
    if glued is not None:
        source = folder / "_sources" / "notebooks" / "_executed" / "chapter.ipynb"
        source.parent.mkdir(parents=True)
        import nbformat

        prefix = "application/papermill.record/"
        cell = nbformat.v4.new_code_cell("glue(...)", outputs=[
            nbformat.v4.new_output("display_data", data={prefix + "text/plain": text},
                                   metadata={"scrapbook": {"name": name, "mime_prefix": prefix}})
            for name, text in glued.items()])
        nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(source))
    return folder, runs


def glue_of(runs) -> dict[str, str]:
    from hessian_book.explorer import explorer_glue

    return {name: repr(value) for name, value in explorer_glue(runs[0]).items()}


@browser
def test_an_explorer_whose_slider_draws_the_glued_checkpoints_passes(tmp_path, chromium_browser):
    folder, runs = explorer_book(tmp_path, None)
    glued = glue_of(runs)
    folder, runs = explorer_book(tmp_path / "again", glued)
    shots = tmp_path / "shots"
    (report,) = check_pages.check(folder, browser=chromium_browser, screenshots=shots)
    assert report.ok, report.problems
    assert report.explorers == "2/2"
    assert sorted(p.name for p in shots.iterdir()) == ["chapter-explorer0-check0.png", "chapter-explorer0-check1.png"]
    # a check of the second run moves the run selector first
    second = [dict(run=1, checkpoint=2, step="s", lambda_max="l")]
    folder, runs = explorer_book(tmp_path / "run1", {"s": repr(int(runs[1].steps[2])),
                                                      "l": repr(float(runs[1].spectra[2].max()))}, checks=second)
    (report,) = check_pages.check(folder, browser=chromium_browser)
    assert report.ok and report.explorers == "1/1", report.problems


@browser
def test_an_explorer_that_disagrees_with_its_glued_values_fails(tmp_path, chromium_browser):
    folder, runs = explorer_book(tmp_path, None)
    glued = glue_of(runs)
    # the last checkpoint's value glued as the first's: the slider at the first checkpoint draws something else
    wrong = dict(glued, explorer_lmax_first=glued["explorer_lmax_last"])
    folder, _ = explorer_book(tmp_path / "wrong", wrong)
    (report,) = check_pages.check(folder, browser=chromium_browser)
    assert not report.ok and report.explorers == "1/2"
    assert any("run 0 checkpoint 0: lambda_max drawn" in p for p in report.problems), report.problems
    # no executed notebook beside the page: nothing to compare with, so the page fails
    folder, _ = explorer_book(tmp_path / "nosource", None)
    (report,) = check_pages.check(folder, browser=chromium_browser)
    assert not report.ok and any("no executed notebook" in p for p in report.problems), report.problems
    # a page without explorers has no slider column and no explorer problems
    assert check_pages.check(good_book(tmp_path / "plain"), browser=chromium_browser)[0].explorers == ""
