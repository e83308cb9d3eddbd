"""hvp, full_hessian and hessian_operator against the dense autograd Hessian and finite differences (float64)."""

import numpy as np
import pytest
import torch
from torch import nn

from hessian_book.models import lenet_tiny
from hessian_core.operators import full_hessian, hessian_operator, hvp
from tests.cases import ALL_CASES, STRUCTURED_CASES, reference_hessian


@pytest.fixture(params=sorted(ALL_CASES))
def case(request):
    return ALL_CASES[request.param]()


def test_full_hessian_matches_autograd(case):
    model, loss_fn, batch = case
    H_ref = reference_hessian(model, loss_fn, batch)
    H = full_hessian(model, loss_fn, batch, progress=False)
    assert H.dtype == torch.float64
    assert torch.equal(H, H.T)
    scale = H_ref.abs().max()
    assert (H - H_ref).abs().max() <= 1e-12 * scale


@pytest.mark.parametrize("name", STRUCTURED_CASES)
def test_structured_and_rows_agree_with_autograd(name):
    model, loss_fn, batch = ALL_CASES[name]()
    H_ref = reference_hessian(model, loss_fn, batch)
    H_struct = full_hessian(model, loss_fn, batch, method="structured", progress=False)
    H_rows = full_hessian(model, loss_fn, batch, method="rows", chunk_size=5, progress=False)
    scale = H_ref.abs().max()
    assert (H_struct - H_ref).abs().max() <= 1e-12 * scale
    assert (H_rows - H_ref).abs().max() <= 1e-12 * scale


def test_structured_path_is_not_gauss_newton_only():
    model, loss_fn, batch = ALL_CASES["conv"]()
    H = full_hessian(model, loss_fn, batch, method="structured", progress=False)
    # Gauss-Newton from per-sample Jacobians, independently.
    x, y = batch
    m64 = model.double()
    J = torch.autograd.functional.jacobian(
        lambda *ps: torch.func.functional_call(m64, dict(zip([n for n, _ in m64.named_parameters()], ps)),
                                               (x.double(),)),
        tuple(p.detach() for p in m64.parameters()))
    model.float()
    N, C = 6, 4
    Jm = torch.cat([j.reshape(N * C, -1) for j in J], dim=1)
    z = torch.func.functional_call(m64.double(), dict(m64.named_parameters()), (x.double(),)).detach()
    model.float()
    p = torch.softmax(z, 1)
    Lam = torch.block_diag(*[(torch.diag(pi) - torch.outer(pi, pi)) / N for pi in p])
    G = Jm.T @ Lam @ Jm
    assert (H - G).abs().max() > 1e-3 * H.abs().max()


def test_structured_rejects_unsupported_model():
    model, loss_fn, batch = ALL_CASES["mlp_ce"]()  # Tanh is not piecewise linear
    with pytest.raises(ValueError, match="method='structured'"):
        full_hessian(model, loss_fn, batch, method="structured", progress=False)


def test_hvp_and_operator_match_dense(case):
    model, loss_fn, batch = case
    H_ref = reference_hessian(model, loss_fn, batch)
    P = H_ref.shape[0]
    g = torch.Generator().manual_seed(0)
    V = torch.randn(P, 3, dtype=torch.float64, generator=g)
    expected = H_ref @ V
    assert torch.allclose(hvp(model, loss_fn, batch, V[:, 0]), expected[:, 0], rtol=0, atol=1e-12 * expected.abs().max())
    op = hessian_operator(model, loss_fn, batch)
    assert op.shape == (P, P) and op.dtype == np.float64
    np.testing.assert_allclose(op.matvec(V[:, 1].numpy()), expected[:, 1].numpy(), rtol=0,
                               atol=1e-12 * expected.abs().max().item())
    np.testing.assert_allclose(op.matmat(V.numpy()), expected.numpy(), rtol=0, atol=1e-12 * expected.abs().max().item())
    np.testing.assert_allclose(op @ V[:, 2].numpy(), expected[:, 2].numpy(), rtol=0,
                               atol=1e-12 * expected.abs().max().item())
    assert op.n_products == 1 + 3 + 1


def test_hvp_matches_finite_differences_of_the_gradient():
    model, loss_fn, batch = ALL_CASES["mlp_mse"]()  # smooth everywhere (Tanh, and ReLU away from kinks)
    op = hessian_operator(model, loss_fn, batch)
    theta = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    v = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v /= v.norm()
    h = 1e-5

    def grad_at(t):
        m = __import__("copy").deepcopy(model).double()
        torch.nn.utils.vector_to_parameters(t, m.parameters())
        x, y = batch
        loss = loss_fn(m(x.double()), y.double())
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))])

    fd = (grad_at(theta + h * v) - grad_at(theta - h * v)) / (2 * h)
    Hv = torch.as_tensor(op.matvec(v.numpy()))
    assert (Hv - fd).norm() <= 1e-7 * Hv.norm()
    # The gradient the operator exposes is the gradient too.
    np.testing.assert_allclose(op.gradient, grad_at(theta).numpy(), atol=1e-13)


def test_model_is_not_modified():
    model = lenet_tiny(seed=0)
    model.train()
    model[1].eval()  # a mixed state must come back exactly as it was
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(3, 1, 28, 28)
    y = torch.tensor([1, 2, 3])
    hvp(model, nn.CrossEntropyLoss(), (x, y), torch.ones(5994))
    hessian_operator(model, nn.CrossEntropyLoss(), (x, y)).matvec(np.ones(5994))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [m.training for m in model] == [True, False] + [True] * 6


def test_lenet_structured_equals_rows_on_a_slice():
    """Full-size LeNet-tiny: the structured Hessian equals exact double-backward rows of every layer."""
    torch.manual_seed(0)
    model = lenet_tiny(seed=0)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 3, 5, 9])
    loss_fn = nn.CrossEntropyLoss()
    H = full_hessian(model, loss_fn, (x, y), progress=False)
    assert H.shape == (5994, 5994)
    op = hessian_operator(model, loss_fn, (x, y))
    rows = torch.tensor([0, 207, 208, 1500, 3423, 3424, 5000, 5983, 5993])  # conv1, conv2, linear w, linear b
    E = torch.zeros(len(rows), 5994, dtype=torch.float64)
    E[torch.arange(len(rows)), rows] = 1
    exact = torch.as_tensor(op.matmat(E.T.numpy()).T)
    assert (H[rows] - exact).abs().max() <= 1e-12 * exact.abs().max()


@pytest.mark.parametrize("bad,match", [
    (dict(method="fast"), "method"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(dtype=torch.float16), "dtype"),
])
def test_bad_arguments_name_the_argument(bad, match):
    model, loss_fn, batch = ALL_CASES["mlp_ce"]()
    with pytest.raises(ValueError, match=match):
        full_hessian(model, loss_fn, batch, progress=False, **bad)


def test_bad_vector_and_batch():
    model, loss_fn, batch = ALL_CASES["mlp_ce"]()
    with pytest.raises(ValueError, match="v must have shape"):
        hvp(model, loss_fn, batch, torch.ones(3))
    with pytest.raises(TypeError, match="batch"):
        hvp(model, loss_fn, batch[0], torch.ones(3))
    x, y = batch
    with pytest.raises(ValueError, match="not finite"):
        full_hessian(model, loss_fn, (x * float("nan"), y), progress=False)
