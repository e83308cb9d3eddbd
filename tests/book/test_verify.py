"""book/verify.py: every glued value gets a class (exact, numerical, statistical, conclusion, ignored), compared
by it according to whether the rerun ran on the record's numerical path; the summary names the conclusions that
reproduced and those that did not. Hand-made notebooks (glue outputs as myst-nb writes them); nothing executes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import verify as ver  # noqa: E402
from glued import glued_values  # noqa: E402

from hessian_book.glue import GlueClass, conclusion, exact, numerical, statistical  # noqa: E402


def notebook(path: Path, values: dict) -> Path:
    """A notebook whose cells glue ``values`` (text/plain reprs, as myst-nb's glue writes them)."""
    cells = []
    for name, value in values.items():
        cell = nbformat.v4.new_code_cell(f"glue({name!r}, ...)")
        cell.outputs = [nbformat.v4.new_output(
            "display_data", data={"application/papermill.record/text/plain": repr(value)},
            metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})]
        cells.append(cell)
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))
    return path


RECORD = {"n_steps": 300, "lam": 56.86, "lam_lo": 0.51, "lam_hi": 104.9, "gap": 43.0, "verdict": "lies inside",
          "count": 2851, "row_error": 2e-15, "seconds_train": 12.0, "fig": "<png>", "median": 31.6}
CLASSES = {"n_steps": exact(), "count": numerical(), "median": statistical(halfwidth=lambda g: 10.0, why="2 se"),
           "lam": statistical(low="lam_lo", high="lam_hi", why="over draws")}


def rows_of(tmp_path, rerun: dict, *, same_path: bool, classes=CLASSES) -> dict[str, ver.Row]:
    record = glued_values(notebook(tmp_path / "record.ipynb", RECORD))
    again = glued_values(notebook(tmp_path / "rerun.ipynb", rerun))
    return {r.name: r for r in ver.compare_glued(record, again, classes=classes, same_path=same_path)}


def test_classes_of_a_hand_made_notebook(tmp_path):
    rows = rows_of(tmp_path, RECORD, same_path=True)
    kinds = {name: r.kind for name, r in rows.items()}
    assert kinds == {"n_steps": "exact", "lam": "numerical", "lam_lo": "numerical", "lam_hi": "numerical",
                     "gap": "numerical", "verdict": "conclusion", "count": "numerical", "row_error": "conclusion",
                     "seconds_train": "ignored", "fig": "exact", "median": "numerical"}
    assert all(r.ok for r in rows.values())
    assert rows["lam"].verdict == "agrees (bitwise)" and rows["count"].verdict == "agrees (bitwise)"


def test_same_path_compares_computed_values_bitwise_and_fails_on_a_difference(tmp_path):
    rows = rows_of(tmp_path, {**RECORD, "gap": 43.0 * (1 + 1e-9), "count": 2852}, same_path=True)
    assert rows["gap"].verdict == "agrees (to rounding)"
    assert rows["count"].verdict == "DIFFERS" and not rows["count"].ok
    assert not ver.reproduced(list(rows.values()))


def test_another_path_judges_statistical_values_against_the_measured_spread(tmp_path):
    rerun = {**RECORD, "lam": 28.4, "lam_lo": 0.4, "lam_hi": 90.0, "gap": 20.7, "count": 2939, "median": 39.4}
    rows = rows_of(tmp_path, rerun, same_path=False)
    assert rows["lam"].kind == "statistical" and rows["lam"].verdict == "within range"
    assert "0.51..104.9" in rows["lam"].note and "over draws" in rows["lam"].note
    assert rows["median"].verdict == "within ±" and "±10" in rows["median"].note
    # computed values without a measured spread: shown with their relative difference, not judged, not failed
    assert rows["gap"].verdict == "not judged" and "relative difference 0.52" in rows["gap"].note
    assert rows["count"].verdict == "not judged" and rows["count"].ok
    assert ver.reproduced(list(rows.values()))
    text = ver.format_table(list(rows.values()))
    assert ("statistical 2/2 within the chapter's measured uncertainty, 4 without a measured uncertainty "
            "(0 bitwise equal, 4 differ: shown, not judged)") in text
    assert "conclusions reproduced (2): verdict, row_error" in text and "NOT reproduced (0)" in text


def test_a_statistical_value_outside_its_spread_is_reported_not_failed(tmp_path):
    rows = rows_of(tmp_path, {**RECORD, "lam": 150.0, "median": 45.0}, same_path=False)
    assert rows["lam"].verdict == "outside range" and rows["median"].verdict == "outside ±"
    assert rows["lam"].ok and ver.reproduced(list(rows.values()))
    assert "outside the measured uncertainty (reported, not failed): lam, median" in ver.summary(list(rows.values()))
    # symmetric: the record's value must also lie in the rerun's range
    rows = rows_of(tmp_path, {**RECORD, "lam": 60.0, "lam_lo": 58.0, "lam_hi": 70.0}, same_path=False)
    assert rows["lam"].verdict == "outside range"


@pytest.mark.parametrize("name, value", [("verdict", "lies above"), ("n_steps", 301), ("row_error", 1e-3),
                                         ("fig", "<gif>")])
def test_conclusions_and_exact_values_must_agree_on_any_path(tmp_path, name, value):
    for same_path in (True, False):
        rows = rows_of(tmp_path, {**RECORD, name: value}, same_path=same_path)
        assert rows[name].verdict == "DIFFERS" and not ver.reproduced(list(rows.values()))
    summary = ver.summary(list(rows.values()))
    assert "does NOT reproduce" in summary and name in summary.splitlines()[-1]
    if name in ("verdict", "row_error"):
        assert f"conclusions NOT reproduced (1): {name}" in summary


def test_a_missing_value_fails_whatever_its_class(tmp_path):
    rerun = {k: v for k, v in RECORD.items() if k != "lam"}
    rows = rows_of(tmp_path, rerun, same_path=False)
    assert rows["lam"].verdict == "MISSING in rerun" and not ver.reproduced(list(rows.values()))


def test_defaults_for_undeclared_names():
    names = {"delay_median", "delay_min", "delay_max", "x_est", "x_low", "x_high", "lam_lo", "lam_hi"}
    assert ver.default_class("grokked", "yes", names).kind == "conclusion"
    assert ver.default_class("flag", True, names).kind == "conclusion"
    assert ver.default_class("n_runs", 6, names).kind == "exact"
    assert ver.default_class("fig", "<png>", names).kind == "exact"
    assert ver.default_class("lanczos_error", 1e-14, names) == ver.ERROR_CLASS
    assert ver.default_class("ratio", 2.5, names).kind == "numerical"
    median = ver.default_class("delay_median", 4500.0, names)
    assert (median.kind, median.low, median.high) == ("statistical", "delay_min", "delay_max")
    assert ver.default_class("x_est", 1.0, names).low == "x_low"
    assert ver.default_class("lam", 1.0, names).high == "lam_hi"
    assert ver.default_class("lam_lo", 1.0, names).kind == "numerical"  # an end of the interval: no spread
    assert ver.class_for("minutes_total", 3.0).kind == "ignored"
    assert ver.class_for("n_workers", 2).kind == "ignored"


def test_glue_class_checks_its_arguments():
    with pytest.raises(ValueError, match="kind"):
        GlueClass("approximate")
    with pytest.raises(ValueError, match="low and high"):
        GlueClass("statistical", low="a")
    with pytest.raises(ValueError, match="uncertainty"):
        GlueClass("statistical")


def test_mnist_lenet_declares_every_glued_value_of_its_record():
    """The lead verifies mnist_lenet against the AMD record: every word there is an exact value or a conclusion
    (none falls through to the numerical catch-all), and the values with a measured spread are statistical."""
    classes = ver.chapter_classes("mnist_lenet")
    glued = glued_values(ROOT / "record" / "mnist_lenet.ipynb")
    kinds = {name: ver.class_for(name, value, classes, set(glued)).kind for name, value in glued.items()}
    words = {n for n, v in glued.items() if isinstance(v, str)}
    assert all(kinds[n] in ("exact", "conclusion") for n in words), {n: kinds[n] for n in words}
    assert {"seed_lmax_verdict", "seed_gap_verdict", "seed_zero_verdict", "own_lmax_verdict", "bulk_sentence",
            "gn_rank_word", "papyan_word", "zero_vs_n_word", "negative_word"} <= {n for n, k in kinds.items()
                                                                                 if k == "conclusion"}
    assert {n for n, k in kinds.items() if k == "statistical"} == {
        "final_lambda_max", "small_lambda_max", "lmax_small_size", "final_gap1", "small_gap1", "final_frac_small",
        "zero_small", "draw_lmax_median"}
    assert kinds["n_parameters"] == kinds["final_step"] == "exact"
    assert kinds["gn_rank_big"] == kinds["plateau_n"] == "numerical"  # computed counts, not set by parameters
    assert kinds["n_workers"] == kinds["seconds_total"] == "ignored"
    half = classes["draw_lmax_median"].halfwidth(glued)
    assert math.isclose(half, 2 * math.sqrt(2) * 1.2533 * (glued["draw_lmax_hi"] - glued["draw_lmax_lo"])
                        / 3.919928 / math.sqrt(30))
    # A rerun on another path as issue 20 reports one (Intel against AMD), with the median over the draws half a
    # half-width and then two half-widths away from the record's: the band answers yes, then no. (Issue 20's own
    # Intel median, 39.4, lay within the unpinned AMD record's band, 31.6 ± 17.2, and lies outside the pinned
    # record's, 22.0 ± 15.9.)
    for shift, verdict in ((0.5, "within ±"), (2.0, "outside ±")):
        rerun = dict(glued, final_test_acc=98.85, final_lambda_max=28.4, final_gap1=20.7,
                     plateau_n=glued["plateau_n"] + 1, gn_rank_big=glued["gn_rank_big"] + 48,
                     draw_lmax_median=glued["draw_lmax_median"] + shift * half)
        rows = {r.name: r for r in ver.compare_glued(glued, rerun, classes=classes, same_path=False)}
        assert rows["final_lambda_max"].verdict == "within range" and rows["final_gap1"].verdict == "within range"
        assert rows["draw_lmax_median"].verdict == verdict
        assert rows["plateau_n"].verdict == rows["gn_rank_big"].verdict == "not judged"
        if shift < 1:
            assert ver.reproduced(list(rows.values()))


def test_core_checks_classes():
    classes = ver.chapter_classes("core_checks")
    glued = glued_values(ROOT / "tests" / "golden" / "core_checks.ipynb")
    kinds = {name: ver.class_for(name, value, classes, set(glued)).kind for name, value in glued.items()}
    assert {n for n, k in kinds.items() if k == "conclusion"} == {"row_error", "dense_error", "lanczos_error"}
    assert {n for n, k in kinds.items() if k == "exact"} == {"P", "n_images", "n_check_rows", "lanczos_k"}
    assert kinds["lambda_max"] == kinds["n_negative"] == "numerical"
    assert ver.chapter_classes("no_such_chapter") == {}
