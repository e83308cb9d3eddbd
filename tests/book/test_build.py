"""book/build.py without executing notebooks (papermill's execution is replaced by copying a golden copy): the TOC,
the plan it prints, the record it writes, --verify's table and exit status, the smoke pages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))

import build  # noqa: E402
import record as rec  # noqa: E402
from glued import glued_values  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"


def fake_execute(calls: list, source: Path | None = None, mutate=None):
    """A stand-in for build.execute: copies the golden copy of the chapter (or ``source``) to the output."""

    def execute(name, out_path, parameters):
        calls.append((name, dict(parameters)))
        nb = nbformat.read(source or GOLDEN / f"{name}.ipynb", as_version=4)
        if mutate:
            mutate(nb)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(out_path))
        return 1.5

    return execute


def test_toc_lists_the_book_order_then_reproducibility_and_api():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for entry in toc["chapters"]]
    chapters = [f.rsplit("/", 1)[-1] for f in files if f.startswith("notebooks/_executed/")]
    assert chapters == rec._BOOK_ORDER + ["reproducibility"]
    assert files[-1] == "book/api" and files[0] == "book/method"


def test_write_toc_drops_chapters_without_a_source(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "BOOK_NOTEBOOKS", ["core_checks", "mnist_lenet"])
    toc = yaml.safe_load(build.write_toc(tmp_path / "_toc.yml").read_text())
    files = [entry["file"] for entry in toc["chapters"]]
    assert files == ["book/method", "notebooks/_executed/core_checks", "notebooks/_executed/mnist_lenet",
                     "notebooks/_executed/reproducibility", "book/api"]


def _fake_record(folder: Path, name: str, seconds: float) -> None:
    nb = nbformat.read(GOLDEN / f"{name}.ipynb", as_version=4)
    nb.metadata["hessian_record"] = {"name": name, "source_hash": rec.source_hashes(rec.read_source(name)),
                                     "wall_seconds": seconds, "code_commit": rec.code_state(name)["commit"],
                                     "parameters": {"injected": {}}}
    rec.write_notebook(nb, folder / f"{name}.ipynb")


def _estimates(**minutes):
    import cost

    return {name: cost.Estimate(name, 60.0 * m, budget_minutes=rec.GOAL_MINUTES.get(name)) if m is not None
            else "no model" for name, m in minutes.items()}


def test_plan_says_what_executes_in_dependency_order_and_how_long(tmp_path, capsys):
    _fake_record(tmp_path, "core_checks", 60.0)
    _fake_record(tmp_path, "grokking_modadd", 3000.0)
    names = ["core_checks", "fiedler_lenet", "grokking_modadd", "mnist_lenet"]
    todo, statuses = build.plan(names, {"grokking_modadd"}, record_dir=tmp_path,
                                estimated=_estimates(core_checks=2, fiedler_lenet=10, grokking_modadd=40,
                                                     mnist_lenet=None))
    out = capsys.readouterr().out
    assert todo == ["grokking_modadd"]  # only what is asked for: missing records are not executed unasked
    assert [s.state for s in statuses] == ["fresh", "missing", "fresh", "missing"]
    lines = out.splitlines()
    for name in names:  # one line per chapter
        assert len([line for line in lines if line.startswith(f"  {name} ")]) == 1
    assert ("core_checks          fresh; est. 2.0 min at the reference speed, budget 3 min: within; record 60 s"
            in out)
    assert ("grokking_modadd      fresh, forced; est. 40.0 min at the reference speed, budget 30 min: OVER; "
            "record 50.0 min") in out
    assert "mnist_lenet          missing (no record); est. unknown (no model); no record" in out
    assert "will execute 1 chapter(s), in this order: grokking_modadd; estimated 40.0 min at the reference speed" \
        in out
    assert ("  fiedler_lenet: not executed unasked; the book shows its smoke copy with a banner. Record it: "
            "`python book/build.py --record fiedler_lenet` (estimated 10.0 min at the reference speed") in out
    assert "  mnist_lenet: not executed unasked; the book shows its smoke copy with a banner. Record it: " \
        "`python book/build.py --record mnist_lenet`." in out
    todo, _ = build.plan(names, {"mnist_lenet", "fiedler_lenet"}, record_dir=tmp_path,
                         estimated=_estimates(core_checks=2, fiedler_lenet=10, grokking_modadd=40, mnist_lenet=None))
    assert todo == ["mnist_lenet", "fiedler_lenet"]  # in dependency order
    assert "estimated 10.0 min at the reference speed plus 1 chapter(s) of unknown time" in capsys.readouterr().out


def test_plan_at_the_measured_speed_and_the_commits_only_when_verbose(tmp_path, capsys, monkeypatch):
    from hessian_book.calibration import Calibration

    commits = [f"abc{i} hessian_book: change {i}" for i in range(20)]
    monkeypatch.setattr(rec, "staleness", lambda name, record_dir: rec.Status(name, "fresh", [], commits, 60.0,
                                                                               "0123456789abcdef"))
    slow = Calibration(ms_per_step=24.0, step_spread=(23.0, 25.0), gflops=10.0, load_before=0.5, load_after=0.6,
                       seconds=10.0, n_blocks=30, block_steps=25)
    build.plan(["core_checks"], {"core_checks"}, record_dir=tmp_path, calibration=slow,
               estimated=_estimates(core_checks=2))
    out = capsys.readouterr().out
    assert "est. 2.0 min at the reference speed; 4.0 min at the measured speed, budget 3 min: within" in out
    assert "20 library commit(s) since its record (0123456789)" in out
    assert not any(c in out for c in commits)
    assert "estimated 2.0 min at the reference speed (4.0 min at the measured speed)" in out
    build.plan(["core_checks"], set(), record_dir=tmp_path, verbose=True, estimated=_estimates(core_checks=2))
    out = capsys.readouterr().out
    assert all(f"      {c}" in out for c in commits)


def test_record_chapter_writes_a_lean_record_with_provenance(tmp_path, monkeypatch):
    calls = []

    def add_stderr(nb):
        code = [c for c in nb.cells if c.cell_type == "code"][-1]
        code.outputs.append(nbformat.v4.new_output("stream", name="stderr", text="a warning\n"))

    monkeypatch.setattr(build, "execute", fake_execute(calls, mutate=add_stderr))
    build.record_chapter("core_checks", record_dir=tmp_path)
    assert calls == [("core_checks", {})]  # at the defaults: nothing injected
    nb = nbformat.read(tmp_path / "core_checks.ipynb", as_version=4)
    meta = rec.record_of(nb)
    assert meta["calibration"]["ms_per_step"] == FAKE_CALIBRATION.ms_per_step  # taken just before, stored
    assert meta["calibration"]["speed_factor"] == pytest.approx(1.5)
    assert meta["wall_seconds"] == 1.5 and meta["parameters"]["injected"] == {}
    assert meta["parameters"]["defaults"]["preset"] == "full"
    assert meta["results_dir"] == str((ROOT / "results").resolve())
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert rec.staleness("core_checks", record_dir=tmp_path).state == "fresh"


def test_verify_against_a_golden_copy_agrees_and_runs_in_a_fresh_results_folder(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(build, "execute", fake_execute(calls))
    status = build.verify("core_checks", against=GOLDEN / "core_checks.ipynb", scratch=tmp_path)
    out = capsys.readouterr().out
    assert status == 0
    assert calls == [("core_checks", {"preset": "smoke", "results_dir": str(tmp_path / "results")})]
    assert "the rerun reproduces the record" in out and "seconds_hessian" in out and "ignored" in out


def _perturber(name: str, value):
    def perturb(nb):
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                if output.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                    output["data"]["application/papermill.record/text/plain"] = repr(value)
    return perturb


def _golden_on_this_path(tmp_path: Path) -> Path:
    """The golden copy of core_checks with this process's numerical path recorded, as a record made here has."""
    nb = nbformat.read(GOLDEN / "core_checks.ipynb", as_version=4)
    nb.metadata["hessian_record"] = {"name": "core_checks", "numerical_path": rec.current_numerical_path()}
    path = tmp_path / "reference" / "core_checks.ipynb"
    rec.write_notebook(nb, path)
    return path


def _golden_on_unknown_path(tmp_path: Path) -> Path:
    """The golden copy of core_checks without a recorded numerical path (as a record made before the path was kept):
    its numerical values are shown, not judged, whatever path the golden copy was executed on."""
    nb = nbformat.read(GOLDEN / "core_checks.ipynb", as_version=4)
    nb.metadata.pop("hessian_record", None)
    path = tmp_path / "unknown" / "core_checks.ipynb"
    rec.write_notebook(nb, path)
    return path


@pytest.mark.parametrize("name, factor, same_path, status, verdict", [
    ("lambda_max", 1.001, True, 1, "DIFFERS"),          # numerical on the record's path: must agree
    ("lambda_max", 1.001, False, 0, "not judged"),      # numerical on an unknown path: shown, not judged
    ("n_check_rows", 2, False, 1, "DIFFERS"),           # exact on any path
    ("row_error", 1e7, False, 1, "DIFFERS"),            # a conclusion ("at rounding level") on any path
])
def test_verify_exit_status_depends_on_the_class_and_the_path(tmp_path, monkeypatch, capsys, name, factor,
                                                              same_path, status, verdict):
    glued = glued_values(GOLDEN / "core_checks.ipynb")
    against = _golden_on_this_path(tmp_path) if same_path else _golden_on_unknown_path(tmp_path)
    monkeypatch.setattr(build, "execute", fake_execute([], mutate=_perturber(name, glued[name] * factor)))
    assert build.verify("core_checks", against=against, scratch=tmp_path / "scratch") == status
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(name + " "))
    assert verdict in row
    assert ("does NOT reproduce" in out) == (status == 1)
    assert ("same numerical path" in out) == same_path


@pytest.mark.parametrize("factor, status", [(1.0, 0), (2, 1)])
def test_verify_compare_judges_an_executed_notebook_without_executing(tmp_path, monkeypatch, capsys, factor, status):
    """--compare: the same classed table for two executed notebooks (e.g. an earlier record against the record), each
    on the path its provenance records; an exact value that differs makes it answer no."""
    monkeypatch.setattr(build, "execute", lambda *a, **k: pytest.fail("--compare executes nothing"))
    monkeypatch.setattr(build, "calibrated", lambda: pytest.fail("--compare calibrates nothing"))
    reference = _golden_on_this_path(tmp_path)
    other = nbformat.read(reference, as_version=4)
    glued = glued_values(reference)
    _perturber("n_check_rows", glued["n_check_rows"] * factor)(other)
    rec.write_notebook(other, tmp_path / "other.ipynb")
    assert build.verify("core_checks", against=reference, compare=tmp_path / "other.ipynb") == status
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("n_check_rows "))
    assert ("DIFFERS" in row) == (status == 1)
    assert "same numerical path" in out


def test_verify_refuses_a_used_results_folder(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "old.npz").write_bytes(b"x")
    monkeypatch.setattr(build, "execute", fake_execute([]))
    with pytest.raises(SystemExit, match="not empty"):
        build.verify("core_checks", against=GOLDEN / "core_checks.ipynb", scratch=tmp_path)


FAKE_CALIBRATION = None


@pytest.fixture(autouse=True)
def _fake_calibration(monkeypatch):
    """build calibrates before every record execution and --verify: a fixed stand-in here (the real one, ~10 s,
    is tested in tests/book/test_calibration.py)."""
    global FAKE_CALIBRATION
    from hessian_book.calibration import Calibration

    FAKE_CALIBRATION = Calibration(ms_per_step=18.0, step_spread=(17.0, 19.0), gflops=30.0, load_before=0.2,
                                   load_after=0.3, seconds=10.0, n_blocks=30, block_steps=25)
    monkeypatch.setattr(build, "calibrate", lambda: FAKE_CALIBRATION)


@pytest.fixture(autouse=True)
def _restore_data_dir(monkeypatch):
    """build.main makes MNIST_DATA_DIR absolute in os.environ: undo it after each test."""
    monkeypatch.setenv("MNIST_DATA_DIR", os.environ.get("MNIST_DATA_DIR", ""))


def test_from_golden_writes_lean_smoke_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "EXECUTED", tmp_path)
    monkeypatch.setattr(build, "execute", lambda *a, **k: pytest.fail("--from-golden executes nothing"))
    build.main(["--from-golden", "--no-book"])
    for name in build.BOOK_NOTEBOOKS:
        page = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        banners = [c for c in page.cells if rec.PROVENANCE_TAG in c.metadata.get("tags", [])]
        assert len(banners) == 1 and "Smoke run" in banners[0].source
        assert not [o for c in page.cells for o in c.get("outputs", []) if o.get("name") == "stderr"], name
        assert repr(glued_values(tmp_path / f"{name}.ipynb")) == repr(glued_values(GOLDEN / f"{name}.ipynb"))


def test_plan_flag_executes_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(build, "execute", lambda *a, **k: pytest.fail("--plan executes nothing"))
    monkeypatch.setattr(build, "RECORD", tmp_path)
    build.main(["--plan"])
    out = capsys.readouterr().out
    assert f"nothing to execute: {len(build.BOOK_NOTEBOOKS)} chapter(s) without a fresh record" in out


def test_main_command_computes_nothing_unasked_and_banners_what_has_no_record(monkeypatch, capsys, tmp_path):
    """A fresh clone without records: every page from its smoke copy, each with a banner naming its --record
    command; a stale record is shown as it stands, with the same hint; nothing executes."""
    record_dir, executed = tmp_path / "record", tmp_path / "executed"
    _fake_record(record_dir, "core_checks", 60.0)
    stale = nbformat.read(record_dir / "core_checks.ipynb", as_version=4)
    stale.metadata["hessian_record"]["source_hash"] = {"code": "old", "parameters": "old"}
    stale.metadata["papermill"]["parameters"] = {}  # as a record at the defaults
    rec.write_notebook(stale, record_dir / "core_checks.ipynb")
    monkeypatch.setattr(build, "RECORD", record_dir)
    monkeypatch.setattr(build, "EXECUTED", executed)
    monkeypatch.setattr(build, "execute", lambda *a, **k: pytest.fail("the main command executes nothing unasked"))
    monkeypatch.setattr(build, "calibrated", lambda: pytest.fail("nothing to calibrate for"))
    monkeypatch.setattr(build, "build_book", lambda smoke: None)
    monkeypatch.setattr(build, "check_tools", lambda **k: None)
    build.main([])
    out = capsys.readouterr().out
    for name in build.BOOK_NOTEBOOKS:
        page = nbformat.read(executed / f"{name}.ipynb", as_version=4)
        banners = [c.source for c in page.cells if rec.PROVENANCE_TAG in c.metadata.get("tags", [])]
        assert len(banners) == 1, name
        assert f"`python book/build.py --record {name}`" in banners[0], name
        if name == "core_checks":
            assert "This record is stale" in banners[0]
        else:
            assert "Not recorded yet: a smoke run" in banners[0]
            assert repr(glued_values(executed / f"{name}.ipynb")) == repr(glued_values(GOLDEN / f"{name}.ipynb"))
        assert f"note: {name} has no fresh record" in out


def test_unknown_chapter_is_named(monkeypatch):
    with pytest.raises(SystemExit, match="no notebooks/<name>.md for \\['nope'\\]"):
        build.main(["--record", "nope"])


def test_api_page_documents_every_public_name_of_hessian_core():
    import re

    import hessian_core

    text = (ROOT / "book" / "api.md").read_text()
    documented = set(re.findall(r"\.\. auto(?:function|class):: hessian_core\.(\w+)", text))
    assert documented == set(hessian_core.__all__)
    assert "{eval-rst}" in text


def test_config_enables_autodoc_offline_mathjax_and_visible_warnings():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx-mathjax-offline"} <= set(
        config["sphinx"]["extra_extensions"])
    assert config["sphinx"]["config"]["mathjax_path"] == "mathjax/tex-chtml.js"
    assert config["sphinx"]["config"]["keep_warnings"] is True
    assert config["execute"]["execute_notebooks"] == "off"


def test_sphinx_assets_drops_duplicate_scripts_only():
    import sphinx_assets

    class Script:
        def __init__(self, filename, **attributes):
            self.filename, self.attributes = filename, attributes

    thebe = Script(None, body='const THEBE_JS_URL = "x"')
    scripts = [Script("a.js"), thebe, Script("", body='const THEBE_JS_URL = "x"'), Script("a.js", defer="defer"),
               Script("b.js")]
    context = {"script_files": scripts}
    sphinx_assets.dedupe_scripts(None, "page", "page.html", context, None)
    assert [(s.filename, s.attributes) for s in context["script_files"]] == [
        ("a.js", {}), (None, {"body": 'const THEBE_JS_URL = "x"'}), ("a.js", {"defer": "defer"}), ("b.js", {})]
