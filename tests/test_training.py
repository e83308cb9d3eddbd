"""Checkpoint schedule and resumable SGD training."""

import pytest
import torch
from torch import nn

from hessian_core.results import ResultStore
from hessian_core.training import mnist_checkpoint_steps, train_sgd_with_checkpoints


def test_seed_schedule_has_25_checkpoints():
    steps = mnist_checkpoint_steps(469, 30)
    assert len(steps) == 25
    assert steps[:5] == [0, 10, 50, 100, 200]
    assert steps[5:15] == [469 * e for e in range(1, 11)]
    assert steps[15:] == [469 * e for e in range(12, 31, 2)]
    assert mnist_checkpoint_steps(5, 2) == [0, 5, 10]


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    return model, x, y


def _train(store, model, x, y, steps, **kw):
    return train_sgd_with_checkpoints(model, x, y, store=store, checkpoint_steps=steps, lr=0.1, momentum=0.9,
                                      batch_size=16, epochs=3, seed=7, progress=False,
                                      on_checkpoint=lambda s, m: {"w": m[0].weight.sum().item()}, **kw)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    model, x, y = _setup()
    full = _train(ResultStore(tmp_path / "a", "t", {}), model, x, y, [0, 3, 6, 12])
    final = [p.detach().clone() for p in model.parameters()]

    # "Interrupted" after step 6: a second run with more checkpoints resumes from step 6.
    model2, _, _ = _setup()
    store = ResultStore(tmp_path / "b", "t", {})
    _train(store, model2, x, y, [0, 3, 6])
    model3, _, _ = _setup()  # fresh parameters: everything must come from the store
    resumed = _train(store, model3, x, y, [0, 3, 6, 12])
    assert [r["w"] for r in resumed] == [r["w"] for r in full]
    assert all(torch.equal(a, b) for a, b in zip(final, model3.parameters()))


def test_bad_checkpoint_steps(tmp_path):
    model, x, y = _setup()
    with pytest.raises(ValueError, match="checkpoint_steps"):
        _train(ResultStore(tmp_path, "t", {}), model, x, y, [0, 100])
