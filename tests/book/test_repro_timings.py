"""The calibration in a record's provenance and on the Reproducibility page: the wall time scaled to the reference
speed and judged against the chapter's budget; a record made before calibrations existed says "not calibrated"
and is not judged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import record as rec  # noqa: E402
import reproducibility  # noqa: E402

from hessian_book.calibration import Calibration  # noqa: E402


def calibration(ms: float) -> dict:
    return Calibration(ms_per_step=ms, step_spread=(ms - 1, ms + 1), gflops=12.5, load_before=2.0, load_after=3.0,
                       seconds=10.0, n_blocks=30, block_steps=25).as_dict()


def meta(wall: float, calibrated: dict | None) -> dict:
    return {"name": "mnist_lenet", "wall_seconds": wall, "calibration": calibrated, "code_commit": "0" * 40,
            "machine": {"cores": 2, "load_before": [2.0], "load_after": [3.0]}, "parameters": {}}


def test_provenance_stores_the_calibration_taken_before_the_run(tmp_path):
    import nbformat

    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})])
    run = rec.Run.start("chapter", {}, None, calibration=calibration(24.0))
    out = rec.provenance(run, nbformat.v4.new_notebook(), source, 100.0)
    assert out["calibration"]["ms_per_step"] == 24.0 and out["calibration"]["speed_factor"] == pytest.approx(2.0)
    assert rec.provenance(rec.Run.start("chapter", {}, None), nbformat.v4.new_notebook(), source,
                          1.0)["calibration"] is None


def test_a_calibrated_record_is_scaled_to_the_reference_speed_and_judged_against_its_budget():
    slow = meta(1500.0, calibration(24.0))  # 25 min on a machine twice as slow as the reference: 12.5 min
    assert reproducibility.reference_seconds(slow) == pytest.approx(750.0)
    assert "24.0 ms/step (×2.00), 12.5 GFLOP/s, load 2.00 → 3.00" == reproducibility.calibration_text(slow)
    status = rec.Status("mnist_lenet", "fresh", [], [], 1500.0)
    text = reproducibility.chapter_section("mnist_lenet", slow, status)
    assert "25.0 min of wall time, 12.5 min at the reference speed; budget 15 min: met." in text
    fast = meta(1500.0, calibration(6.0))  # the same wall time on a machine twice as fast: 50 min, over
    text = reproducibility.chapter_section("mnist_lenet", fast, status)
    assert "50.0 min at the reference speed; budget 15 min: missed." in text


def test_a_record_with_calibrations_before_and_after_is_judged_at_their_mean_factor():
    both = {**meta(1800.0, calibration(24.0)), "calibration_after": calibration(12.0)}  # factors 2.0 and 1.0
    assert reproducibility.reference_seconds(both) == pytest.approx(1200.0)  # 30 min / 1.5
    assert reproducibility.calibration_text(both) == ("before 24.0 ms/step (×2.00), after 12.0 (×1.00): mean ×1.50, "
                                                      "12.5 GFLOP/s, load 2.00 → 3.00")
    text = reproducibility.chapter_section("mnist_lenet", both, rec.Status("mnist_lenet", "fresh", [], [], 1800.0))
    assert "30.0 min of wall time, 20.0 min at the reference speed; budget 15 min: missed." in text
    assert "just before the execution and just after" in text
    # the one before alone (records made before the second calibration) would have judged it met: 15.0 min
    assert reproducibility.reference_seconds(meta(1800.0, calibration(24.0))) == pytest.approx(900.0)


def test_provenance_stores_the_calibration_taken_after_the_run():
    import nbformat

    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})])
    run = rec.Run.start("chapter", {}, None, calibration=calibration(24.0))
    run.calibration_after = calibration(18.0)
    out = rec.provenance(run, nbformat.v4.new_notebook(), source, 100.0)
    assert out["calibration"]["ms_per_step"] == 24.0 and out["calibration_after"]["ms_per_step"] == 18.0
    assert rec.provenance(rec.Run.start("chapter", {}, None), nbformat.v4.new_notebook(), source,
                          1.0)["calibration_after"] is None


def test_an_uncalibrated_record_says_so_and_gets_no_invented_factor():
    old = meta(1883.3, None)
    assert reproducibility.reference_seconds(old) is None
    assert reproducibility.calibration_text(old) == "not calibrated"
    text = reproducibility.chapter_section("mnist_lenet", old, rec.Status("mnist_lenet", "fresh", [], [], 1883.3))
    assert "not calibrated" in text and "not judged against its budget" in text
    assert ": met" not in text and ": missed" not in text and "reference speed;" not in text


def test_the_page_table_has_calibration_and_reference_time_columns(tmp_path, monkeypatch):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["hessian_record"] = meta(1500.0, calibration(24.0))
    rec.write_notebook(nb, tmp_path / "mnist_lenet.ipynb")
    nb.metadata["hessian_record"] = meta(177.6, None)
    rec.write_notebook(nb, tmp_path / "core_checks.ipynb")
    monkeypatch.setattr(reproducibility, "book_chapters", lambda: ["core_checks", "mnist_lenet"])
    monkeypatch.setattr(reproducibility, "staleness",
                        lambda name, record_dir: rec.Status(name, "fresh", [], [], None))
    text = reproducibility.render(record_dir=tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| {ref}`mnist_lenet"))
    assert "| 25.0 min | 24.0 ms/step (×2.00)" in row and "| 12.5 min | 15 min | met |" in row
    row = next(line for line in text.splitlines() if line.startswith("| {ref}`core_checks"))
    assert "| not calibrated | not calibrated | 3 min | not judged |" in row
    assert "not judged: some records are not calibrated" in text
