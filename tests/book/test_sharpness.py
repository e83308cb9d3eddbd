"""The depth chapter's pieces: the one-hot MLP's lookup forward, Hessian-extreme logging, seed-spread curves."""

import numpy as np
import pytest
import torch
from torch import nn

from hessian_book.curves import seed_spread, stack_logs, value_at_step
from hessian_book.data import modular_addition_split
from hessian_book.models import ModAddMLP
from hessian_book.plots import plot_seed_spread
from hessian_book.runs import modadd_mlp_run
from hessian_book.store import read_verified
from hessian_book.sharpness import adam_preconditioner, adam_stability_threshold, hessian_extremes
from hessian_core import full_hessian, hessian_operator


def _explicit_onehot_logits(model: ModAddMLP, params: dict, xy: torch.Tensor) -> torch.Tensor:
    """The one-hot MLP written literally: concatenated one-hot vectors times the first weight matrix."""
    h = nn.functional.one_hot(xy, model.p).to(torch.float64).flatten(1)
    n_linear = model.depth + 1
    for i in range(n_linear):
        h = h @ params[f"layers.{2 * i}.weight"].t() + params[f"layers.{2 * i}.bias"]
        if i < n_linear - 1:
            h = torch.relu(h)
    return h


def _onehot_case():
    model = ModAddMLP(p=5, depth=2, width=4, input_encoding="onehot", seed=1).double()
    xy = torch.randint(0, 5, (12, 2), generator=torch.Generator().manual_seed(2))
    return model, xy, xy.sum(1) % 5


def test_onehot_lookup_forward_equals_the_onehot_matmul():
    model, xy, _ = _onehot_case()
    params = dict(model.named_parameters())
    torch.testing.assert_close(model(xy), _explicit_onehot_logits(model, params, xy), rtol=0, atol=1e-12)


def test_onehot_lookup_hessian_equals_the_onehot_matmul_hessian():
    model, xy, y = _onehot_case()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        parts, start = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = theta[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        return nn.functional.cross_entropy(_explicit_onehot_logits(model, parts, xy), y)

    dense = torch.autograd.functional.hessian(loss, flat).numpy()
    op = hessian_operator(model, nn.CrossEntropyLoss(), (xy, y))
    via_operator = op.matmat(np.eye(op.shape[0]))
    np.testing.assert_allclose(via_operator, dense, rtol=0, atol=1e-12)


def _small_trained_case(steps: int = 3):
    """A tiny one-hot MLP after a few AdamW steps: ``(model, batch, optimiser)``."""
    model, xy, y = _onehot_case()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5, betas=(0.9, 0.98))
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(xy), y).backward()
        optimiser.step()
    return model, (xy, y), optimiser


def test_hessian_extremes_match_the_dense_spectrum():
    model, batch, optimiser = _small_trained_case()
    loss_fn = nn.CrossEntropyLoss()
    dense = full_hessian(model, loss_fn, batch, progress=False).numpy()
    P = adam_preconditioner(optimiser.state_dict())
    out = hessian_extremes(model, loss_fn, batch, tol=1e-10, dtype=torch.float64, preconditioner=P)
    lam = np.linalg.eigvalsh(dense)
    scale = np.abs(lam).max()
    assert abs(out["lambda_max"] - lam[-1]) < 1e-8 * scale
    assert abs(out["lambda_min"] - lam[0]) < 1e-8 * scale
    scaled = dense / np.sqrt(P)[:, None] / np.sqrt(P)[None, :]
    assert np.isclose(out["preconditioned_lambda_max"], np.linalg.eigvalsh(scaled)[-1], rtol=1e-7)
    assert out["n_hvp"] > 0 and out["seconds"] > 0


def test_adam_preconditioner_reproduces_the_adamw_update():
    """θ_{t+1} = θ_t (1 − η λ) − η m_t / P_t with P from :func:`adam_preconditioner`."""
    model, (xy, y), optimiser = _small_trained_case()
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    optimiser.zero_grad()
    nn.functional.cross_entropy(model(xy), y).backward()
    optimiser.step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    state = optimiser.state_dict()
    m = torch.cat([state["state"][i]["exp_avg"].reshape(-1) for i in state["param_groups"][0]["params"]])
    P = torch.as_tensor(adam_preconditioner(state))
    expected = before * (1 - 1e-2 * 0.5) - 1e-2 * m / P
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-12)


def test_adam_stability_threshold():
    assert adam_stability_threshold(1e-3, 0.9) == pytest.approx(38_000)
    assert adam_stability_threshold(0.1, 0.0) == pytest.approx(20)
    with pytest.raises(ValueError, match="beta1"):
        adam_stability_threshold(1e-3, 1.0)


def test_stack_logs_keeps_common_steps_and_marks_missing_values():
    logs = [[{"step": 0, "a": 1.0}, {"step": 5, "a": 2.0}, {"step": 9, "a": 3.0}],
            [{"step": 0, "a": 4.0}, {"step": 5}, {"step": 7, "a": 0.0}]]
    steps, values = stack_logs(logs, "a")
    np.testing.assert_array_equal(steps, [0, 5])
    np.testing.assert_array_equal(values, [[1.0, 2.0], [4.0, np.nan]])


def test_seed_spread():
    values = np.array([[1.0, 10.0], [4.0, 1000.0]])
    out = seed_spread(values)
    np.testing.assert_allclose(out["centre"], [2.5, 505.0])
    np.testing.assert_allclose(out["low"], [1.0, 10.0])
    np.testing.assert_allclose(out["high"], [4.0, 1000.0])
    np.testing.assert_allclose(seed_spread(values, log=True)["centre"], [2.0, 100.0])
    with pytest.raises(ValueError, match="values"):
        seed_spread(np.ones(3))


def test_plot_seed_spread_draws_mean_and_band():
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_seed_spread([0, 1, 2], np.array([[1.0, 2.0, 4.0], [3.0, 2.0, np.nan]]), label="a", runs=True)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.0, 2.0, 4.0])
    assert len(ax.lines) == 3 and len(ax.collections) == 1


_TINY_RUN = dict(p=7, depth=2, width=8, input_encoding="onehot", train_fraction=0.5, split_seed=0, seed=1,
                 n_steps=20, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98), log_every=5, hessian_every=10,
                 lanczos_tol=1e-6, hessian_dtype="float64", progress=False)


def test_modadd_mlp_run_logs_metrics_and_hessians_and_resumes(tmp_path):
    run = modadd_mlp_run(tmp_path, **_TINY_RUN)
    assert [r["step"] for r in run["log"]] == [0, 5, 10, 15, 20]
    assert [r["step"] for r in run["hessian"]] == [0, 10, 20]
    for r in run["log"]:
        assert {"train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "param_norm"} <= set(r)
        assert r["grad_norm"] > 0 and r["param_norm"] > 0
    first, later = run["hessian"][0], run["hessian"][1:]
    assert np.isnan(first["preconditioned_lambda_max"])
    assert all(r["lambda_min"] <= r["lambda_max"] and r["preconditioned_lambda_max"] > 0 for r in later)
    hessian_files = sorted((tmp_path / "mlp_depth_modadd_hessian").rglob("hessian_*.pt"))
    stamps = [f.stat().st_mtime_ns for f in hessian_files]
    again = modadd_mlp_run(tmp_path, **_TINY_RUN)  # everything cached: nothing is recomputed
    np.testing.assert_equal(again["log"], run["log"])
    np.testing.assert_equal(again["hessian"], run["hessian"])
    assert [f.stat().st_mtime_ns for f in hessian_files] == stamps


def test_modadd_mlp_run_top_k_matches_the_dense_spectrum(tmp_path):
    run = modadd_mlp_run(tmp_path, **{**_TINY_RUN, "top_k": 3, "lanczos_tol": 1e-10})
    model = ModAddMLP(7, 2, 8, "onehot", 1)
    final = next((tmp_path / "mlp_depth_modadd").rglob("checkpoint_0000020.pt"))
    model.load_state_dict(read_verified(final)["model"])
    split = modular_addition_split(7, 0.5, 0, with_equals=False)
    dense = full_hessian(model, nn.CrossEntropyLoss(), split["train"], progress=False).numpy()
    np.testing.assert_allclose(run["top"], np.linalg.eigvalsh(dense)[-3:], rtol=1e-8, atol=1e-12)
    assert run["hessian"][-1]["lambda_max"] == pytest.approx(run["top"][-1], rel=1e-8)


def test_modadd_mlp_run_checks_its_parameters_first(tmp_path):
    with pytest.raises(ValueError, match="hessian_dtype"):
        modadd_mlp_run(tmp_path, **{**_TINY_RUN, "hessian_dtype": "half"})
    with pytest.raises(ValueError, match="log_every"):
        modadd_mlp_run(tmp_path, **{**_TINY_RUN, "log_every": 0})
    assert not any(tmp_path.iterdir())


def test_value_at_step():
    assert value_at_step([0, 10], [1.0, 3.0], 5) == pytest.approx(2.0)
    assert value_at_step([0, 10], [1.0, 100.0], 5, log=True) == pytest.approx(10.0)
    assert np.isnan(value_at_step([0, 10], [1.0, 3.0], 11))
