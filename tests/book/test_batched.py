"""Batched full-batch AdamW (hessian_book.batched) against the unbatched trainer it replaces.

Tolerance: "equal to float32 rounding" is ``torch.testing.assert_close(rtol=1e-5, atol=1e-6)`` on parameters, Adam's
moments and logged metrics (a few hundred float32 ulps at the parameters' scale, ~0.3; far below the differences
the tests also require, e.g. weight decay 0 vs 1). On the development machine (torch 2.13, CPU) the two agree bit
for bit, but batched matrix products may sum in another order elsewhere.
"""

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from hessian_book.batched import modadd_run_params, train_full_batch_adamw_batched, train_modadd_batched
from hessian_book.runs import train_modadd
from hessian_book.sharpness import adam_preconditioner
from hessian_book.store import ResultStore
from hessian_book.training import checkpoint_name

TOL = dict(rtol=1e-5, atol=1e-6)
COMMON = dict(p=11, train_fraction=0.4, d_model=8, n_heads=1, d_mlp=16, lr=3e-3, betas=[0.9, 0.98], n_steps=30,
              log_every=5, checkpoint_steps=[0, 10, 20])
# the recipe (wd 1) on two initialisations and splits, and its control (wd 0) sharing run 0's init and split
SPECS = [dict(COMMON, split_seed=0, seed=0, weight_decay=1.0), dict(COMMON, split_seed=0, seed=0, weight_decay=0.0),
         dict(COMMON, split_seed=1, seed=1, weight_decay=1.0)]
STEPS = [0, 10, 20, 30]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three runs trained batched (experiment "b") and each alone (experiment "u"), on one torch thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("batched")
        batched = train_modadd_batched(str(root), "b", SPECS, progress=False)
        alone = [train_modadd(str(root), "u", **spec, progress=False) for spec in SPECS]
        yield root, batched, alone
    finally:
        torch.set_num_threads(previous)


def _assert_same_checkpoint(a: dict, b: dict) -> None:
    assert list(a) == list(b) == ["model", "optimiser", "log"]
    assert list(a["model"]) == list(b["model"])
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], **TOL)
    oa, ob = a["optimiser"], b["optimiser"]
    assert oa["param_groups"] == ob["param_groups"]
    assert list(oa["state"]) == list(ob["state"])
    for i in oa["state"]:
        assert list(oa["state"][i]) == list(ob["state"][i])  # step, exp_avg, exp_avg_sq
        assert oa["state"][i]["step"].dtype == ob["state"][i]["step"].dtype
        assert float(oa["state"][i]["step"]) == float(ob["state"][i]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa["state"][i][key], ob["state"][i][key], **TOL)
    _assert_same_log(a["log"], b["log"])


def _assert_same_log(a: list, b: list) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert list(ra) == list(rb)
        for key in ra:
            if key != "train_seconds":
                np.testing.assert_allclose(ra[key], rb[key], rtol=TOL["rtol"], atol=TOL["atol"], err_msg=key)


def test_every_checkpoint_equals_the_unbatched_trainers(trained):
    _, batched, alone = trained
    for b, u in zip(batched, alone):
        assert b.checkpoint_steps == u.checkpoint_steps == STEPS
        assert [r["step"] for r in b.log] == list(range(0, 31, 5))
        for step in STEPS:
            _assert_same_checkpoint(b.store.load(checkpoint_name(step)), u.store.load(checkpoint_name(step)))
        _assert_same_log(b.log, u.log)
        assert all(r["train_seconds"] >= 0 for r in b.log)
        assert b.log[-1]["train_seconds"] > 0
        # the Adam preconditioner the spike analysis reads off a checkpoint
        state_b, state_u = (r.store.load(checkpoint_name(30))["optimiser"] for r in (b, u))
        np.testing.assert_allclose(adam_preconditioner(state_b), adam_preconditioner(state_u), rtol=1e-5)


def test_per_model_weight_decay_is_honoured(trained):
    _, batched, alone = trained
    decayed, plain = (r.store.load(checkpoint_name(30))["model"] for r in batched[:2])  # same init and split
    decayed_u, plain_u = (r.store.load(checkpoint_name(30))["model"] for r in alone[:2])
    differences = {name: (decayed[name] - plain[name]).abs().max().item() for name in decayed}
    assert max(differences.values()) > 1e-3  # far beyond the tolerance: the weight decay acted on run 0 only
    for name in decayed:
        torch.testing.assert_close(decayed[name] - plain[name], decayed_u[name] - plain_u[name], **TOL)
    norm = lambda state: torch.sqrt(sum((v ** 2).sum() for v in state.values())).item()  # noqa: E731
    assert norm(decayed) < norm(plain)


def test_stores_are_train_modadds(trained):
    """``train_modadd`` opens the batched runs' stores (same key) and finds them complete: it trains nothing."""
    root, batched, _ = trained
    for spec, b in zip(SPECS, batched):
        assert b.params == modadd_run_params(**spec)
        again = train_modadd(str(root), "b", **spec, progress=False)
        assert again.store.key == b.store.key
        assert again.log == b.log  # read back, train_seconds included


def _copy_store(store: ResultStore, root, experiment: str) -> ResultStore:
    target = root / experiment / store.key
    shutil.copytree(store.directory, target)
    return ResultStore(str(root), experiment, store.params)


def test_batched_resume_after_deleting_checkpoints(trained, tmp_path):
    _, batched, _ = trained
    stores = [_copy_store(b.store, tmp_path, "b") for b in batched]
    stores[0].path(checkpoint_name(30)).unlink()  # run 0 resumes from 20 ...
    stores[1].path(checkpoint_name(30)).unlink()
    stores[1].path(checkpoint_name(20)).unlink()  # ... but together with run 1, from 10; run 2 is complete
    torch.set_num_threads(1)
    resumed = train_modadd_batched(str(tmp_path), "b", SPECS, progress=False)
    for r, b in zip(resumed, batched):
        assert r.store.key == b.store.key
        for step in STEPS:
            _assert_same_checkpoint(r.store.load(checkpoint_name(step)), b.store.load(checkpoint_name(step)))
        _assert_same_log(r.log, b.log)
    assert resumed[2].log == batched[2].log  # skipped: read back unchanged
    # train_seconds carries on from the resumed checkpoint
    assert resumed[1].log[2]["train_seconds"] == batched[1].log[2]["train_seconds"]


def test_unbatched_resume_from_a_batched_checkpoint(trained, tmp_path):
    _, batched, alone = trained
    store = _copy_store(batched[0].store, tmp_path, "b")
    store.path(checkpoint_name(30)).unlink()
    torch.set_num_threads(1)
    continued = train_modadd(str(tmp_path), "b", **SPECS[0], progress=False)  # resumes at 20 with torch's AdamW
    assert continued.store.key == batched[0].store.key
    _assert_same_checkpoint(continued.store.load(checkpoint_name(30)), alone[0].store.load(checkpoint_name(30)))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="lr differs"):
        train_modadd_batched(str(tmp_path), "b", [SPECS[0], dict(SPECS[1], lr=1e-3)])
    models = [nn.Linear(3, 2), nn.Linear(3, 4)]
    stores = [ResultStore(str(tmp_path), "x", {"r": r}) for r in range(2)]
    x, y = torch.zeros(2, 5, 3), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="architecture"):
        train_full_batch_adamw_batched(models, x, y, stores=stores, n_steps=2, checkpoint_steps=[], lr=1e-3,
                                       weight_decays=[0, 0])
    with pytest.raises(ValueError, match="weight_decays"):
        train_full_batch_adamw_batched(models[:1] * 2, x, y, stores=stores, n_steps=2, checkpoint_steps=[],
                                       lr=1e-3, weight_decays=[0, -1])
    with pytest.raises(ValueError, match="one store"):
        train_full_batch_adamw_batched(models[:1] * 2, x[:1], y[:1], stores=stores, n_steps=2, checkpoint_steps=[],
                                       lr=1e-3, weight_decays=[0, 0])
