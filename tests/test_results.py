"""ResultStore: parameter keys, atomic writes, resumption."""

import os

import numpy as np
import pytest
import torch

from hessian_core.results import ResultStore, parameter_key


def test_key_depends_on_values_not_key_order():
    assert parameter_key({"a": 1, "b": [1, 2]}) == parameter_key({"b": (1, 2), "a": 1})
    assert parameter_key({"a": 1}) != parameter_key({"a": 2})
    assert parameter_key({"a": 1}) != parameter_key({"a": 1.0})
    assert parameter_key({"a": np.int64(3)}) == parameter_key({"a": 3})


def test_runs_with_other_parameters_never_share_files(tmp_path):
    one = ResultStore(tmp_path, "exp", {"lr": 0.1})
    two = ResultStore(tmp_path, "exp", {"lr": 0.2})
    one.save("x", torch.ones(3))
    assert one.directory != two.directory
    assert not two.exists("x")
    assert torch.equal(ResultStore(tmp_path, "exp", {"lr": 0.1}).load("x"), torch.ones(3))


def test_cached_computes_once(tmp_path):
    store = ResultStore(tmp_path, "exp", {"seed": 0})
    calls = []

    def compute():
        calls.append(1)
        return {"eigenvalues": np.arange(4.0)}

    first = store.cached("spectrum", compute)
    second = ResultStore(tmp_path, "exp", {"seed": 0}).cached("spectrum", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["eigenvalues"], second["eigenvalues"])
    assert store.names() == ["spectrum"]


def test_a_failed_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    store = ResultStore(tmp_path, "exp", {"seed": 0})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run were killed mid-write

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save("x", torch.ones(1000))
    monkeypatch.undo()
    assert not store.exists("x")
    assert store.names() == []
    assert [p.name for p in store.directory.iterdir()] == ["params.json"]


def test_bad_names_and_parameters(tmp_path):
    with pytest.raises(ValueError, match="experiment"):
        ResultStore(tmp_path, "a/b", {})
    with pytest.raises(TypeError, match="not JSON-able"):
        ResultStore(tmp_path, "exp", {"model": object()})
    store = ResultStore(tmp_path, "exp", {})
    with pytest.raises(ValueError, match="name"):
        store.save("../x", 1)
    with pytest.raises(FileNotFoundError):
        store.load("missing")


def test_find_selects_stores_by_a_subset_of_parameters(tmp_path):
    from hessian_core.results import ResultStore

    a = ResultStore(tmp_path, "exp", dict(model=1, lr=0.1, schedule=[0, 5]))
    b = ResultStore(tmp_path, "exp", dict(model=1, lr=0.2, schedule=[0, 5]))
    ResultStore(tmp_path, "other", dict(model=1, lr=0.1))
    assert [s.key for s in ResultStore.find(tmp_path, "exp", model=1, lr=0.1)] == [a.key]
    assert sorted(s.key for s in ResultStore.find(tmp_path, "exp", model=1)) == sorted([a.key, b.key])
    assert ResultStore.find(tmp_path, "exp", model=2) == []
    assert ResultStore.find(tmp_path, "missing", model=1) == []
    assert ResultStore.find(tmp_path, "exp", schedule=(0, 5))[0].params["schedule"] == [0, 5]
