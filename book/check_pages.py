"""Open every page of the built book in headless Chromium and fail on what a reader would see broken.

    python book/check_pages.py _build/html [--chromium /usr/bin/chromium] [--timeout 30] [--screenshots DIR]

Uses Playwright's Python API with the system's Chromium (Debian's ``chromium`` package; no browser download).
Every request that is not ``file://`` (or ``data:``/``blob:``) is blocked and counted: the book must work offline.
A page fails on any of:

- a traceback or a stderr output in the page (myst-nb's ``.output.traceback`` / ``.output.stderr`` blocks, or
  "Traceback (most recent call last)" in a cell output);
- an image that does not load (``naturalWidth`` 0);
- an unresolved glue reference or any other build warning left in the page: with ``keep_warnings: true`` (the
  book's ``_config.yml``) Sphinx renders a warning as a ``div.system-message``; myst-nb's missing glue key is one
  (without ``keep_warnings`` it leaves no marker at all, only a gap in the sentence);
- a broken internal link (a relative link whose file, or whose ``#fragment`` id in that file, does not exist);
- math not rendered: an element ``.math`` (Sphinx's output for ``$...$`` and ``$$...$$``) without MathJax's
  ``mjx-container`` inside once MathJax has finished;
- a network request attempted (anything but ``file://``, ``data:`` and ``blob:``);
- a table that is not a ``<table>``: a Markdown table's separator row (``|---|---|``) left as text;
- a JavaScript error on the page;
- an interactive explorer (``hessian_book.explorer``) whose slider does not redraw the chosen checkpoint: for each
  check in the explorer's ``data-checks`` the run is selected and the slider clicked to the checkpoint, and the
  drawn step marker and largest eigenvalue must equal the values that the page's notebook glues under the check's
  names (read from the executed notebook the page was built from, ``_sources/<page>.ipynb``); the checks of one
  explorer must draw different data (the slider moved something).

Glued values that render as ``nan`` are counted (column ``nan``) but do not fail a page.
Prints a per-page table and exits 1 when any page fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}

# Run in the page once it has loaded: wait for MathJax, then collect what the checks need.
PAGE_SCRIPT = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await Promise.race([MathJax.startup.promise, new Promise(r => setTimeout(r, 15000))]);
    if (MathJax.typesetPromise) { try { await MathJax.typesetPromise(); } catch (e) {} }
  }
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r);
                          setTimeout(r, 5000); })));
  const outputs = Array.from(document.querySelectorAll('.cell_output'));
  const maths = Array.from(document.querySelectorAll('.math'));
  const textNodes = Array.from(document.querySelectorAll('p, li, td, .cell_output .output.text_plain, '
                                                         + '.cell_output pre'));
  return {
    tracebacks: document.querySelectorAll('.output.traceback').length
        + outputs.filter(o => o.innerText.includes('Traceback (most recent call last)')).length,
    stderr: document.querySelectorAll('.output.stderr').length,
    images: imgs.map(img => ({src: img.getAttribute('src') || '', ok: img.complete && img.naturalWidth > 0})),
    warnings: Array.from(document.querySelectorAll('.system-message')).map(e => e.innerText.slice(0, 200)),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    math: maths.length,
    math_unrendered: maths.filter(m => !m.querySelector('mjx-container')).length,
    tables: document.querySelectorAll('table').length,
    text_tables: textNodes.filter(e => /\\|\\s*:?-{3,}:?\\s*\\|/.test(e.innerText)).length,
    nan: Array.from(document.querySelectorAll('.pasted-text')).filter(e => e.innerText.trim() === 'nan').length,
  };
}
"""


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    images: str = ""
    math: str = ""
    links: str = ""
    tables: int = 0
    requests: int = 0
    nan: int = 0
    explorers: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


_REFRESH = re.compile(r"""<meta[^>]+http-equiv=["']refresh["'][^>]*url=([^"'>]+)""", re.I)
_ASSET = re.compile(r"<(script|link|img|iframe|source)\b[^>]*?\b(src|href)=[\"']((?:https?:)?//[^\"']+)", re.I)


def external_assets(html_dir: Path) -> dict[str, list[str]]:
    """``{page: [url]}`` of scripts, stylesheets, images and frames that a page loads from the network (a CDN):
    the static counterpart of the browser's blocked requests (links a reader may click are not counted)."""
    found = {}
    for path in sorted(Path(html_dir).rglob("*.html")):
        urls = [m.group(3) for m in _ASSET.finditer(path.read_text(errors="replace"))
                if not (m.group(1).lower() == "link" and re.search(r'rel=["\'](canonical|alternate)', m.group(0)))]
        if urls:
            found[str(path.relative_to(html_dir))] = urls
    return found


def find_chromium(explicit: str | None = None) -> str | None:
    for candidate in [explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]:
        if candidate and (path := shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)):
            return path
    return None


def pages_of(html_dir: Path) -> list[Path]:
    return sorted(p for p in html_dir.rglob("*.html")
                  if not SKIP_DIRS & set(p.relative_to(html_dir).parts[:-1]))


_ids_cache: dict[Path, set[str]] = {}


def _ids(path: Path) -> set[str]:
    if path not in _ids_cache:
        text = path.read_text(errors="replace")
        _ids_cache[path] = set(re.findall(r'\bid="([^"]+)"', text)) | set(re.findall(r'\bname="([^"]+)"', text))
    return _ids_cache[path]


def broken_links(hrefs: list[str], html_dir: Path) -> tuple[int, list[str]]:
    """(internal links checked, the broken ones) among the page's resolved ``file://`` links."""
    checked, broken = 0, []
    root = html_dir.resolve()
    for href in hrefs:
        url = urlparse(href)
        if url.scheme != "file":
            continue
        target = Path(unquote(url.path))
        try:
            target.resolve().relative_to(root)
        except ValueError:  # a link out of the book (e.g. to a source file): not the book's to check
            continue
        checked += 1
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(href)
        elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in _ids(target):
            broken.append(href)
    return checked, broken


# The state an explorer draws (hessian_book.explorer's trace order: 0 the spectrum with its eigenvalues as
# customdata, the last trace the step marker).
EXPLORER_STATE = """
(div) => {
  const g = div.querySelector('.plotly-graph-div');
  if (!g || !g._fullData || !g._fullLayout.sliders) return null;
  const full = g._fullData, values = Array.from(full[0].customdata || []);
  return {active: g._fullLayout.sliders[0].active, n_steps: g._fullLayout.sliders[0].steps.length,
          marker: Array.from(full[full.length - 1].x), lambda_max: values.length ? Math.max(...values) : null,
          n_values: values.length, values_sum: values.reduce((a, b) => a + b, 0)};
}
"""


def _as_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_explorers(page, source: Path | None, *, screenshots: Path | None = None, name: str = "page",
                    timeout: float = 30.0) -> tuple[int, int, list[str]]:
    """Move every explorer's slider on an open Playwright ``page`` as its ``data-checks`` ask; returns
    ``(checks passed, checks, problems)``. ``source``: the executed notebook the page was built from (its glued
    values are the expectations); ``screenshots``: a folder for a PNG of each explorer at each check."""
    import json

    from glued import glued_values  # book/glued.py: the reader --verify uses

    divs = page.locator(".hb-explorer")
    n_divs = divs.count()
    if not n_divs:
        return 0, 0, []
    glued = glued_values(source) if source is not None and source.is_file() else None
    passed, total, problems = 0, 0, []
    for k in range(n_divs):
        div = divs.nth(k)
        checks = json.loads(div.get_attribute("data-checks") or "[]")
        if not checks:
            continue
        total += len(checks)
        if glued is None:
            problems.append(f"explorer {k}: no executed notebook at {source} to read its glued values from")
            continue
        try:
            page.wait_for_function("(d) => { const g = d.querySelector('.plotly-graph-div'); return g && "
                                   "g._transitionData && g._transitionData._frames.length > 0; }",
                                   arg=div.element_handle(), timeout=timeout * 1000)
        except Exception as exc:  # noqa: BLE001 - an explorer that never draws is a failed check
            problems.append(f"explorer {k} never drew: {str(exc).splitlines()[0][:120]}")
            continue
        states, passed_here = [], 0
        for j, check in enumerate(checks):
            where = f"explorer {k}, run {check['run']} checkpoint {check['checkpoint']}"
            try:
                if check["run"]:
                    div.locator(".updatemenu-header-group").click()
                    div.locator(".updatemenu-dropdown-button").nth(check["run"]).click()
                    page.wait_for_timeout(300)
                n = div.evaluate(EXPLORER_STATE)["n_steps"]
                i = check["checkpoint"] % n
                rail = div.locator(".slider-rail-touch-rect")
                rail.scroll_into_view_if_needed()
                box = rail.bounding_box()
                inset = 8  # plotly.js's slider railInset: its steps lie evenly between the rail's insets
                page.mouse.click(box["x"] + inset + (i / (n - 1) if n > 1 else 0) * (box["width"] - 2 * inset),
                                 box["y"] + box["height"] / 2)
                page.wait_for_function(
                    "([d, i]) => d.querySelector('.plotly-graph-div')._fullLayout.sliders[0].active === i",
                    arg=[div.element_handle(), i], timeout=timeout * 1000)
                page.wait_for_timeout(300)  # the animate call that the slider's step triggers
                state = div.evaluate(EXPLORER_STATE)
            except Exception as exc:  # noqa: BLE001 - a slider that cannot be moved is a failed check
                problems.append(f"{where}: the slider could not be moved: {str(exc).splitlines()[0][:120]}")
                continue
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                div.screenshot(path=str(screenshots / f"{name}-explorer{k}-check{j}.png"))
            wrong = []
            for key, drawn in (("step", state["marker"][0] if state["marker"] else None),
                               ("lambda_max", state["lambda_max"])):
                expected = _as_number(glued.get(check[key]))
                if expected is None:
                    wrong.append(f"{check[key]} is not glued as a number")
                elif drawn is None or drawn != expected:
                    wrong.append(f"{key} drawn {drawn!r}, glued {check[key]} = {expected!r}")
            if wrong:
                problems.append(f"{where}: " + "; ".join(wrong))
            else:
                passed_here += 1
            states.append((state["marker"], state["lambda_max"], state["n_values"], state["values_sum"]))
        if len(states) > 1 and len(set(map(repr, states))) < len(states):
            problems.append(f"explorer {k}: the slider drew the same data at different checks")
            passed_here = 0
        passed += passed_here
    return passed, total, problems


@contextmanager
def open_browser(chromium: str):
    """Headless Chromium (the system's binary) through Playwright; no browser is downloaded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def check(html_dir: Path, *, chromium: str | None = None, browser=None, timeout: float = 30.0,
          progress: bool = False, screenshots: Path | None = None) -> list[PageReport]:
    """One :class:`PageReport` per page under ``html_dir``, in a new browser (``chromium``) or in ``browser``;
    ``screenshots``: a folder for a PNG of each explorer at each of its checks."""
    if browser is None:
        with open_browser(chromium) as own:
            return check(html_dir, browser=own, timeout=timeout, progress=progress, screenshots=screenshots)
    html_dir = Path(html_dir).resolve()
    reports = []
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        requests: list[str] = []

        def route(r):
            url = r.request.url
            if url.startswith(("file://", "data:", "blob:")):
                return r.continue_()
            requests.append(url)
            return r.abort()

        context.route("**/*", route)
        for path in pages_of(html_dir):
            report = PageReport(str(path.relative_to(html_dir)))
            if progress:
                print(f"checking {report.page}", file=sys.stderr, flush=True)
            redirect = _REFRESH.search(path.read_text(errors="replace"))
            if redirect:  # e.g. Jupyter Book's index.html: a redirect page, checked by its target's existence
                target = (path.parent / unquote(redirect.group(1).split("#")[0])).resolve()
                report.links = "redirect"
                if not target.is_file():
                    report.problems.append(f"redirects to a missing page: {redirect.group(1)}")
                reports.append(report)
                continue
            requests.clear()
            errors: list[str] = []
            page = context.new_page()
            page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)[:200]))
            try:
                page.goto(path.as_uri(), wait_until="load", timeout=timeout * 1000)
                facts = page.evaluate(PAGE_SCRIPT)
                source = html_dir / "_sources" / path.relative_to(html_dir).with_suffix(".ipynb")
                ok, n_checks, explorer_problems = check_explorers(page, source, screenshots=screenshots,
                                                                  name=path.stem, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - a page that cannot be opened is a failed page
                report.problems.append(f"could not open: {str(exc).splitlines()[0][:200]}")
                reports.append(report)
                page.close()
                continue
            page.close()
            report.explorers = f"{ok}/{n_checks}" if n_checks else ""
            report.problems += explorer_problems
            if facts["tracebacks"]:
                report.problems.append(f"{facts['tracebacks']} traceback(s)")
            if facts["stderr"]:
                report.problems.append(f"{facts['stderr']} stderr output(s)")
            bad_images = [i["src"] for i in facts["images"] if not i["ok"]]
            report.images = f"{len(facts['images']) - len(bad_images)}/{len(facts['images'])}"
            if bad_images:
                report.problems.append(f"{len(bad_images)} image(s) not loaded: {', '.join(bad_images[:3])}")
            if facts["warnings"]:
                report.problems.append(f"{len(facts['warnings'])} build warning(s) in the page (e.g. an unresolved "
                                       f"glue reference): {facts['warnings'][0]!r}")
            n_links, broken = broken_links(facts["links"], html_dir)
            report.links = f"{n_links - len(broken)}/{n_links}"
            if broken:
                report.problems.append(f"{len(broken)} broken internal link(s): {', '.join(broken[:3])}")
            report.math = f"{facts['math'] - facts['math_unrendered']}/{facts['math']}"
            if facts["math_unrendered"]:
                report.problems.append(f"{facts['math_unrendered']} of {facts['math']} math element(s) not rendered")
            report.requests = len(requests)
            if requests:
                report.problems.append(f"{len(requests)} network request(s) attempted: {', '.join(requests[:3])}")
            report.tables = facts["tables"]
            if facts["text_tables"]:
                report.problems.append(f"{facts['text_tables']} table(s) left as text (not a <table>)")
            if errors:
                report.problems.append(f"{len(errors)} JavaScript error(s): {errors[0]!r}")
            report.nan = facts["nan"]
            reports.append(report)
    finally:
        context.close()
    return reports


def format_reports(reports: list[PageReport]) -> str:
    width = max([len(r.page) for r in reports] + [4])
    lines = [f"{'page':<{width}}  {'images':>7}  {'math':>9}  {'links':>9}  {'tables':>6}  {'net':>3}  {'nan':>3}  "
             f"{'sliders':>7}  result"]
    for r in reports:
        lines.append(f"{r.page:<{width}}  {r.images:>7}  {r.math:>9}  {r.links:>9}  {r.tables:>6}  {r.requests:>3}  "
                     f"{r.nan:>3}  {r.explorers:>7}  {'ok' if r.ok else 'FAIL: ' + '; '.join(r.problems)}")
    failed = sum(not r.ok for r in reports)
    lines.append(f"{len(reports)} pages: {len(reports) - failed} ok, {failed} failed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html_dir", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--chromium", default=None, help="the browser binary (default: chromium on PATH)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to load one page")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="write a PNG of each explorer at each of its checks into this folder")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no chromium found: apt-get install chromium (or pass --chromium PATH)", file=sys.stderr)
        return 2
    if not args.html_dir.is_dir() or not pages_of(args.html_dir):
        print(f"no HTML pages under {args.html_dir}", file=sys.stderr)
        return 2
    reports = check(args.html_dir, chromium=chromium, timeout=args.timeout, progress=True,
                    screenshots=args.screenshots)
    print(format_reports(reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
