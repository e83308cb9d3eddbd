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


# ---------------------------------------------------------------------------------------------------------------
# the stop rule and cap-independent stores (full-batch AdamW)
# ---------------------------------------------------------------------------------------------------------------

_RULE_KW = dict(min_margin=10, fraction=0.25)


def _scripted(test_acc, calls=None):
    """An evaluate() whose test accuracy is a scripted function of the step (the rule's input), plus a real
    quantity of the model (its loss), so logs also compare the trajectory."""
    def evaluate(step, model):
        if calls is not None:
            calls.append(step)
        return {"test_acc": float(test_acc(step)), "w": model[0].weight.sum().item()}

    return evaluate


def _stopping(store, n_steps, test_acc, *, rule=True, calls=None, model=None):
    from hessian_book.outcomes import StopRule
    from hessian_book.training import train_full_batch_adamw

    model = model if model is not None else _setup()[0]
    _, x, y = _setup()
    log = train_full_batch_adamw(model, x, y, store=store, n_steps=n_steps,
                                 checkpoint_steps=[s for s in (0, 10, 20, 40) if s <= n_steps],
                                 log_steps=range(0, n_steps + 1, 5), lr=0.01, weight_decay=0.5,
                                 evaluate=_scripted(test_acc, calls), progress=False,
                                 stop=StopRule(**_RULE_KW) if rule else None)
    return model, log


def _bare(log):
    """A log without timings and without the end marker (the trajectory's records)."""
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "stopped")} for r in log]


def _generalises_at_20(step):
    return 1.0 if step >= 20 else 0.1


def _same_parameters(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_rule_stops_at_the_margin_and_saves_the_stop_step(tmp_path):
    store = ResultStore(tmp_path / "r", "t", {})
    model, log = _stopping(store, 100, _generalises_at_20)
    # generalised at 20, margin max(10, ceil(20 / 4)) = 10: stopped at the logged step 30
    assert [r["step"] for r in log] == [0, 5, 10, 15, 20, 25, 30]
    assert log[-1]["stopped"] == "rule" and all("stopped" not in r for r in log[:-1])
    assert store.names() == [f"checkpoint_{s:07d}" for s in (0, 10, 20, 30)]
    plain, plain_log = _stopping(ResultStore(tmp_path / "p", "t", {}), 30, _generalises_at_20, rule=False)
    assert plain_log[-1]["stopped"] == "cap"
    assert _same_parameters(model, plain) and _bare(log) == _bare(plain_log)


def test_a_dip_inside_the_margin_restarts_the_clock(tmp_path):
    dips = lambda s: 1.0 if s in (20, 25) or s >= 35 else 0.5  # noqa: E731
    _, log = _stopping(ResultStore(tmp_path, "t", {}), 100, dips)
    assert log[-1]["step"] == 45 and log[-1]["stopped"] == "rule"  # 35 + max(10, ceil(35 / 4))


def test_a_run_that_does_not_generalise_trains_to_the_cap(tmp_path):
    _, log = _stopping(ResultStore(tmp_path, "t", {}), 60, lambda s: 0.94)
    assert log[-1]["step"] == 60 and log[-1]["stopped"] == "cap"


def test_stopped_at_the_cap_then_resumed_with_a_larger_cap_is_the_uninterrupted_run(tmp_path):
    """With and without the rule: the resumed run equals the uninterrupted one bit for bit, and nothing stored
    before the first stop changes."""
    for rule in (True, False):
        direct, direct_log = _stopping(ResultStore(tmp_path / f"d{rule}", "t", {}), 50, _generalises_at_20,
                                       rule=rule)
        store = ResultStore(tmp_path / f"s{rule}", "t", {})
        _, first = _stopping(store, 25, _generalises_at_20, rule=rule)
        assert first[-1]["step"] == 25 and first[-1]["stopped"] == "cap"
        before = {name: store.path(name).read_bytes() for name in store.names()}
        assert sorted(before) == [f"checkpoint_{s:07d}" for s in (0, 10, 20, 25)]  # the cap step is saved
        calls = []
        resumed, log = _stopping(store, 50, _generalises_at_20, rule=rule, calls=calls)
        assert calls == [30] if rule else calls == [30, 35, 40, 45, 50]  # from the checkpoint at 25 on
        assert _same_parameters(resumed, direct)
        assert _bare(log) == _bare(direct_log) and log[-1]["stopped"] == direct_log[-1]["stopped"]
        assert log[:len(first) - 1] == first[:-1]  # earlier log entries unchanged, timings included
        assert all(store.path(name).read_bytes() == data for name, data in before.items())


def test_a_smaller_cap_returns_the_prefix(tmp_path):
    store = ResultStore(tmp_path / "s", "t", {})
    _, long_log = _stopping(store, 100, lambda s: 0.5, rule=False)
    calls = []
    model, log = _stopping(store, 15, lambda s: 0.5, rule=False, calls=calls)
    assert calls == []  # the stored records are reused, nothing is evaluated again
    assert log == [*long_log[:3], {**long_log[3], "stopped": "cap"}]  # steps 0-15, timings included
    direct, _ = _stopping(ResultStore(tmp_path / "d", "t", {}), 15, lambda s: 0.5, rule=False)
    assert _same_parameters(model, direct)
    assert store.load("checkpoint_0000015")["log"] == long_log[:4]


def test_the_rule_applied_to_a_stored_longer_run_reads_its_stop_off_the_log(tmp_path):
    """A store trained without the rule answers a call with the rule: the same end, parameters and log as a run
    stopped by the rule directly; a cap above the stop step changes nothing."""
    store = ResultStore(tmp_path / "s", "t", {})
    _stopping(store, 100, _generalises_at_20, rule=False)
    calls = []
    model, log = _stopping(store, 100, _generalises_at_20, calls=calls)
    assert calls == [] and log[-1]["step"] == 30 and log[-1]["stopped"] == "rule"
    direct, direct_log = _stopping(ResultStore(tmp_path / "d", "t", {}), 1000, _generalises_at_20)
    assert _same_parameters(model, direct) and _bare(log) == _bare(direct_log)


def test_the_stop_rule_needs_test_accuracy(tmp_path):
    from hessian_book.outcomes import StopRule
    from hessian_book.training import train_full_batch_adamw

    model, x, y = _setup()
    with pytest.raises(ValueError, match="test_acc"):
        train_full_batch_adamw(model, x, y, store=ResultStore(tmp_path, "t", {}), n_steps=10, checkpoint_steps=[0],
                               lr=0.01, weight_decay=0.1, progress=False, stop=StopRule(min_margin=2),
                               evaluate=lambda s, m: {"loss": 0.0})
    with pytest.raises(ValueError, match="stop"):
        train_full_batch_adamw(model, x, y, store=ResultStore(tmp_path, "u", {}), n_steps=10, checkpoint_steps=[0],
                               lr=0.01, weight_decay=0.1, progress=False, stop={"min_margin": 2})


def test_train_modadd_keys_its_store_without_the_cap(tmp_path):
    """The transformer runs of the chapters: one store for every cap; a larger cap continues the stored run bit
    for bit, a smaller one reads its prefix, and the returned checkpoints are the schedule's up to the end."""
    from hessian_book.outcomes import StopRule
    from hessian_book.runs import train_modadd

    args = dict(p=11, train_fraction=0.5, split_seed=0, seed=0, d_model=8, n_heads=1, d_mlp=16, lr=3e-3,
                weight_decay=1.0, betas=[0.9, 0.98], log_every=5, checkpoint_steps=[0, 10, 35, 10_000],
                checkpoint_every=20, progress=False)
    short = train_modadd(str(tmp_path / "a"), "t", n_steps=25, **args)
    long = train_modadd(str(tmp_path / "a"), "t", n_steps=45, **args)
    direct = train_modadd(str(tmp_path / "b"), "t", n_steps=45, **args)
    assert short.store.key == long.store.key == direct.store.key and "n_steps" not in short.store.params
    assert short.checkpoint_steps == [0, 10, 20, 25] and long.checkpoint_steps == [0, 10, 20, 35, 40, 45]
    assert _bare(long.log) == _bare(direct.log) and long.log[:5] == short.log[:5]
    assert all(torch.equal(a, b) for a, b in zip(long.model_at(45).state_dict().values(),
                                                 direct.model_at(45).state_dict().values()))
    prefix = train_modadd(str(tmp_path / "b"), "t", n_steps=15, **args)
    assert prefix.log == [*direct.log[:3], {**direct.log[3], "stopped": "cap"}] and prefix.end_step == 15
    # a rule that cannot fire within 45 steps leaves the run as it is; its parameters are not part of the key
    ruled = train_modadd(str(tmp_path / "b"), "t", n_steps=45, stop=StopRule(min_margin=1000), **args)
    assert ruled.store.key == direct.store.key and ruled.stopped == "cap" and ruled.log == direct.log
    with pytest.raises(ValueError, match="n_steps"):
        train_modadd(str(tmp_path / "b"), "t", n_steps=42, **args)
