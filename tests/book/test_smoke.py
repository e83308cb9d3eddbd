"""Every smoke notebook executed once per test session and compared, glued value by glued value, with its golden copy.

Each chapter is executed at ``preset="smoke"`` exactly once (``book/build.py``'s :func:`execute_smoke`), two at a
time on worker processes (:func:`build.execute_smoke_parallel`: the smoke kernels compute on one thread each, and
the machine has two cores), the chapters it reads first (``record.DEPENDS_ON``: ``mnist_lenet`` and
``grokking_modadd`` before ``fiedler_lenet``; ``grokking_modadd`` and ``mlp_depth_modadd`` before
``mechanistic_modadd``), all into ONE results folder of the session, so the MNIST, grokking and depth smoke runs are trained once and the Fiedler and mechanistic chapters read
them. The executed notebooks go to ``notebooks/_executed/``, where ``book/build.py --from-executed`` (CI's next
step) builds the smoke book from them without executing anything again.

Each execution is then compared with the committed golden copy ``tests/golden/<name>.ipynb`` by
:func:`build.compare_smoke`: every glued value by ``book/verify.py``'s comparison (exact values and conclusions
exactly; numerical values to rounding where both ran on the same pinned numerical path; wall times ignored), and
the outputs of the cells tagged ``nbval-check-output`` as nbval compares them. This replaces nbval's re-execution
of the golden copies (``--nbval-lax``), which compared only those tagged cells' outputs and no glued value: the
same cells are compared by nbval's own rule, every cell must execute without an error (papermill raises, as
nbval does), and every glued value is compared too. A change that moves a number fails here unless its golden
copy changes in the same commit (``python book/build.py --golden``).

Deselect these (the slow part of the suite) with ``-m "not smoke"``. pytest's slowest-tests list charges every
execution to the first smoke test that asks for one; ``-s`` prints each chapter's own wall time.
"""

from __future__ import annotations

import json

import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import build  # noqa: E402
import record as rec  # noqa: E402
from glued import glued_values  # noqa: E402
from verify import format_table, reproduced  # noqa: E402

CHAPTERS = rec.execution_order(build.BOOK_NOTEBOOKS, book=build.BOOK_NOTEBOOKS)


class SmokeSession:
    """Executes each chapter at most once per test session into one results folder: on the first request, every
    chapter the session's selected smoke tests ask for (and the chapters they read), two at a time in dependency
    order (:func:`build.execute_smoke_parallel`).

    A chapter whose execution failed is not executed again: it and the chapters depending on it fail with the
    original error."""

    def __init__(self, out_dir: Path, results_dir: Path, wanted: list[str] | None = None):
        self.out_dir, self.results_dir = out_dir, results_dir
        self.wanted = list(wanted) if wanted else list(CHAPTERS)
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    def _execute(self, names: list[str]) -> None:
        todo = set(names)
        while True:  # and what they read
            more = {d for n in todo for d in rec.DEPENDS_ON.get(n, ()) if d in build.BOOK_NOTEBOOKS} - todo
            if not more:
                break
            todo |= more
        todo -= set(self.seconds) | set(self.errors)
        for name in rec.execution_order(list(todo), book=build.BOOK_NOTEBOOKS):
            skipped = build.dependency_failed(name, self.errors)  # a chapter it reads failed earlier
            if skipped:
                self.errors[name] = skipped
                todo.discard(name)
        if not todo:
            return
        start = time.perf_counter()
        seconds, errors = build.execute_smoke_parallel(sorted(todo), self.out_dir, self.results_dir)
        self.seconds.update(seconds)
        self.errors.update(errors)
        print(f"\nsmoke executions of {len(todo)} chapters: {time.perf_counter() - start:.1f} s "
              f"({sum(seconds.values()):.1f} s one after another; load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()))

    def executed(self, name: str) -> Path:
        self._execute(self.wanted + [name])
        if name in self.errors:
            raise RuntimeError(f"the smoke execution of {name} failed:\n{self.errors[name]}")
        return self.out_dir / f"{name}.ipynb"


def _wanted(session) -> list[str]:
    """The chapters this session's selected smoke tests of this file execute (all, if a test reads them all)."""
    wanted: set[str] = set()
    for item in session.items:
        if Path(str(item.fspath)) != Path(__file__) or "smoke" not in getattr(item, "fixturenames", ()):
            continue
        name = getattr(getattr(item, "callspec", None), "params", {}).get("name")
        wanted.update([name] if name in CHAPTERS else CHAPTERS)
    return sorted(wanted)


@pytest.fixture(scope="session")
def smoke(request, tmp_path_factory) -> SmokeSession:
    # Notebooks run with cwd notebooks/: the data location must be absolute (as book/build.py sets it).
    os.environ.setdefault("MNIST_DATA_DIR", str(ROOT / "data" / "mnist"))
    return SmokeSession(build.EXECUTED, tmp_path_factory.mktemp("smoke-results"), _wanted(request.session))


def _problems(name: str, rows, path_note: str) -> str:
    return (f"{name}: the smoke execution does not reproduce tests/golden/{name}.ipynb\n"
            f"{format_table(rows, only_problems=True, path_note=path_note)}\n"
            f"If the change is intended, regenerate the golden copies and commit them with it:\n"
            f"  python book/build.py --golden")


@pytest.mark.smoke
@pytest.mark.parametrize("name", CHAPTERS)
def test_smoke_execution_reproduces_every_glued_value_of_its_golden_copy(smoke, name):
    rows, path_note = build.compare_smoke(name, smoke.executed(name))
    glued = [r for r in rows if not r.name.startswith("[")]
    assert sum(r.agrees and r.kind != "ignored" for r in glued) >= 5, f"{name}: hardly a glued value compared"
    assert any(r.name.startswith(f"[{build.CHECKED_TAG}") for r in rows), f"{name}: no nbval-checked cell"
    assert reproduced(rows), _problems(name, rows, path_note)


@pytest.mark.smoke
def test_smoke_executions_shared_one_results_folder(smoke):
    """Every chapter's execution was given the session's results folder (the dependents read their runs there)."""
    for name in CHAPTERS:
        notebook = nbformat.read(smoke.executed(name), as_version=4)
        assert rec.executed_parameters(notebook) == {"preset": "smoke", "results_dir": str(smoke.results_dir.resolve())}
    assert build.check_smoke_pages({n: smoke.out_dir / f"{n}.ipynb" for n in CHAPTERS}) == []


# ---------------------------------------------------------------------------------------------------------------
# Without executing anything: the comparison itself (negative and positive controls), the shared folder reaching
# the nested configurations, the pages check.


def _doctor(path: Path, out: Path, name: str, value) -> Path:
    """A copy of the notebook at ``path`` with the glued value ``name`` replaced by ``value``."""
    notebook = nbformat.read(path, as_version=4)
    hits = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if record and record["name"] == name:
                output["data"][record["mime_prefix"] + "text/plain"] = repr(value)
                hits += 1
    assert hits == 1, name
    rec.write_notebook(notebook, out)
    return out


def _on_this_path(path: Path, out: Path) -> Path:
    """A copy of a golden notebook stamped with this process's numerical path (as execute_smoke stamps one)."""
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["hessian_record"] = {"name": path.stem, "numerical_path": rec.current_numerical_path(),
                                           "step_backend": "eager"}
    rec.write_notebook(notebook, out)
    return out


def _with_backend(path: Path, out: Path, backend: str) -> Path:
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["hessian_record"]["step_backend"] = backend
    rec.write_notebook(notebook, out)
    return out


def _on_another_path(path: Path, out: Path) -> Path:
    """A copy stamped with a numerical path other than this process's (another CPU's MKL branch)."""
    notebook = nbformat.read(path, as_version=4)
    record = notebook.metadata.setdefault("hessian_record", {})
    other = json.loads(json.dumps(record.get("numerical_path") or rec.current_numerical_path()))
    other.setdefault("settings", {})["MKL_CBWR"] = "COMPATIBLE"
    other["mkl_cnr"] = "COMPATIBLE"
    record["numerical_path"] = other
    rec.write_notebook(notebook, out)
    return out


def _first(glued: dict, kind) -> str:
    from verify import class_for, chapter_classes

    names = set(glued)
    return next(n for n, v in glued.items() if isinstance(v, kind) and not isinstance(v, bool)
                and class_for(n, v, chapter_classes("grokking_modadd"), names).kind == (
                    "numerical" if kind is float else "exact" if kind is int else "conclusion"))


@pytest.fixture(scope="module")
def golden_pair(tmp_path_factory):
    """(golden copy, the same notebook) of grokking_modadd, both on this process's numerical path."""
    tmp = tmp_path_factory.mktemp("golden-pair")
    golden = _on_this_path(build.GOLDEN / "grokking_modadd.ipynb", tmp / "golden" / "grokking_modadd.ipynb")
    return golden, glued_values(golden), tmp


def test_an_identical_copy_reproduces_every_glued_value(golden_pair):
    golden, glued, _ = golden_pair
    rows, _ = build.compare_smoke("grokking_modadd", golden, golden)
    assert reproduced(rows)
    assert sum(r.verdict == "agrees (bitwise)" for r in rows) >= 10
    assert len([r for r in rows if not r.name.startswith("[")]) == len(glued)


@pytest.mark.parametrize("kind, change", [
    (float, lambda v: v * (1 + 1e-4) if v else 1e-3),  # a computed number moved beyond rounding
    (int, lambda v: v + 1),                              # a count
    (str, lambda v: v + " (changed)"),                   # words
])
def test_a_doctored_golden_value_fails_the_comparison(golden_pair, kind, change):
    golden, glued, tmp = golden_pair
    name = _first(glued, kind)
    doctored = _doctor(golden, tmp / f"doctored-{kind.__name__}" / "grokking_modadd.ipynb", name, change(glued[name]))
    rows, _ = build.compare_smoke("grokking_modadd", doctored, golden)
    assert not reproduced(rows)
    assert [r.name for r in rows if not r.ok] == [name]


def test_a_number_moved_within_rounding_or_a_wall_time_still_agrees(golden_pair):
    golden, glued, tmp = golden_pair
    name = _first(glued, float)
    nudged = _doctor(golden, tmp / "nudged" / "grokking_modadd.ipynb", name, glued[name] * (1 + 1e-9))
    assert reproduced(build.compare_smoke("grokking_modadd", nudged, golden)[0])
    wall = next(n for n in glued if rec.is_time_like(n) and isinstance(glued[n], float))
    slower = _doctor(golden, tmp / "slower" / "grokking_modadd.ipynb", wall, glued[wall] * 3)
    assert reproduced(build.compare_smoke("grokking_modadd", slower, golden)[0])


def test_numerical_values_are_not_judged_across_numerical_paths(golden_pair):
    """The committed copy and a rerun on another path: a moved computed number is shown, not failed; a moved
    count still fails."""
    golden, glued, tmp = golden_pair
    name = _first(glued, float)
    other = _on_another_path(golden, tmp / "other-path" / "stamped.ipynb")
    moved = _doctor(other, tmp / "other-path" / "grokking_modadd.ipynb", name, glued[name] * 1.01)
    rows, note = build.compare_smoke("grokking_modadd", moved, golden)
    assert reproduced(rows) and "numerical paths differ" in note
    count = _first(glued, int)
    moved = _doctor(moved, tmp / "other-path-count" / "grokking_modadd.ipynb", count, glued[count] + 1)
    assert not reproduced(build.compare_smoke("grokking_modadd", moved, golden)[0])


def test_numerical_values_are_not_judged_across_step_backends(golden_pair):
    """Compiled and eager training steps round differently: a copy trained with the other backend is another
    numerical course."""
    from hessian_book import training

    assert build.STEP_BACKEND_ENV == training.STEP_BACKEND_ENV
    golden, glued, tmp = golden_pair
    name = _first(glued, float)
    moved = _doctor(golden, tmp / "compiled" / "grokking_modadd.ipynb", name, glued[name] * 1.01)
    assert not reproduced(build.compare_smoke("grokking_modadd", moved, golden)[0])
    compiled = _with_backend(moved, tmp / "compiled" / "grokking_modadd.ipynb", "compiled")
    rows, note = build.compare_smoke("grokking_modadd", compiled, golden)
    assert reproduced(rows) and "step backend: eager vs compiled" in note


def test_a_doctored_nbval_checked_output_fails_the_comparison(golden_pair):
    golden, _, tmp = golden_pair
    notebook = nbformat.read(golden, as_version=4)
    cell = next(c for c in notebook.cells if build.CHECKED_TAG in c.metadata.get("tags", []))
    cell.outputs[0]["text"] = cell.outputs[0]["text"].replace("True", "False", 1)
    rec.write_notebook(notebook, tmp / "doctored-output" / "grokking_modadd.ipynb")
    rows, _ = build.compare_smoke("grokking_modadd", tmp / "doctored-output" / "grokking_modadd.ipynb", golden)
    assert [r.name for r in rows if not r.ok] == [f"[{build.CHECKED_TAG} cell {notebook.cells.index(cell)}]"]


def test_a_missing_glued_value_fails_the_comparison(golden_pair):
    golden, glued, tmp = golden_pair
    notebook = nbformat.read(golden, as_version=4)
    name = _first(glued, float)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("metadata", {}).get("scrapbook", {}).get("name") != name]
    rec.write_notebook(notebook, tmp / "missing" / "grokking_modadd.ipynb")
    rows, _ = build.compare_smoke("grokking_modadd", tmp / "missing" / "grokking_modadd.ipynb", golden)
    assert [(r.name, r.verdict) for r in rows if not r.ok] == [(name, "MISSING in rerun")]


def test_dependent_smoke_configs_read_the_shared_results_folder(tmp_path):
    """The Fiedler and mechanistic smoke presets pass the folder they are given on to the chapters they read."""
    from hessian_book.chapters import fiedler_lenet, mechanistic_modadd

    folder = str(tmp_path)
    f = fiedler_lenet.Config.from_parameters({"preset": "smoke", "results_dir": folder})
    m = mechanistic_modadd.Config.from_parameters({"preset": "smoke", "results_dir": folder})
    assert {f.results_dir, f.mnist.results_dir, f.grokking.results_dir} == {folder}
    assert {m.results_dir, m.grokking.results_dir, m.depth.results_dir} == {folder}
    assert f.mnist.preset == f.grokking.preset == m.grokking.preset == m.depth.preset == "smoke"


def _pages(tmp_path: Path, folders: list[str]) -> dict[str, Path]:
    pages = {}
    for name, folder in zip(build.BOOK_NOTEBOOKS, folders):
        notebook = nbformat.read(build.GOLDEN / f"{name}.ipynb", as_version=4)
        notebook.metadata["hessian_record"] = {"name": name, "parameters": {"injected": {
            "preset": "smoke", "results_dir": folder}}}
        pages[name] = tmp_path / f"{name}.ipynb"
        rec.write_notebook(notebook, pages[name])
    return pages


def test_smoke_pages_check_rejects_pages_of_different_sessions(tmp_path):
    n = len(build.BOOK_NOTEBOOKS)
    one = build.check_smoke_pages(_pages(tmp_path / "one", ["/tmp/a"] * n))
    assert not [p for p in one if "one smoke session" in p]
    two = build.check_smoke_pages(_pages(tmp_path / "two", ["/tmp/a"] * (n - 1) + ["/tmp/b"]))
    assert [p for p in two if "one smoke session" in p]
    pages = _pages(tmp_path / "gap", ["/tmp/a"] * n)
    first = build.BOOK_NOTEBOOKS[0]
    pages[first].unlink()
    assert any(p.startswith(f"{first}: no ") for p in build.check_smoke_pages(pages))


def test_smoke_pages_check_rejects_a_page_executed_from_other_code(tmp_path):
    pages = _pages(tmp_path, ["/tmp/a"] * len(build.BOOK_NOTEBOOKS))
    name = build.BOOK_NOTEBOOKS[0]
    notebook = nbformat.read(pages[name], as_version=4)
    next(c for c in notebook.cells if c.cell_type == "code").source += "\nx = 1"
    rec.write_notebook(notebook, pages[name])
    assert any(p.startswith(f"{name}: ") and "other code" in p for p in build.check_smoke_pages(pages))


def _fake_execute(calls: list):
    """A stand-in for build.execute: the unexecuted source with papermill's parameters, as an execution leaves it."""
    import jupytext

    def execute(name, out_path, parameters):
        calls.append((name, dict(parameters)))
        notebook = jupytext.read(build.NOTEBOOKS / f"{name}.md")
        notebook.metadata["papermill"] = {"parameters": dict(parameters)}
        rec.write_notebook(notebook, out_path)
        return 1.5

    return execute


@pytest.mark.parametrize("flag, target", [("--golden", "GOLDEN"), ("--preset", "EXECUTED")])
def test_golden_and_preset_smoke_execute_each_chapter_once_in_dependency_order_sharing_one_folder(
        tmp_path, monkeypatch, flag, target):
    calls = []
    monkeypatch.setattr(build, "execute", _fake_execute(calls))
    monkeypatch.setattr(build, "SMOKE_WORKERS", 1)  # in this process, where the stand-in is
    monkeypatch.setattr(build, target, tmp_path)
    monkeypatch.setenv("MNIST_DATA_DIR", os.environ.get("MNIST_DATA_DIR", ""))  # build.main rewrites it
    build.main([flag, "smoke", "--no-book"] if flag == "--preset" else [flag])
    names = [name for name, _ in calls]
    assert sorted(names) == sorted(build.BOOK_NOTEBOOKS)
    for name, dependencies in rec.DEPENDS_ON.items():
        assert all(names.index(d) < names.index(name) for d in dependencies if d in names)
    folders = {parameters["results_dir"] for _, parameters in calls}
    assert len(folders) == 1 and all(p["preset"] == "smoke" for _, p in calls)
    assert build.check_smoke_pages({n: tmp_path / f"{n}.ipynb" for n in build.BOOK_NOTEBOOKS}) == []
    meta = rec.record_of(nbformat.read(tmp_path / f"{names[0]}.ipynb", as_version=4)) or {}
    assert meta.get("numerical_path") == rec.current_numerical_path()
    assert meta.get("step_backend") == os.environ[build.STEP_BACKEND_ENV] == "eager"  # tests/conftest.py's


def test_from_executed_builds_smoke_pages_without_executing_and_refuses_a_mixed_set(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "EXECUTED", tmp_path)
    monkeypatch.setenv("MNIST_DATA_DIR", os.environ.get("MNIST_DATA_DIR", ""))
    monkeypatch.setattr(build, "execute", _fake_execute([]))
    build.execute_smoke_all(build.BOOK_NOTEBOOKS, tmp_path, tmp_path / "results", workers=1)
    monkeypatch.setattr(build, "execute", lambda *a, **k: pytest.fail("--from-executed executes nothing"))
    build.main(["--from-executed", "--no-book"])
    for name in build.BOOK_NOTEBOOKS:
        page = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        banners = [c for c in page.cells if rec.PROVENANCE_TAG in c.metadata.get("tags", [])]
        assert len(banners) == 1 and "Smoke run" in banners[0].source
    monkeypatch.setattr(build, "execute", _fake_execute([]))
    build.execute_smoke(build.BOOK_NOTEBOOKS[0], tmp_path / f"{build.BOOK_NOTEBOOKS[0]}.ipynb", tmp_path / "other")
    with pytest.raises(SystemExit, match="one smoke session"):
        build.main(["--from-executed", "--no-book"])


def test_smoke_session_executes_each_chapter_once_after_its_dependencies(tmp_path, monkeypatch):
    calls = []

    def fake(name, path, results_dir):
        calls.append((name, results_dir))
        if name == "grokking_modadd":
            raise RuntimeError("diverged")
        return 1.0

    monkeypatch.setattr(build, "execute_smoke", fake)
    monkeypatch.setattr(build, "SMOKE_WORKERS", 1)  # in this process, where the stand-in is
    session = SmokeSession(tmp_path, tmp_path / "results", wanted=["mnist_lenet"])
    session.executed("mnist_lenet")
    assert [name for name, _ in calls] == ["mnist_lenet"]  # only what the selected tests ask for
    with pytest.raises(RuntimeError, match="diverged"):
        session.executed("grokking_modadd")
    for dependent in ("fiedler_lenet", "mechanistic_modadd"):  # each names the failed dependency, not re-executed
        with pytest.raises(RuntimeError, match="smoke execution of grokking_modadd failed"):
            session.executed(dependent)
    session.executed("mlp_depth_modadd")
    session.executed("mnist_lenet")
    assert [name for name, _ in calls] == ["mnist_lenet", "grokking_modadd", "mlp_depth_modadd"]
    assert {folder for _, folder in calls} == {tmp_path / "results"}
    calls.clear()
    everything = SmokeSession(tmp_path / "all", tmp_path / "results-all")
    everything.executed("core_checks")  # the first request executes every chapter (but grokking's readers)
    assert sorted(name for name, _ in calls) == sorted(set(CHAPTERS) - {"fiedler_lenet", "mechanistic_modadd"})
    assert sorted(everything.errors) == ["fiedler_lenet", "grokking_modadd", "mechanistic_modadd"]


def test_smoke_executions_run_two_at_a_time_each_after_what_it_reads(tmp_path, monkeypatch):
    """The scheduler on worker processes (a stand-in task that sleeps and logs): every chapter once, never more
    than two at once, two at once some of the time, each started after the chapters it reads ended; a failed
    chapter's readers are not executed and say why."""
    from tests.book import smoke_stand_in

    monkeypatch.setenv("SMOKE_STAND_IN_SECONDS", "1.0")
    (tmp_path / "results").mkdir()
    start = time.perf_counter()
    seconds, errors = build.execute_smoke_parallel(CHAPTERS, tmp_path, tmp_path / "results", workers=2,
                                                   task=smoke_stand_in.task)
    wall = time.perf_counter() - start
    assert errors == {} and sorted(seconds) == sorted(CHAPTERS)
    log = [json.loads(line) for line in (tmp_path / "results" / "log.jsonl").read_text().splitlines()]
    assert sorted(entry["name"] for entry in log) == sorted(CHAPTERS)
    pids = {entry["pid"] for entry in log}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one
    events = sorted([(e["end"], -1) for e in log] + [(e["start"], 1) for e in log])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 2
    when = {e["name"]: e for e in log}
    for name, dependencies in rec.DEPENDS_ON.items():
        assert all(when[d]["end"] <= when[name]["start"] for d in dependencies)
    assert wall < sum(seconds.values())  # the point of it: less than one after another

    monkeypatch.setenv("SMOKE_STAND_IN_SECONDS", "0.1")
    monkeypatch.setenv("SMOKE_STAND_IN_FAIL", "grokking_modadd")
    (tmp_path / "again").mkdir()
    seconds, errors = build.execute_smoke_parallel(CHAPTERS, tmp_path, tmp_path / "again", workers=2,
                                                   task=smoke_stand_in.task)
    assert errors["grokking_modadd"] == "grokking_modadd failed on purpose"
    for reader in ("fiedler_lenet", "mechanistic_modadd"):
        assert "grokking_modadd failed" in errors[reader] and reader not in seconds
    assert sorted(seconds) == sorted(set(CHAPTERS) - {"grokking_modadd", "fiedler_lenet", "mechanistic_modadd"})
    with pytest.raises(ValueError, match="workers"):
        build.execute_smoke_parallel(CHAPTERS, tmp_path, tmp_path / "again", workers=0)
