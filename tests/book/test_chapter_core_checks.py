"""The core-checks chapter: its Config matches the notebook, bad parameters are named before any work, and the
checks it runs (moved out of the notebook) compare what they claim to compare."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch
from torch import nn

from hessian_book.chapters import core_checks, mnist_lenet
from hessian_book.config import ConfigError

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "core_checks.md"


def _notebook_cells(tag: str | None = None) -> list:
    cells = [c for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
    return cells if tag is None else [c for c in cells if tag in c.metadata.get("tags", [])]




def test_notebook_defines_no_functions_and_glues_what_the_result_produces():
    for cell in _notebook_cells():
        tree = ast.parse(cell.source)
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], cell.source
    text = NOTEBOOK.read_text()
    roles = set(re.findall(r"\{glue:text\}`([A-Za-z_]\w*)", text))
    fake = core_checks.Result(
        config=core_checks.Config(), n_parameters=3, row_error=0.0, dense_error=0.0, lanczos_error=0.0,
        eigenvalues=np.array([-1.0, 0.5, 2.0]), stats=core_checks.spectrum_stats(np.array([-1.0, 0.5, 2.0])),
        linkage=np.zeros((2, 4)), heights_equal=True, counts_equal=True, gaps=np.array([[1.5, 0.5, 2.0]]),
        timings=dict(hessian=1.0, eig=2.0))
    glued = fake.glued()
    assert roles == set(glued)
    assert glued["largest_gap"] == 1.5 and glued["largest_gap_upper"] == 2.0 and glued["n_negative"] == 1


@pytest.mark.parametrize("parameters, name", [
    ({"n_images": 0}, "n_images="), ({"n_images": 60001}, "n_images="), ({"n_images": 2.5}, "n_images="),
    ({"train_steps": -1}, "train_steps="), ({"train_steps": True}, "train_steps="),
    ({"lanczos_k": 2998}, "lanczos_k="), ({"n_check_rows": 5995}, "n_check_rows="),
    ({"seed": -1}, "seed="), ({"data_dir": 3}, "data_dir="), ({"preset": "fast"}, "preset="),
])
def test_bad_parameters_are_named_before_any_work(monkeypatch, parameters, name):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the parameters were checked")

    monkeypatch.setattr(core_checks, "load_mnist", no_work)
    monkeypatch.setattr(core_checks, "train_briefly", no_work)
    with pytest.raises(ConfigError, match=name):
        core_checks.run(core_checks.Config.from_parameters(parameters))


def test_presets_build_and_explicit_values_override_them():
    smoke = core_checks.Config.from_parameters({"preset": "smoke"})
    assert (smoke.n_images, smoke.train_steps, smoke.lanczos_k, smoke.n_check_rows) == (10, 20, 5, 16)
    assert core_checks.Config.from_parameters({"preset": "full"}) == core_checks.Config()
    assert core_checks.Config.from_parameters({"preset": "smoke", "lanczos_k": 7}).lanczos_k == 7
    assert core_checks.Config.from_parameters({"preset": "smoke", "seed": 3}).seed == 3


def test_training_recipe_is_the_mnist_chapters():
    mnist = mnist_lenet.Config()
    assert (core_checks.LR, core_checks.MOMENTUM, core_checks.BATCH_SIZE) == (mnist.lr, mnist.momentum,
                                                                               mnist.batch_size)


def test_batch_indices_walk_the_order_and_cut_short_at_its_end():
    order = torch.arange(300)
    assert core_checks.batch_indices(order, 0, 128).tolist() == list(range(128))
    assert core_checks.batch_indices(order, 2, 128).tolist() == list(range(256, 300))  # 44, no wrap-around
    assert core_checks.batch_indices(order, 3, 128).tolist() == list(range(84, 212))  # 384 mod 300 = 84


def test_train_briefly_is_seeded_and_lowers_the_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = (x[:, 0] > 0).long()

    def model():
        torch.manual_seed(1)
        return nn.Linear(4, 2)

    before = nn.functional.cross_entropy(model()(x), y).item()
    a = core_checks.train_briefly(model(), x, y, steps=30, seed=5, progress=False)
    b = core_checks.train_briefly(model(), x, y, steps=30, seed=5, progress=False)
    c = core_checks.train_briefly(model(), x, y, steps=30, seed=6, progress=False)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert nn.functional.cross_entropy(a(x), y).item() < 0.5 * before


class _Matrix:
    def __init__(self, A):
        self.A = A

    def matmat(self, X):
        return self.A @ X


def test_row_error_by_hand():
    A = np.array([[2.0, 1.0, 0.0], [1.0, 4.0, -1.0], [0.0, -1.0, 3.0]])
    H = A.copy()
    H[1, 2] += 0.2  # a wrong entry in row 1
    assert core_checks.row_error(H, _Matrix(A), np.array([1])) == pytest.approx(0.2 / 4.0)
    assert core_checks.row_error(H, _Matrix(A), np.array([0, 2])) == 0.0  # rows 0 and 2 are right
    assert core_checks.row_error(H, _Matrix(A), np.array([2, 1])) == pytest.approx(0.2 / 4.0)


def test_relative_error_by_hand():
    assert core_checks.relative_error([1.0, 2.0], [1.0, 2.5], [-10.0, 4.0]) == pytest.approx(0.05)


def test_dendrogram_matches_scipy_by_hand_and_notices_a_difference(monkeypatch):
    lam = np.array([0.0, 1.0, 3.0, 7.0])  # gaps 1, 2, 4
    eps = np.array([0.5, 1.5, 2.5, 5.0])  # 4, 3, 2, 1 clusters
    assert core_checks.cluster_counts(lam, eps).tolist() == [4, 3, 2, 1]
    assert core_checks.dendrogram_matches_scipy(lam, eps) == (True, True)
    rng = np.random.default_rng(0)
    assert core_checks.dendrogram_matches_scipy(rng.standard_normal(200) ** 3, np.logspace(-4, 1, 9)) == (True, True)

    monkeypatch.setattr(core_checks, "cluster_counts", lambda lam, e: np.array([len(lam)]))
    assert core_checks.dendrogram_matches_scipy(lam, eps) == (True, False)
    real_linkage = core_checks.eigen_linkage

    def shifted(lam):
        Z = real_linkage(lam)
        Z[-1, 2] *= 1 + 1e-12
        return Z

    monkeypatch.setattr(core_checks, "eigen_linkage", shifted)
    assert core_checks.dendrogram_matches_scipy(lam, eps)[0] is False


def test_tolerance_aware_negative_count_leaves_out_rounding_level_negatives():
    from hessian_core import spectrum_stats

    lam = np.array([-2.0, -1e-16, -1e-17, 0.0, 3e-17, 1.0, 4.0])
    tol = 4.0 * len(lam) * np.finfo(float).eps  # max|λ| · n · eps, numpy.linalg.matrix_rank's convention
    fake = core_checks.Result(
        config=core_checks.Config(), n_parameters=7, row_error=0.0, dense_error=0.0, lanczos_error=0.0,
        eigenvalues=lam, stats=spectrum_stats(lam), linkage=np.zeros((6, 4)), heights_equal=True,
        counts_equal=True, gaps=np.array([[3.0, 1.0, 4.0]]), timings=dict(hessian=1.0, eig=2.0))
    glued = fake.glued()
    assert glued["n_negative"] == 3 and glued["n_negative_tol"] == 1 and glued["n_near_zero"] == 4
    assert glued["zero_tol"] == pytest.approx(tol)
