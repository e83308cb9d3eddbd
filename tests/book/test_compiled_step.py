"""The compiled full-batch AdamW step (hessian_book.training.AdamWStep) against the eager one.

Every compiled test uses one tiny transformer (p = 23, d_model 16, MLP 32, 264 training pairs), so inductor compiles
one loss graph for the whole file (the later tests find it in inductor's on-disk cache).

Tolerance: compiled kernels sum in another order than eager ATen (and the compiled backend's fused AdamW rounds
differently from the eager default), so the two trajectories differ from the first step at float32 rounding (3e-8
absolute after one step) and, training being chaotic, the gap grows: with the chapters' learning rate 1e-3 it
measured 1.4e-6 (max absolute, over all parameters) after 100 steps, 1e-3 after 200; at lr 1e-2 a loss spike
amplified it to 7e-6 within 100 steps (4e-3 without fused AdamW). The tests compare after 100 steps at lr 1e-3,
allowing ``atol=1e-5, rtol=1e-4`` on parameters (~10× the measured gap) and 1e-4 relative on losses, while the
parameters have moved ~0.15 from their initialisation (checked, so that agreement is not vacuous).
"""

import copy
import warnings

import pytest
import torch
from torch import nn

from hessian_book import training
from hessian_book.data import modular_addition_split
from hessian_book.models import ModAddTransformer
from hessian_book.store import ResultStore
from hessian_book.training import (AdamWStep, CompiledStepError, checkpoint_name, resolve_step_backend,
                                   split_evaluator, train_full_batch_adamw)

P, D_MODEL, D_MLP, FRACTION = 23, 16, 32, 0.5
HYPER = dict(lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _data():
    return modular_addition_split(P, FRACTION, 0)


def _model() -> ModAddTransformer:
    return ModAddTransformer(P, D_MODEL, 1, D_MLP, seed=0)


def _train(store: ResultStore, backend: str, *, n_steps: int = 100, evaluate=None) -> tuple[nn.Module, list[dict]]:
    split = _data()
    model = _model()
    log = train_full_batch_adamw(model, *split["train"], store=store, n_steps=n_steps, checkpoint_steps=[0, 50],
                                 log_steps=range(0, n_steps + 1, 25), progress=False, step_backend=backend,
                                 evaluate=evaluate or split_evaluator(split["train"], split["test"]), **HYPER)
    return model, log


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same 100-step run, eager and compiled."""
    root = tmp_path_factory.mktemp("compiled")
    eager = _train(ResultStore(root, "eager", {}), "eager")
    compiled_store = ResultStore(root, "compiled", {})
    compiled = _train(compiled_store, "compiled")
    return eager, compiled, compiled_store


def test_compiled_and_eager_agree_to_float32_rounding(trained):
    (eager, eager_log), (compiled, compiled_log), _ = trained
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert [r["step"] for r in compiled_log] == [r["step"] for r in eager_log] == [0, 25, 50, 75, 100]
    for e, c in zip(eager_log, compiled_log):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
        assert c["test_loss"] == pytest.approx(e["test_loss"], rel=1e-4)
    # the parameters have moved far beyond the tolerance: the comparison is not vacuous
    moved = max((a - b).abs().max().item() for a, b in zip(eager.parameters(), _model().parameters()))
    assert moved > 1000 * 1e-5
    assert eager_log[-1]["train_loss"] < eager_log[0]["train_loss"]


def test_the_backend_is_recorded(trained):
    (_, eager_log), (_, compiled_log), store = trained
    assert {r["step_backend"] for r in eager_log} == {"eager"}
    assert {r["step_backend"] for r in compiled_log} == {"compiled"}
    saved = store.load(checkpoint_name(100))
    assert saved["optimiser"]["step_backend"] == "compiled"
    assert saved["optimiser"]["param_groups"][0]["fused"] is training._COMPILED_FUSED_ADAMW or (
        not training._COMPILED_FUSED_ADAMW and not saved["optimiser"]["param_groups"][0]["fused"])


def test_eager_step_is_the_plain_loop_bit_for_bit():
    split = _data()
    model, reference = _model(), _model()
    step = AdamWStep(model, *split["train"], backend="eager", **HYPER)
    optimiser = torch.optim.AdamW(reference.parameters(), **HYPER)
    for _ in range(20):
        step()
        optimiser.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(reference(split["train"][0]), split["train"][1]).backward()
        optimiser.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


class _Interrupt(RuntimeError):
    pass


def test_compiled_resume_is_bit_identical(trained, tmp_path):
    """Killed after its checkpoint at 50, a compiled run resumes (a new step object: compiled again) and ends
    exactly where the uninterrupted compiled run ended."""
    _, (compiled, compiled_log), _ = trained
    split = _data()
    evaluate = split_evaluator(split["train"], split["test"])

    def dies_at_75(step, model):
        if step == 75:
            raise _Interrupt
        return evaluate(step, model)

    store = ResultStore(tmp_path, "k", {})
    with pytest.raises(_Interrupt):
        _train(store, "compiled", evaluate=dies_at_75)
    assert store.names() == [checkpoint_name(0), checkpoint_name(50)]
    resumed, log = _train(store, "compiled")
    for a, b in zip(compiled.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    strip = lambda records: [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]  # noqa: E731
    assert strip(log) == strip(compiled_log)


def test_checkpoints_cross_backends_only_as_said(trained, tmp_path):
    """A compiled checkpoint's optimiser state loads into a plain torch AdamW; an eager step refuses it (its
    trajectory would not be the run's); ``"auto"`` adopts the checkpoint's backend; loading restores the loading
    step's own AdamW implementation (torch would otherwise take the saved ``fused`` flag)."""
    _, _, store = trained
    state = store.load(checkpoint_name(50))
    split = _data()
    plain = _model()
    plain.load_state_dict(state["model"])
    optimiser = torch.optim.AdamW(plain.parameters(), **HYPER)
    optimiser.load_state_dict(state["optimiser"])
    assert int(optimiser.state_dict()["state"][0]["step"]) == 50

    eager = AdamWStep(_model(), *split["train"], backend="eager", **HYPER)
    with pytest.raises(ValueError, match="step_backend='eager'"):
        eager.optimiser.load_state_dict(state["optimiser"])

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(training.STEP_BACKEND_ENV, "eager")  # "auto" would be eager here ...
        auto = AdamWStep(_model(), *split["train"], backend="auto", **HYPER)
        assert auto.backend == "eager"
        auto.optimiser.load_state_dict(state["optimiser"])
        assert auto.backend == "compiled"  # ... but continues the compiled trajectory
    assert auto.optimiser.param_groups[0]["fused"] == (True if training._COMPILED_FUSED_ADAMW else None)

    # an eager checkpoint (no "step_backend": saved before the option existed) into an eager step that was
    # given fused AdamW's flag by the saved state: the eager step keeps torch's default implementation
    legacy = {k: v for k, v in state["optimiser"].items() if k != "step_backend"}
    legacy["param_groups"] = [dict(g, fused=True) for g in legacy["param_groups"]]
    eager = AdamWStep(_model(), *split["train"], backend="eager", **HYPER)
    eager.optimiser.load_state_dict(legacy)
    assert eager.optimiser.param_groups[0]["fused"] is None and eager.backend == "eager"


def test_a_failing_compile_falls_back_to_eager_and_says_so(monkeypatch):
    """``torch.compile`` raising: under ``"auto"`` the step warns and runs eager from its first update (bit for
    bit the eager run, parameters untouched by the failed attempt); under ``"compiled"`` it raises."""
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler (simulated)")

    monkeypatch.setenv(training.STEP_BACKEND_ENV, "compiled")  # "auto" resolves to compiled ...
    monkeypatch.setattr(torch, "compile", broken)  # ... which then fails at the first step
    split = _data()
    model, reference = _model(), _model()
    step = AdamWStep(model, *split["train"], backend="auto", **HYPER)
    assert step.backend == "compiled"
    with pytest.warns(RuntimeWarning, match="compiled training step failed.*no C\\+\\+ compiler.*run eager"):
        step()
    assert step.backend == "eager"
    eager = AdamWStep(reference, *split["train"], backend="eager", **HYPER)
    eager()
    for _ in range(4):
        step()
        eager()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    assert step.optimiser.state_dict()["step_backend"] == "eager"

    strict = AdamWStep(_model(), *split["train"], backend="compiled", **HYPER)
    before = copy.deepcopy(strict.model.state_dict())
    with pytest.raises(CompiledStepError, match="step_backend='eager'"):
        strict()
    assert all(torch.equal(before[k], v) for k, v in strict.model.state_dict().items())


def test_auto_resolves_eager_when_compiling_does_not_work(monkeypatch):
    monkeypatch.delenv(training.STEP_BACKEND_ENV, raising=False)
    monkeypatch.setattr(training, "_compile_probe", lambda: "CalledProcessError: g++ failed (simulated)")
    with pytest.warns(RuntimeWarning, match="does not work here.*g\\+\\+ failed"):
        assert resolve_step_backend("auto") == "eager"
    monkeypatch.setattr(training, "_compile_probe", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_step_backend("auto") == "compiled"
    monkeypatch.setenv(training.STEP_BACKEND_ENV, "eager")
    assert resolve_step_backend("auto") == "eager"
    assert resolve_step_backend("compiled") == "compiled"


@pytest.mark.parametrize("backend, env, name", [("fast", "", "step_backend"), ("auto", "jit", "HESSIAN_STEP_BACKEND")])
def test_bad_backend_is_named(monkeypatch, backend, env, name):
    monkeypatch.setenv(training.STEP_BACKEND_ENV, env)
    split = _data()
    with pytest.raises(ValueError, match=name):
        AdamWStep(_model(), *split["train"], backend=backend, **HYPER)


def test_the_backend_keys_a_modadd_run(tmp_path, monkeypatch):
    """``train_modadd`` keys its store by the backend actually used, and the grokking chapter's dense re-run of a
    stretch (``_continue``) of a compiled run reproduces that run's own checkpoint bit for bit."""
    from hessian_book.chapters import grokking_modadd
    from hessian_book.runs import train_modadd

    args = dict(p=P, train_fraction=FRACTION, split_seed=0, seed=0, d_model=D_MODEL, n_heads=1, d_mlp=D_MLP,
                lr=1e-3, weight_decay=1.0, betas=[0.9, 0.98], n_steps=60, log_every=10, checkpoint_steps=[0, 20, 60],
                progress=False)
    monkeypatch.setenv(training.STEP_BACKEND_ENV, "eager")
    eager = train_modadd(str(tmp_path), "t", **args)  # "auto": eager in this session
    compiled = train_modadd(str(tmp_path), "t", **args, step_backend="compiled")
    assert eager.params["step_backend"] == "eager" and compiled.params["step_backend"] == "compiled"
    assert eager.store.key != compiled.store.key
    assert train_modadd(str(tmp_path), "t", **args, step_backend="eager").store.key == eager.store.key
    assert eager.curve("train_loss")[-1] == pytest.approx(compiled.curve("train_loss")[-1], rel=1e-4)

    store = ResultStore(tmp_path, "refine", {"run": compiled.store.key})
    log = grokking_modadd._continue(compiled, store, 20, [20, 40, 60], log_steps=[20, 40, 60], progress=False,
                                    desc="refine")
    assert {r["step_backend"] for r in log} == {"compiled"}
    original, refined = compiled.store.load(checkpoint_name(60)), store.load(checkpoint_name(60))
    for name, tensor in original["model"].items():
        assert torch.equal(tensor, refined["model"][name]), name
