"""The golden (smoke-preset, executed) notebooks that nbval re-runs must match their Jupytext sources.

nbval (``--nbval-lax``) re-executes ``tests/golden/*.ipynb`` and compares the outputs of cells tagged
``nbval-check-output``. This test makes sure those golden copies were made from the current ``notebooks/*.md``:
an edited source without a regenerated golden copy (``python book/build.py --golden``) fails here.
"""

from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]  # tests/book/ -> the repository
SOURCES = sorted((ROOT / "notebooks").glob("*.md"))


def _code_cells(notebook) -> list[str]:
    return [cell.source.strip() for cell in notebook.cells
            if cell.cell_type == "code" and "injected-parameters" not in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_golden_copy_is_fresh(source):
    golden = ROOT / "tests" / "golden" / f"{source.stem}.ipynb"
    assert golden.is_file(), f"no golden copy for {source.name}: run python book/build.py --golden"
    assert _code_cells(jupytext.read(source)) == _code_cells(nbformat.read(golden, as_version=4)), (
        f"{golden} is stale: run python book/build.py --golden --only {source.stem}")


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_golden_copy_ran_the_smoke_preset(source):
    golden = nbformat.read(ROOT / "tests" / "golden" / f"{source.stem}.ipynb", as_version=4)
    injected = [c for c in golden.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'preset = "smoke"' in injected[0].source
    checked = [c for c in golden.cells if "nbval-check-output" in c.metadata.get("tags", [])]
    assert checked, "a golden notebook must tag at least one cell nbval-check-output"
    assert all(c.outputs for c in checked)
