"""ResultStore: parameter keys, atomic writes, resumption."""

import os

import numpy as np
import pytest
import torch

from hessian_book.store import CorruptResultError, ResultStore, parameter_key


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
    from hessian_book.store import ResultStore

    a = ResultStore(tmp_path, "exp", dict(model=1, lr=0.1, schedule=[0, 5]))
    b = ResultStore(tmp_path, "exp", dict(model=1, lr=0.2, schedule=[0, 5]))
    ResultStore(tmp_path, "other", dict(model=1, lr=0.1))
    assert [s.key for s in ResultStore.find(tmp_path, "exp", model=1, lr=0.1)] == [a.key]
    assert sorted(s.key for s in ResultStore.find(tmp_path, "exp", model=1)) == sorted([a.key, b.key])
    assert ResultStore.find(tmp_path, "exp", model=2) == []
    assert ResultStore.find(tmp_path, "missing", model=1) == []
    assert ResultStore.find(tmp_path, "exp", schedule=(0, 5))[0].params["schedule"] == [0, 5]


def test_truncated_item_is_named_moved_aside_and_recomputed(tmp_path):
    store = ResultStore(tmp_path, "exp", {"a": 1})
    store.save("x", {"values": list(range(1000))})
    path = store.path("x")
    path.write_bytes(path.read_bytes()[:-200])  # a copy cut short
    with pytest.raises(CorruptResultError, match="x.pt"):
        store.load("x")
    calls = []
    with pytest.warns(RuntimeWarning, match=r"x\.pt is corrupt"):
        value = store.cached("x", lambda: calls.append(1) or {"values": [7]})
    assert value == {"values": [7]} and calls == [1]
    assert (path.parent / "x.pt.corrupt").is_file()  # kept for inspection, never read as data
    assert store.load("x") == {"values": [7]}


def test_flipped_bit_fails_the_checksum(tmp_path):
    store = ResultStore(tmp_path, "exp", {"a": 1})
    store.save("x", np.arange(50.0))
    data = bytearray(store.path("x").read_bytes())
    data[-30] ^= 0x01
    store.path("x").write_bytes(bytes(data))
    with pytest.raises(CorruptResultError, match="checksum mismatch"):
        store.load("x")
    with pytest.warns(RuntimeWarning):
        assert not store.verified("x")
    assert not store.exists("x")


def test_file_without_header_is_refused(tmp_path):
    store = ResultStore(tmp_path, "exp", {"a": 1})
    torch.save({"a": 1}, store.path("legacy"))  # written by something other than the store
    with pytest.raises(CorruptResultError, match="no checksum header"):
        store.load("legacy")
