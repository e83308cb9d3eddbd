"""The golden (smoke-preset, executed) notebooks must match their Jupytext sources.

``tests/book/test_smoke.py`` executes each smoke notebook once and compares every glued value, and the outputs of
the cells tagged ``nbval-check-output`` (as nbval compares them), with ``tests/golden/*.ipynb``. This test makes
sure those golden copies were made from the current ``notebooks/*.md``: an edited source without a regenerated
golden copy (``python book/build.py --golden``) fails here.
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


CHAPTERS = [s.stem for s in SOURCES]


def _parameters_cell(name: str) -> dict:
    cells = [c for c in jupytext.read(ROOT / "notebooks" / f"{name}.md").cells
             if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: exactly one cell tagged parameters"
    values: dict = {}
    exec(cells[0].source, {}, values)
    return values


@pytest.mark.parametrize("name", CHAPTERS)
def test_parameters_cell_lists_the_chapter_config_with_its_defaults(name):
    """A reader changes a chapter through its parameters cell: it must name every Config field, with the default."""
    import importlib

    module = importlib.import_module(f"hessian_book.chapters.{name}")
    parameters = _parameters_cell(name)
    assert set(parameters) == set(module.Config.field_names())
    assert module.Config.from_parameters(parameters) == module.Config()


@pytest.mark.parametrize("name", CHAPTERS)
def test_notebook_defines_no_functions_or_classes(name):
    import ast

    for cell in jupytext.read(ROOT / "notebooks" / f"{name}.md").cells:
        if cell.cell_type == "code":
            nodes = ast.walk(ast.parse(cell.source))
            assert not [n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))], (
                f"{name}: logic belongs in hessian_book.chapters.{name}, not in the notebook:\n{cell.source}")
