"""The paper of record's machinery (book/record.py, book/verify.py, book/reproducibility.py) on hand-made
notebooks in temporary folders and on the smoke golden copies: staleness, provenance, lean outputs, sizes, the
page's provenance note or smoke banner, and the verify table. Nothing here executes a notebook."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import record as rec  # noqa: E402
import verify as ver  # noqa: E402
from glued import glued_values, glued_values_of  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"

SOURCE = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

Some prose.

```{code-cell} ipython3
:tags: [parameters]

preset = "full"
results_dir = "../results"
n_steps = 10
```

```{code-cell} ipython3
x = n_steps * 2
```

More prose with a number {glue:text}`x`.
"""


def glue_output(name: str, text: str) -> dict:
    return nbformat.v4.new_output("display_data", data={f"application/papermill.record/text/plain": text},
                                  metadata={"scrapbook": {"mime_prefix": "application/papermill.record/",
                                                          "name": name}})


def write_source(folder: Path, name: str = "chapter", text: str = SOURCE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text(text)
    return path


def executed(glued: dict[str, str], *, injected: dict | None = None) -> nbformat.NotebookNode:
    """A hand-made 'executed' notebook: title cell, parameters, a cell with glue outputs."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter\n\nSome prose."),
                nbformat.v4.new_code_cell('preset = "full"', metadata={"tags": ["parameters"]})]
    code = nbformat.v4.new_code_cell("glue")
    code.outputs = [glue_output(k, v) for k, v in glued.items()]
    nb.cells.append(code)
    nb.metadata["papermill"] = {"parameters": injected or {}}
    return nb


def make_record(tmp_path: Path, *, glued: dict | None = None, injected: dict | None = None) -> Path:
    """record/chapter.ipynb with provenance for notebooks/chapter.md (in tmp_path)."""
    notebooks = tmp_path / "notebooks"
    source_path = write_source(notebooks) if not (notebooks / "chapter.md").exists() else notebooks / "chapter.md"
    source = rec.read_source("chapter", notebooks)
    nb = executed(glued or {"x": "20", "seconds_total": "1.5", "timings": "{'train': 1.0, 'eig': 0.5}"},
                  injected=injected)
    run = rec.Run.start("chapter", injected or {}, tmp_path / "results")
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "results" / "run.npz").write_bytes(b"0" * 1000)
    nb.metadata["hessian_record"] = rec.provenance(run, nb, source, 12.34)
    path = tmp_path / "record" / "chapter.ipynb"
    rec.write_notebook(nb, path)
    assert source_path.is_file()
    return path


# --- staleness ------------------------------------------------------------------------------------------------


def test_record_is_fresh_then_stale_after_a_code_edit_but_not_after_a_prose_edit(tmp_path):
    make_record(tmp_path)
    kwargs = dict(record_dir=tmp_path / "record", notebooks=tmp_path / "notebooks", root=tmp_path)
    assert rec.staleness("chapter", **kwargs).state == "fresh"

    source = tmp_path / "notebooks" / "chapter.md"
    source.write_text(SOURCE.replace("Some prose.", "Other prose, longer.").replace("More prose", "Prose"))
    status = rec.staleness("chapter", **kwargs)
    assert status.state == "fresh" and not status.needs_execution

    source.write_text(SOURCE.replace("x = n_steps * 2", "x = n_steps * 3"))
    status = rec.staleness("chapter", **kwargs)
    assert status.state == "stale" and status.reasons == ["its code cells changed"]

    source.write_text(SOURCE.replace("n_steps = 10", "n_steps = 11"))
    status = rec.staleness("chapter", **kwargs)
    assert status.state == "stale" and "its parameters cell changed" in status.reasons


def test_missing_record_and_record_without_provenance_or_not_at_defaults(tmp_path):
    write_source(tmp_path / "notebooks")
    kwargs = dict(record_dir=tmp_path / "record", notebooks=tmp_path / "notebooks", root=tmp_path)
    assert rec.staleness("chapter", **kwargs).state == "missing"
    rec.write_notebook(executed({"x": "20"}), tmp_path / "record" / "chapter.ipynb")
    status = rec.staleness("chapter", **kwargs)
    assert status.state == "stale" and "provenance" in status.reasons[0]
    make_record(tmp_path, injected={"preset": "smoke"})
    status = rec.staleness("chapter", **kwargs)
    assert status.state == "stale" and "not at the defaults" in status.reasons[0]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_library_changes_since_the_record_are_listed_not_counted_as_stale(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "hessian_core").mkdir()
    (tmp_path / "hessian_core" / "a.py").write_text("x = 1\n")
    write_source(tmp_path / "notebooks")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "start")
    first = _git(tmp_path, "rev-parse", "HEAD")
    assert rec.library_commits_since(first, root=tmp_path) == []
    (tmp_path / "hessian_core" / "a.py").write_text("x = 2\n")
    _git(tmp_path, "commit", "-q", "-am", "core: change x")
    (tmp_path / "notes.txt").write_text("not library\n")
    _git(tmp_path, "add", "notes.txt")
    _git(tmp_path, "commit", "-q", "-m", "notes")
    commits = rec.library_commits_since(first, root=tmp_path)
    assert len(commits) == 1 and commits[0].endswith("core: change x")
    assert "not in this clone's history" in rec.library_commits_since("0" * 40, root=tmp_path)[0]

    # a record made at the first commit stays fresh; the change is reported
    nb = executed({"x": "20"})
    run = rec.Run("chapter", {}, tmp_path / "results", code={"commit": first, "dirty": False})
    nb.metadata["hessian_record"] = rec.provenance(run, nb, rec.read_source("chapter", tmp_path / "notebooks"), 1.0)
    rec.write_notebook(nb, tmp_path / "record" / "chapter.ipynb")
    status = rec.staleness("chapter", record_dir=tmp_path / "record", notebooks=tmp_path / "notebooks",
                           root=tmp_path)
    assert status.state == "fresh" and len(status.library_commits) == 1


def test_code_state_reports_uncommitted_changes(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "hessian_book").mkdir()
    (tmp_path / "hessian_book" / "b.py").write_text("y = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "start")
    assert rec.code_state("chapter", root=tmp_path)["dirty"] is False
    (tmp_path / "hessian_book" / "b.py").write_text("y = 2\n")
    state = rec.code_state("chapter", root=tmp_path)
    assert state["dirty"] is True and state["dirty_files"] == ["hessian_book/b.py"]
    assert len(state["commit"]) == 40


def test_source_hash_ignores_injected_parameters_and_markdown():
    nb = executed({})
    before = rec.source_hashes(nb)
    nb.cells.insert(2, nbformat.v4.new_code_cell('preset = "smoke"', metadata={"tags": ["injected-parameters"]}))
    nb.cells.append(nbformat.v4.new_markdown_cell("new prose"))
    assert rec.source_hashes(nb) == before
    nb.cells[1].source = 'preset = "other"'
    after = rec.source_hashes(nb)
    assert after["parameters"] != before["parameters"] and after["code"] != before["code"]


# --- provenance -----------------------------------------------------------------------------------------------


def test_provenance_fields(tmp_path):
    path = make_record(tmp_path)
    meta = nbformat.read(path, as_version=4).metadata["hessian_record"]
    for key in ("name", "code_commit", "dirty", "date", "finished", "machine", "packages", "parameters",
                "source_hash", "results_keys", "timings", "wall_seconds", "results_written", "n_glued"):
        assert key in meta, key
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["cpu"]
    assert len(meta["machine"]["load_before"]) == 3 and len(meta["machine"]["load_after"]) == 3
    assert meta["packages"]["numpy"] and meta["packages"]["nbformat"]
    assert meta["parameters"]["defaults"] == {"preset": "full", "results_dir": "../results", "n_steps": 10}
    assert meta["parameters"]["effective"] == meta["parameters"]["defaults"]
    assert meta["timings"] == {"train": 1.0, "eig": 0.5}  # the glued `timings` wins over seconds_* names
    assert meta["wall_seconds"] == 12.3
    assert meta["results_written"] == {"bytes": 1000, "files": 1}
    assert meta["n_glued"] == 3
    # the numerical path of this (pinned: tests/conftest.py) process, which an executing kernel inherits
    path = meta["numerical_path"]
    assert path["pinned"] is True and path["aten_capability"] == "AVX2" and path["mkl_cnr"] in ("AVX2", "AUTO")
    assert path["cpu"]["model"] == meta["machine"]["cpu"] and "avx2" in path["cpu"]["flags"]
    assert path["torch"]["version"].startswith(meta["packages"]["torch"].split("+")[0])
    assert {p["internal_api"] for p in path["threadpools"]} >= {"openblas", "openmp"}


def test_timings_fall_back_to_glued_wall_times_of_the_golden_copies():
    glued = glued_values(GOLDEN / "mnist_lenet.ipynb")
    timings = rec.glued_timings(glued)
    assert "seconds_train" in timings and "seconds_hessians" in timings
    assert "n_parameters" not in timings and "hessian_samples" not in timings
    assert all(rec.is_time_like(k) for k in timings)
    assert not rec.is_time_like("n_hvp_total") and rec.is_time_like("page_seconds")


# --- lean outputs and sizes -----------------------------------------------------------------------------------


def test_lean_strips_stderr_widgets_progress_redraws_and_extra_figure_renderings():
    nb = executed({"x": "1"})
    cell = nbformat.v4.new_code_cell("work()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="RuntimeWarning: Mean of empty slice\n"),
        nbformat.v4.new_output("stream", name="stdout", text="10%|#\r50%|#####\r100%|##########\ndone\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "m"},
                                                     "text/plain": "HBox()"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "image/svg+xml": "<svg/>",
                                                     "text/plain": "<Figure>"}),
        nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=["Traceback", "ValueError"]),
    ]
    cell.metadata["execution"] = {"iopub.status.busy": "2026"}
    nb.cells.append(cell)
    nb.metadata["widgets"] = {"state": {}}
    out, removed = rec.lean(nb)
    outputs = out.cells[-1].outputs
    assert [o.output_type for o in outputs] == ["stream", "display_data", "error"]  # errors stay visible
    assert outputs[0].text == "100%|##########\ndone\n"
    assert set(outputs[1].data) == {"image/png", "text/plain"}
    assert "widgets" not in out.metadata and "execution" not in out.cells[-1].metadata
    assert any("stderr" in r and "Mean of empty slice" in r for r in removed) and len(removed) == 3
    assert len(nb.cells[-1].outputs) == 5  # the input is not modified


def test_lean_removes_the_stderr_of_the_mnist_golden_copy_and_keeps_its_glued_values():
    nb = nbformat.read(GOLDEN / "mnist_lenet.ipynb", as_version=4)
    stderr = [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    out, removed = rec.lean(nb)
    assert len(removed) >= len(stderr)
    assert not [o for c in out.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert repr(glued_values_of(out)) == repr(glued_values_of(nb))  # (repr: NaN != NaN)


def test_check_sizes_fails_loudly_on_a_large_file_and_on_a_large_total(tmp_path):
    folder = tmp_path / "record"
    for i in range(3):
        nb = executed({"x": "1"})
        nb.cells[-1].outputs.append(nbformat.v4.new_output("display_data", data={"image/png": "A" * 4000}))
        rec.write_notebook(nb, folder / f"c{i}.ipynb")
    assert rec.check_sizes(folder) == []
    with pytest.raises(rec.RecordTooLarge, match=r"c0.ipynb.*largest outputs"):
        rec.check_sizes(folder, max_file=3000)
    with pytest.raises(rec.RecordTooLarge, match="in all"):
        rec.check_sizes(folder, max_total=10_000)


def test_the_tracked_record_is_lean():
    """record/ as committed: no file over 10 MB, the whole well under 50 MB, no stderr, provenance everywhere."""
    paths = sorted(rec.RECORD.glob("*.ipynb"))
    if not paths:
        pytest.skip("no record yet")
    rec.check_sizes(rec.RECORD)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        assert rec.record_of(nb), f"{path.name}: no hessian_record metadata"
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"], path.name


# --- the page -------------------------------------------------------------------------------------------------


def test_page_of_a_golden_copy_carries_the_smoke_banner_after_the_title():
    nb = nbformat.read(GOLDEN / "core_checks.ipynb", as_version=4)
    page = rec.page(nb)
    assert page.cells[0].source.startswith("# ")
    assert "Smoke run" in page.cells[1].source and rec.PROVENANCE_TAG in page.cells[1].metadata["tags"]
    again = rec.page(page)  # idempotent: the earlier banner is replaced, not doubled
    assert sum(rec.PROVENANCE_TAG in c.metadata.get("tags", []) for c in again.cells) == 1


def test_page_of_a_record_carries_the_provenance_note(tmp_path):
    path = make_record(tmp_path)
    nb = nbformat.read(path, as_version=4)
    status = rec.Status("chapter", "fresh", [], ["abc123 core: change"], 12.3, "abc")
    page = rec.page(nb, status=status)
    note = page.cells[1].source
    assert "The record" in note and "Smoke" not in note
    assert "{ref}`reproducibility <repro-chapter>`" in note and "1 commit(s)" in note
    assert f"{nb.metadata['hessian_record']['machine']['cores']} cores" in note
    assert "Numerics: pinned numerical path on" in note and "ATen AVX2, MKL branch " in note
    del nb.metadata["hessian_record"]["numerical_path"]  # a record made before the path was kept
    assert "numerical path not recorded" in rec.page(nb, status=status).cells[1].source


# --- ordering -------------------------------------------------------------------------------------------------


def test_execution_order_respects_dependencies():
    order = rec.execution_order(["mlp_depth_modadd", "fiedler_lenet", "mechanistic_modadd", "grokking_modadd",
                                 "mnist_lenet", "core_checks"])
    assert order.index("fiedler_lenet") > max(order.index("mnist_lenet"), order.index("grokking_modadd"))
    assert order.index("mechanistic_modadd") > max(order.index("grokking_modadd"), order.index("mlp_depth_modadd"))
    assert order[0] == "core_checks"
    assert rec.execution_order(["fiedler_lenet"]) == ["fiedler_lenet"]  # absent dependencies impose nothing


def test_book_chapters_tolerate_a_missing_chapter(tmp_path):
    for name in ["core_checks", "grokking_modadd", "fiedler_lenet"]:
        write_source(tmp_path, name)
    assert rec.book_chapters(tmp_path) == ["core_checks", "grokking_modadd", "fiedler_lenet"]
    write_source(tmp_path, "mechanistic_modadd")
    assert rec.book_chapters(tmp_path) == ["core_checks", "grokking_modadd", "mechanistic_modadd", "fiedler_lenet"]


# --- verify ---------------------------------------------------------------------------------------------------


def test_verify_agrees_within_tolerance_and_ignores_wall_times():
    record = {"n": 5994, "lam": 1.2345678, "word": "rises", "seconds_train": 10.0, "minutes_total": 1.0,
              "goal_text": "met", "row_error": 3e-16, "nan_value": float("nan"), "flags": [1, 2.0],
              "keys": {"run": "abc"}, "fig": "<png>"}
    rerun = dict(record, lam=1.2345678 * (1 + 1e-9), seconds_train=99.0, minutes_total=2.0, goal_text="missed",
                 row_error=7e-15, flags=[1, 2.0000000001])
    rows = ver.compare_glued(record, rerun)
    assert all(r.ok for r in rows), ver.format_table(rows)
    verdicts = {r.name: r.verdict for r in rows}
    assert verdicts["seconds_train"].startswith("ignored") and verdicts["goal_text"].startswith("ignored")
    assert verdicts["lam"] == "agrees (to rounding)" and verdicts["nan_value"] == "agrees (bitwise)"
    table = ver.format_table(rows)
    assert "key" in table.splitlines()[0] and "class" in table.splitlines()[0]
    assert "the rerun reproduces the record" in table.splitlines()[-1]


@pytest.mark.parametrize("name, changed", [
    ("n", 5995),                     # integers exactly
    ("lam", 1.2345678 * (1 + 1e-5)),  # beyond the relative tolerance 1e-6
    ("word", "falls"),               # words exactly
    ("nan_value", 0.0),              # NaN only agrees with NaN
    ("flags", [1, 2.0, 3]),
    ("truth", 1),                    # a boolean is not an integer
])
def test_verify_reports_each_kind_of_disagreement(name, changed):
    record = {"n": 5994, "lam": 1.2345678, "word": "rises", "nan_value": float("nan"), "flags": [1, 2.0],
              "truth": True}
    rows = ver.compare_glued(record, dict(record, **{name: changed}))
    bad = [r for r in rows if not r.ok]
    assert [r.name for r in bad] == [name] and bad[0].verdict == "DIFFERS"
    assert "does NOT reproduce" in ver.format_table(rows)


def test_verify_reports_missing_names_on_either_side():
    rows = ver.compare_glued({"a": 1, "b": 2}, {"a": 1, "c": 3})
    assert {r.name: r.verdict for r in rows} == {"a": "agrees", "b": "MISSING in rerun", "c": "MISSING in record"}


def test_verify_classes_can_be_declared_per_key():
    from hessian_book.glue import ignored, numerical

    classes = {"lam": numerical(rtol=1e-3), "noise": ignored("random")}
    rows = ver.compare_glued({"lam": 1.0, "noise": 0.1}, {"lam": 1.0005, "noise": 0.9}, classes=classes)
    assert all(r.ok for r in rows)
    assert not ver.compare_glued({"lam": 1.0}, {"lam": 1.0005})[0].ok


def test_verify_on_a_golden_copy_against_itself_with_perturbed_wall_times():
    glued = glued_values(GOLDEN / "grokking_modadd.ipynb")
    rerun = {k: (v * 3 if isinstance(v, float) and rec.is_time_like(k) else v) for k, v in glued.items()}
    rows = ver.compare_glued(glued, rerun)
    assert all(r.ok for r in rows)
    assert sum(r.verdict.startswith("ignored") for r in rows) >= 10
    some_float = next(k for k, v in glued.items() if isinstance(v, float) and not math.isnan(v)
                      and not rec.is_time_like(k) and v != 0 and not k.endswith("_error"))
    rerun[some_float] = glued[some_float] * 1.01
    assert [r.name for r in ver.compare_glued(glued, rerun) if not r.ok] == [some_float]


# --- the Reproducibility page ---------------------------------------------------------------------------------


def test_reproducibility_page_with_an_empty_record_and_the_benchmarks(tmp_path):
    import reproducibility

    text = reproducibility.render(record_dir=tmp_path, smoke=True)
    assert text.startswith("# Reproducibility") and "Smoke build" in text
    for name in rec.book_chapters():
        assert f"(repro-{name})=" in text and f"--record {name}" in text
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert f"python benchmarks/{script.name}" in text
    assert "| what | alternative |" in text  # the README's benchmark table
    assert "not all chapters recorded yet" in text


def test_reproducibility_section_of_a_record(tmp_path):
    import reproducibility

    path = make_record(tmp_path)
    meta = nbformat.read(path, as_version=4).metadata["hessian_record"]
    status = rec.Status("chapter", "fresh", [], ["abc123 core: change"], 12.3, meta["code_commit"])
    text = reproducibility.chapter_section("chapter", meta, status)
    assert "(repro-chapter)=" in text and "python book/build.py --verify chapter" in text
    assert "| train | 1.0 s |" in text and "| n_steps | 10 |" in text
    assert "- **Numerics**: pinned numerical path on" in text
    meta["timings"] = {"seconds_total": 1883.3, "wall_minutes": 31.4}
    text = reproducibility.chapter_section("chapter", meta, status)
    assert "| seconds_total | 1883.3 s |" in text and "| wall_minutes | 31.4 min |" in text
    assert "abc123 core: change" in text and "cores" in text


def test_reproducibility_page_says_what_to_expect_from_the_records_numerical_paths():
    import reproducibility

    def meta(cpu, pinned=True):
        return {"numerical_path": {"pinned": pinned, "cpu": {"model": cpu, "simd_flags": ["avx2", "fma"]},
                                   "aten_capability": "AVX2" if pinned else "AVX512", "settings": {}}}

    text = reproducibility.numerics_section({"a": meta("AMD EPYC"), "b": {"date": "x"}, "c": None})
    assert "(repro-numerics)=" in text and "`MKL_CBWR=AVX2`" in text and "HESSIAN_NUMERICS=portable" in text and "HESSIAN_UNPINNED=1" in text
    assert "1 record(s) ran on the pinned path (a), on AMD EPYC" in text
    assert "1 were made before the path was pinned and recorded (b)" in text
    assert "agree bitwise (bitwise agreement is shown on AMD EPYC only" in text
    assert "whose path is not pinned (b), expect statistical agreement only" in text
    both = reproducibility.numerics_section({"a": meta("AMD EPYC"), "b": meta("Intel Xeon"), "c": meta("X", False)})
    assert "from 2 CPU models (AMD EPYC, Intel Xeon)" in both and "1 ran unpinned (c)" in both
