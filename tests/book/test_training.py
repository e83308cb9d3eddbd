"""Checkpoint schedule and resumable SGD training."""

import pytest
import torch
from torch import nn

from hessian_book.store import ResultStore
from hessian_book.training import mnist_checkpoint_steps, train_sgd_with_checkpoints


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


# ---------------------------------------------------------------------------------------------------------------
# full-batch AdamW
# ---------------------------------------------------------------------------------------------------------------


class _Interrupt(RuntimeError):
    pass


def _adamw(store, model, x, y, *, evaluate=None, n_steps=30):
    from hessian_book.training import train_full_batch_adamw

    return train_full_batch_adamw(model, x, y, store=store, n_steps=n_steps, checkpoint_steps=[0, 10, 20],
                                  log_steps=range(0, n_steps + 1, 5), lr=0.01, weight_decay=0.5, evaluate=evaluate,
                                  progress=False)


def _loss(model, x, y):
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


def test_adamw_equals_a_hand_written_loop(tmp_path):
    model, x, y = _setup()
    reference, _, _ = _setup()
    log = _adamw(ResultStore(tmp_path, "a", {}), model, x, y, evaluate=lambda s, m: {"loss": _loss(m, x, y)})
    opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.5, betas=(0.9, 0.98))
    losses = {0: _loss(reference, x, y)}
    for step in range(1, 31):
        opt.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
        losses[step] = _loss(reference, x, y)
    assert [r["step"] for r in log] == list(range(0, 31, 5))
    assert all(abs(r["loss"] - losses[r["step"]]) < 1e-12 for r in log)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adamw_resumes_after_a_kill_without_recomputing(tmp_path):
    model, x, y = _setup()
    uninterrupted = _adamw(ResultStore(tmp_path, "u", {}), model, x, y, evaluate=lambda s, m: {"loss": _loss(m, x, y)})

    calls = []

    def dies_at_25(step, m):
        calls.append(step)
        if step == 25:
            raise _Interrupt
        return {"loss": _loss(m, x, y)}

    store = ResultStore(tmp_path, "k", {})
    killed, _, _ = _setup()
    with pytest.raises(_Interrupt):
        _adamw(store, killed, x, y, evaluate=dies_at_25)
    assert store.names() == ["checkpoint_0000000", "checkpoint_0000010", "checkpoint_0000020"]
    calls.clear()
    resumed, _, _ = _setup()
    log = _adamw(store, resumed, x, y, evaluate=lambda s, m: calls.append(s) or
                 {"loss": _loss(m, x, y)})
    assert calls == [25, 30]  # steps up to the checkpoint at 20 are not recomputed
    strip = lambda records: [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]  # noqa: E731
    assert strip(log) == strip(uninterrupted)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A finished run trains nothing and returns the stored log.
    calls.clear()
    again, _, _ = _setup()
    assert _adamw(store, again, x, y, evaluate=lambda s, m: calls.append(s) or {}) == log
    assert calls == []
    for a, b in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kw, name", [(dict(n_steps=0), "n_steps"), (dict(lr=0.0), "lr"),
                                      (dict(weight_decay=-1.0), "weight_decay"),
                                      (dict(checkpoint_steps=[40]), "checkpoint_steps")])
def test_adamw_bad_parameters_are_named(tmp_path, kw, name):
    from hessian_book.training import train_full_batch_adamw

    model, x, y = _setup()
    args = dict(store=ResultStore(tmp_path, "b", {}), n_steps=30, checkpoint_steps=[0], lr=0.01, weight_decay=0.1,
                progress=False)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        train_full_batch_adamw(model, x, y, **args)


def test_adamw_resumes_past_a_corrupt_checkpoint(tmp_path):
    """A truncated latest checkpoint is quarantined with a warning; training resumes from the one before and
    recomputes the rest identically (full-batch updates are deterministic)."""
    from hessian_book.store import ResultStore
    from hessian_book.training import checkpoint_name, split_evaluator, train_full_batch_adamw

    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))

    def run(store):
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        torch.manual_seed(1)
        for p in model.parameters():
            nn.init.normal_(p, std=0.5)
        return train_full_batch_adamw(model, x, y, store=store, n_steps=30, checkpoint_steps=[10, 20], lr=1e-2,
                                      weight_decay=0.1, log_steps=range(0, 31, 5), progress=False,
                                      evaluate=split_evaluator((x, y), (x, y)))

    clean = run(ResultStore(tmp_path / "a", "t", {}))
    store = ResultStore(tmp_path / "b", "t", {})
    run(store)
    path = store.path(checkpoint_name(30))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="checkpoint_0000030.pt is corrupt"):
        resumed = run(store)
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in clean]
    assert (path.parent / "checkpoint_0000030.pt.corrupt").is_file()
