"""hessian_book.explorer: the decimation against a brute-force reference (random and planted spectra), the figure's
frames against their inputs, the HTML fragment (offline, deterministic), book/sphinx_assets.py's copy of plotly.js,
and one headless-Chromium test of a standalone page: move the slider (and switch runs), read the plotted data back.
The browser test needs Debian's chromium and the playwright wheel and is skipped cleanly without them."""

from __future__ import annotations

import base64
import re
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("plotly")

from hessian_book.explorer import (BOOK_PLOTLY_JS, PLOTLY_JS_NAME, ExplorerRun, decimate_spectrum,  # noqa: E402
                                   decimation_ranks, explorer_figure, explorer_html, plotly_bundle_path, signed_log,
                                   write_explorer_page)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import check_pages  # noqa: E402
import sphinx_assets  # noqa: E402

_DTYPES = {"i1": "<i1", "u1": "<u1", "i2": "<i2", "u2": "<u2", "i4": "<i4", "u4": "<u4", "f4": "<f4", "f8": "<f8"}


def decode(spec) -> np.ndarray:
    """A plotly.js typed-array spec back to numpy (independently of the module's encoder)."""
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(_DTYPES[spec["dtype"]]))


def top_gaps_reference(values, k: int) -> list[tuple[float, float, float]]:
    """Brute force: the k largest gaps between consecutive distinct values as (gap, lower, upper), ties by lower."""
    distinct = sorted(set(float(v) for v in values))
    gaps = [(distinct[i + 1] - distinct[i], distinct[i], distinct[i + 1]) for i in range(len(distinct) - 1)]
    return sorted(gaps, key=lambda g: (-g[0], g[1]))[:k]


def cluster_counts_reference(values, eps) -> np.ndarray:
    """n(ε) by brute force: one cluster plus one per consecutive gap strictly larger than ε."""
    gaps = np.diff(np.sort(values))
    return np.array([1 + int(np.sum(gaps > e)) for e in eps])


def random_spectra(rng):
    yield rng.normal(size=500)
    yield np.concatenate([rng.normal(0, 1e-4, 3000), rng.lognormal(1, 2, 30), -rng.lognormal(-3, 1, 20)])
    yield rng.integers(-40, 40, size=800).astype(float)  # many ties, and many equal gaps
    yield np.round(rng.standard_cauchy(1500), 3)
    yield np.full(300, 2.5)  # constant: no gap at all
    yield np.sort(rng.exponential(size=1000))[::-1]  # any input order


@pytest.mark.parametrize("max_points,n_gaps", [(2, 0), (30, 5), (22, 10), (300, 10), (100, 49)])
def test_decimation_keeps_extremes_and_largest_gaps(max_points, n_gaps):
    rng = np.random.default_rng(max_points * 100 + n_gaps)
    for values in random_spectra(rng):
        out = decimate_spectrum(values, max_points=max_points, n_gaps=n_gaps)
        assert out.size <= max_points
        assert np.all(np.diff(out) >= 0)
        assert out[0] == values.min() and out[-1] == values.max()
        assert not Counter(out.tolist()) - Counter(values.tolist())  # a sub-multiset of the input
        kept = set(out.tolist())
        for gap, lower, upper in top_gaps_reference(values, n_gaps):
            assert lower in kept and upper in kept, (gap, lower, upper)
        ranks = decimation_ranks(values, max_points=max_points, n_gaps=n_gaps)
        np.testing.assert_array_equal(np.sort(values)[ranks], out)
        assert np.all(np.diff(ranks) > 0)
        if values.size > max_points and max_points > 2 * n_gaps + 2:
            # the rest are evenly spaced ranks (quantiles): no hole wider than the fill's spacing
            assert np.diff(ranks).max() <= np.ceil((values.size - 1) / (max_points - 2 * n_gaps - 1))


def test_decimation_of_a_planted_spectrum_keeps_its_branch_points():
    rng = np.random.default_rng(1)
    bulk = rng.uniform(-1e-3, 1e-3, 5994)
    outliers = np.array([0.5, 2.0, 2.1, 9.0, 40.0, -0.3, -0.31])
    values = rng.permutation(np.concatenate([bulk, outliers]))
    out = decimate_spectrum(values, max_points=60, n_gaps=8)
    # the planted gaps: between the outliers and from the bulk's edges to the nearest outliers
    edges = [bulk.min(), bulk.max()]
    for v in [*outliers, *edges]:
        assert v in out
    assert out.size <= 60
    # the bulk is represented by quantiles, not dropped: most of the budget lies inside it
    assert np.sum((out >= bulk.min()) & (out <= bulk.max())) >= 60 - 2 * 8 - 2 - len(outliers)


def test_decimation_keeps_a_small_spectrum_whole():
    values = np.array([3.0, -1.0, 2.0, 2.0])
    np.testing.assert_array_equal(decimate_spectrum(values, max_points=4, n_gaps=1), [-1.0, 2.0, 2.0, 3.0])


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(max_points=1), ValueError, "max_points"),
    (dict(max_points=True), TypeError, "max_points"),
    (dict(max_points=30.0), TypeError, "max_points"),
    (dict(max_points=30, n_gaps=-1), ValueError, "n_gaps"),
    (dict(max_points=30, n_gaps=2.5), TypeError, "n_gaps"),
    (dict(max_points=21, n_gaps=10), ValueError, "max_points"),
])
def test_decimation_rejects_bad_budgets(kwargs, error, name):
    with pytest.raises(error, match=name):
        decimate_spectrum(np.arange(100.0), **kwargs)
    with pytest.raises(error, match=name):
        decimation_ranks(np.arange(100.0), **kwargs)


@pytest.mark.parametrize("values,error", [
    (np.zeros((3, 3)), ValueError), (np.array([]), ValueError), (np.array([1.0, np.nan]), ValueError),
    (np.array([1.0, np.inf]), ValueError), (np.array(["a", "b"]), TypeError), (np.array([1j, 2j]), TypeError),
])
def test_decimation_rejects_bad_eigenvalues(values, error):
    with pytest.raises(error, match="eigenvalues"):
        decimate_spectrum(values, max_points=30)


def make_runs(rng, *, n_runs=2, sizes=(40, 700, 2000), n_checkpoints=6) -> list[ExplorerRun]:
    runs = []
    for r in range(n_runs):
        steps = np.cumsum(rng.integers(5, 50, n_checkpoints)) + 10 * r
        spectra = [np.concatenate([rng.normal(0, 1e-3 * (i + 1), sizes[i % len(sizes)] - 6),
                                   rng.lognormal(1 + 0.1 * r, 1, 4), -rng.lognormal(-2, 1, 2)])
                   for i in range(n_checkpoints)]
        curve_steps = np.arange(0, steps[-1] + 1, 5)
        runs.append(ExplorerRun(name=f"run {r}", steps=steps, spectra=spectra,
                                curves={"train loss": (curve_steps, np.exp(-curve_steps / (50 + 30 * r)) + 0.01),
                                        "test accuracy": (curve_steps, 1 - np.exp(-curve_steps / (80 + 10 * r)))}))
    return runs


def test_figure_frames_hold_each_checkpoints_decimated_data():
    import plotly.graph_objects as go

    rng = np.random.default_rng(7)
    runs = make_runs(rng)
    scale, max_points, n_gaps = 1e-3, 120, 6
    eps = np.geomspace(1e-7, 10, 40)
    fig = explorer_figure(runs, max_points=max_points, n_gaps=n_gaps, eps=eps, scale=scale, curves_log_x=True)
    go.Figure(fig)  # plotly's own validation accepts the unvalidated dict
    n_curves = 2
    marker = 4 + n_curves
    assert len(fig["data"]) == marker + 1
    frames = {f["name"]: f for f in fig["frames"]}
    assert len(frames) == sum(len(run.steps) for run in runs)
    for r, run in enumerate(runs):
        for i, (step, values) in enumerate(zip(run.steps, run.spectra)):
            frame = frames[f"run{r}-ckpt{i}"]
            assert frame["traces"] == [0, 1, 2, 3, marker]
            spectrum, endpoints, counts, gap_lines, step_line = frame["data"]
            expected = decimate_spectrum(values, max_points=max_points, n_gaps=n_gaps)
            np.testing.assert_array_equal(decode(spectrum["customdata"]), expected)
            np.testing.assert_array_equal(decode(spectrum["x"]),
                                          decimation_ranks(values, max_points=max_points, n_gaps=n_gaps))
            np.testing.assert_allclose(decode(spectrum["y"]), np.arcsinh(expected / scale), rtol=1e-6, atol=1e-6)
            reference = top_gaps_reference(values, n_gaps)
            assert sorted(decode(endpoints["customdata"]).tolist()) == sorted(
                [g[1] for g in reference] + [g[2] for g in reference])
            np.testing.assert_array_equal(decode(counts["y"]), cluster_counts_reference(values, eps))
            widths = decode(gap_lines["x"])
            np.testing.assert_array_equal(widths[0::3], [g[0] for g in reference])
            assert np.all(np.isnan(widths[2::3]))
            np.testing.assert_array_equal(decode(step_line["x"]), [step, step])
    # the slider of the first run, and each run's dropdown button: its slider, its curves, its first checkpoint
    slider = fig["layout"]["sliders"][0]
    assert [s["args"][0] for s in slider["steps"]] == [[f"run0-ckpt{i}"] for i in range(len(runs[0].steps))]
    assert [s["label"] for s in slider["steps"]] == [str(int(s)) for s in runs[0].steps]
    buttons = fig["layout"]["updatemenus"][0]["buttons"]
    for r, (run, button) in enumerate(zip(runs, buttons)):
        restyle, relayout = button["args"]
        assert button["label"] == run.name
        assert relayout["sliders"][0]["steps"][-1]["args"][0] == [f"run{r}-ckpt{len(run.steps) - 1}"]
        np.testing.assert_array_equal(decode(restyle["customdata"][0]),
                                      decimate_spectrum(run.spectra[0], max_points=max_points, n_gaps=n_gaps))
        for c, (x, y) in enumerate(run.curves.values()):
            np.testing.assert_array_equal(decode(restyle["x"][4 + c]), x)
            np.testing.assert_allclose(decode(restyle["y"][4 + c]), y, rtol=1e-6)  # drawn in float32
        assert len(restyle["x"]) == len(fig["data"])


def test_one_run_has_no_run_selector_and_bad_arguments_are_named():
    rng = np.random.default_rng(3)
    (run,) = make_runs(rng, n_runs=1)
    fig = explorer_figure(run)
    assert "updatemenus" not in fig["layout"]
    with pytest.raises(ValueError, match="max_points"):
        explorer_figure(run, max_points=10, n_gaps=10)
    with pytest.raises(ValueError, match="scale"):
        explorer_figure(run, scale=0.0)
    with pytest.raises(ValueError, match="eps"):
        explorer_figure(run, eps=np.array([1e-3, 1e-4]))
    with pytest.raises(ValueError, match="distinct names"):
        explorer_figure([run, run])
    other = ExplorerRun(name="other", steps=run.steps, spectra=run.spectra, curves={"loss": run.curves["train loss"]})
    with pytest.raises(ValueError, match="same curves"):
        explorer_figure([run, other])
    with pytest.raises(ValueError, match="spectra"):
        ExplorerRun(name="x", steps=[1, 2], spectra=[np.ones(3)], curves={})
    with pytest.raises(ValueError, match="steps"):
        ExplorerRun(name="x", steps=[2, 1], spectra=[np.ones(3), np.ones(3)], curves={})
    with pytest.raises(ValueError, match="spectra\\[1\\]"):
        ExplorerRun(name="x", steps=[1, 2], spectra=[np.ones(3), np.array([np.nan])], curves={})
    with pytest.raises(ValueError, match="curves"):
        ExplorerRun(name="x", steps=[1], spectra=[np.ones(3)], curves={"a": ([1, 2], [1.0])})


def test_signed_log_is_asinh_and_rejects_a_bad_scale():
    np.testing.assert_allclose(signed_log([-1e3, 0.0, 1e-5, 2.0], scale=1e-2), np.arcsinh(np.array([-1e5, 0, 1e-3, 200])))
    with pytest.raises(ValueError, match="scale"):
        signed_log(1.0, scale=-1.0)


def test_html_fragment_is_offline_deterministic_and_small(tmp_path):
    rng = np.random.default_rng(11)
    steps = np.arange(1, 41) * 250
    spectra = [np.concatenate([rng.normal(0, 1e-3, 1990), rng.lognormal(2, 1, 10)]) for _ in steps]
    curve_steps = np.arange(0, 10_001, 10)
    run = ExplorerRun(name="seed 0", steps=steps, spectra=spectra,
                      curves={"train loss": (curve_steps, np.exp(-curve_steps / 3000.0))})
    fig = explorer_figure(run, max_points=300)
    html = explorer_html(fig)
    assert html == explorer_html(explorer_figure(run, max_points=300))  # same figure, same bytes
    sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", html)
    assert sources == [BOOK_PLOTLY_JS]
    assert not re.search(r"<script[^>]*\bsrc=[\"'](https?:)?//", html)
    assert "plotly.js v" not in html  # the library is referenced, not inlined
    assert len(html.encode()) < 2_000_000  # the budget per page: 40 checkpoints x 2,000 eigenvalues
    for bad in ["https://cdn.plot.ly/plotly-3.0.1.min.js", "//cdn.plot.ly/plotly.min.js", "plotly.css", None]:
        with pytest.raises(ValueError, match="plotly_js"):
            explorer_html(fig, plotly_js=bad)
    write_explorer_page(fig, tmp_path)
    assert check_pages.external_assets(tmp_path) == {}  # the book's own static check finds no CDN
    assert (tmp_path / PLOTLY_JS_NAME).read_bytes() == plotly_bundle_path().read_bytes()


def test_sphinx_assets_ships_plotly_only_when_a_page_references_it(tmp_path):
    html_dir = tmp_path / "html"
    (html_dir / "notebooks" / "_executed").mkdir(parents=True)
    page = html_dir / "notebooks" / "_executed" / "mnist_lenet.html"
    page.write_text("<html><body><p>no explorer</p></body></html>")
    app = SimpleNamespace(builder=SimpleNamespace(format="html"), outdir=str(html_dir))
    sphinx_assets.ship_plotly(app, None)
    assert not (html_dir / "_static" / PLOTLY_JS_NAME).exists()
    page.write_text(f'<html><body><script src="{BOOK_PLOTLY_JS}"></script></body></html>')
    sphinx_assets.ship_plotly(app, RuntimeError("the build failed"))
    assert not (html_dir / "_static" / PLOTLY_JS_NAME).exists()
    sphinx_assets.ship_plotly(SimpleNamespace(builder=SimpleNamespace(format="latex"), outdir=str(html_dir)), None)
    assert not (html_dir / "_static" / PLOTLY_JS_NAME).exists()
    sphinx_assets.ship_plotly(app, None)
    shipped = html_dir / "_static" / PLOTLY_JS_NAME
    assert shipped.read_bytes() == plotly_bundle_path().read_bytes()
    # the page's relative reference resolves to the shipped file
    assert (page.parent / BOOK_PLOTLY_JS).resolve() == shipped.resolve()


CHROMIUM = check_pages.find_chromium()
try:
    import playwright  # noqa: F401

    HAVE_PLAYWRIGHT = True
except ImportError:
    HAVE_PLAYWRIGHT = False

READ = """() => {
  const g = document.querySelector('.hb-explorer .plotly-graph-div');
  const full = g._fullData;
  return {active: g._fullLayout.sliders[0].active, prefix: g._fullLayout.sliders[0].currentvalue.prefix,
          ranks: Array.from(full[0].x), values: Array.from(full[0].customdata), y: Array.from(full[0].y),
          counts: Array.from(full[2].y), curve: Array.from(full[4].y), marker: Array.from(full[full.length - 1].x),
          drawn: g.querySelectorAll('.scatterlayer .trace')[0].querySelectorAll('.point').length};
}"""


@pytest.mark.skipif(CHROMIUM is None or not HAVE_PLAYWRIGHT,
                    reason="needs Debian's chromium and the playwright wheel (pip install -e '.[check]')")
def test_slider_and_run_selector_redraw_the_chosen_checkpoint_in_chromium(tmp_path):
    rng = np.random.default_rng(5)
    runs = make_runs(rng, n_checkpoints=8)
    max_points, n_gaps, scale = 150, 6, 1e-3
    eps = np.geomspace(1e-7, 10, 30)
    fig = explorer_figure(runs, max_points=max_points, n_gaps=n_gaps, eps=eps, scale=scale, curves_log_x=True)
    page = write_explorer_page(fig, tmp_path)

    def expect(state, r, i):
        values = runs[r].spectra[i]
        assert state["values"] == decimate_spectrum(values, max_points=max_points, n_gaps=n_gaps).tolist()
        assert state["ranks"] == decimation_ranks(values, max_points=max_points, n_gaps=n_gaps).tolist()
        np.testing.assert_allclose(state["y"], np.arcsinh(np.array(state["values"]) / scale), rtol=1e-6, atol=1e-6)
        assert state["counts"] == cluster_counts_reference(values, eps).tolist()
        assert state["marker"] == [runs[r].steps[i]] * 2
        np.testing.assert_allclose(state["curve"], list(runs[r].curves.values())[0][1], rtol=1e-6)
        assert state["drawn"] == len(state["ranks"])  # the SVG holds one point per plotted value
        assert state["active"] == i and state["prefix"].startswith(runs[r].name)

    with check_pages.open_browser(CHROMIUM) as browser:
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        requests, errors = [], []

        def route(r):
            if r.request.url.startswith(("file://", "data:", "blob:")):
                return r.continue_()
            requests.append(r.request.url)
            return r.abort()

        context.route("**/*", route)
        pg = context.new_page()
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.goto(page.as_uri(), wait_until="load")
        pg.wait_for_function("() => { const g = document.querySelector('.hb-explorer .plotly-graph-div');"
                             " return g && g._transitionData && g._transitionData._frames.length > 0; }",
                             timeout=60_000)
        expect(pg.evaluate(READ), 0, 0)

        def move_slider_to(i: int, n: int) -> None:
            box = pg.locator(".slider-rail-touch-rect").bounding_box()
            inset = 8  # plotly.js's slider railInset: steps lie evenly between the rail's insets
            pg.mouse.click(box["x"] + inset + i / (n - 1) * (box["width"] - 2 * inset), box["y"] + box["height"] / 2)
            pg.wait_for_function(f"() => document.querySelector('.hb-explorer .plotly-graph-div')"
                                 f"._fullLayout.sliders[0].active === {i}", timeout=10_000)
            pg.wait_for_timeout(300)  # the animate call that the step triggers

        move_slider_to(5, len(runs[0].steps))
        expect(pg.evaluate(READ), 0, 5)
        pg.click(".updatemenu-header-group")  # the run selector
        pg.locator(".updatemenu-dropdown-button").nth(1).click()
        pg.wait_for_timeout(300)
        expect(pg.evaluate(READ), 1, 0)
        move_slider_to(3, len(runs[1].steps))
        expect(pg.evaluate(READ), 1, 3)
        pg.close()
        context.close()
        assert not errors, errors
        assert not requests, requests
        # and the book's own page check passes on it (no JS error, no network request, nothing broken)
        (report,) = check_pages.check(tmp_path, browser=browser)
        assert report.ok, report.problems


def test_explorer_glue_and_checks_attribute():
    import html
    import json
    import re

    from hessian_book.explorer import FIRST_AND_LAST, explorer_glue

    runs = make_runs(np.random.default_rng(11))
    glue = explorer_glue(runs[0])
    assert glue == dict(explorer_step_first=int(runs[0].steps[0]), explorer_lmax_first=runs[0].spectra[0].max(),
                        explorer_step_last=int(runs[0].steps[-1]), explorer_lmax_last=runs[0].spectra[-1].max())
    assert isinstance(glue["explorer_step_first"], int)
    fragment = explorer_html(explorer_figure(runs, max_points=50), checks=FIRST_AND_LAST)
    (attribute,) = re.findall(r"data-checks='([^']*)'", fragment)
    assert json.loads(html.unescape(attribute)) == [dict(c) for c in FIRST_AND_LAST]
    assert "data-checks" not in explorer_html(explorer_figure(runs, max_points=50))
    for bad in ([dict(run=0, checkpoint=0, step="a")], [dict(run=-1, checkpoint=0, step="a", lambda_max="b")],
                [dict(run=0, checkpoint=0.5, step="a", lambda_max="b")], [dict(run=0, checkpoint=0, step="",
                                                                                lambda_max="b")]):
        with pytest.raises(ValueError, match="checks"):
            explorer_html(explorer_figure(runs, max_points=50), checks=bad)
    with pytest.raises(TypeError, match="ExplorerRun"):
        explorer_glue(runs)
