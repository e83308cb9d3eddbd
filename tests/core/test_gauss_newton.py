"""gauss_newton against an independently built Jᵀ Λ J (jacrev of the whole batch's outputs, analytic softmax
Hessian), its rank N(C − 1) on generic data, and the within-layer blocks of a piecewise-linear network (float64)."""

import numpy as np
import pytest
import torch
from torch import nn

from hessian_core import full_hessian, gauss_newton
from tests.cases import ALL_CASES, conv_case, mlp_case, relu_mlp_case


def _jacobian(model, x):
    """``[N·C, P]`` Jacobian of the whole batch's outputs (float64), built from one jacrev over a flat vector."""
    m = model.double()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def outputs(flat):
        parts, i = {}, 0
        for name, shape in zip(names, shapes):
            n = int(np.prod(shape))
            parts[name] = flat[i:i + n].reshape(shape)
            i += n
        return torch.func.functional_call(m, parts, (x.double(),))

    J = torch.func.jacrev(outputs)(theta)
    Z = outputs(theta).detach()
    model.float()
    return J.reshape(-1, len(theta)), Z


def _softmax_blocks(Z, weight):
    p = torch.softmax(Z, 1)
    return torch.block_diag(*[weight * (torch.diag(pi) - torch.outer(pi, pi)) for pi in p])


@pytest.mark.parametrize("make, reduction", [(lambda: mlp_case("ce"), "mean"), (lambda: mlp_case("ce_sum"), "sum"),
                                             (relu_mlp_case, "mean"), (conv_case, "mean")])
def test_equals_independent_jt_lambda_j(make, reduction):
    model, loss_fn, (x, y) = make()
    J, Z = _jacobian(model, x)
    N = len(x)
    reference = J.T @ _softmax_blocks(Z, 1.0 / N if reduction == "mean" else 1.0) @ J
    G = gauss_newton(model, loss_fn, (x, y), chunk_size=4)
    assert G.dtype == torch.float64 and torch.equal(G, G.T)
    assert (G - reference).abs().max() <= 1e-12 * reference.abs().max()


def test_mse_and_non_block_diagonal_loss():
    model, loss_fn, (x, t) = mlp_case("mse")
    J, _ = _jacobian(model, x)
    reference = J.T @ J * (2.0 / t.numel())  # MSE mean: Λ = 2 I / (N C)
    assert (gauss_newton(model, loss_fn, (x, t)) - reference).abs().max() <= 1e-12 * reference.abs().max()

    def coupled(z, t):  # the squared norm of the batch mean: Λ couples the samples
        return ((z.mean(0) - t.mean(0)) ** 2).sum()

    N = len(x)
    reference = J.T @ torch.kron(torch.full((N, N), 2.0 / N**2, dtype=torch.float64),
                                 torch.eye(3, dtype=torch.float64)) @ J
    G = gauss_newton(model, coupled, (x, t), chunk_size=3)
    assert (G - reference).abs().max() <= 1e-12 * reference.abs().max()


def numerical_rank(G: torch.Tensor, rtol: float = 1e-10) -> int:
    """Eigenvalues above ``rtol`` times the largest (a PSD matrix in float64: rounding sits near 1e-16 of it)."""
    lam = torch.linalg.eigvalsh(G)
    return int((lam > rtol * lam.max()).sum())


@pytest.mark.parametrize("N, C", [(3, 4), (6, 5), (12, 3)])
def test_rank_is_n_times_c_minus_one(N, C):
    torch.manual_seed(N * C)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, C))  # P = 112 + 17 C > N (C - 1)
    x, y = torch.randn(N, 6), torch.randint(0, C, (N,))
    G = gauss_newton(model, nn.CrossEntropyLoss(), (x, y))
    assert N * (C - 1) < G.shape[0]
    assert numerical_rank(G) == N * (C - 1)
    assert torch.linalg.eigvalsh(G).min() >= -1e-12 * torch.linalg.eigvalsh(G).max()  # PSD to rounding


def test_within_layer_blocks_of_a_piecewise_linear_net_equal_the_hessian():
    model, loss_fn, batch = ALL_CASES["conv"]()
    H = full_hessian(model, loss_fn, batch, progress=False)
    G = gauss_newton(model, loss_fn, batch)
    sizes = [p.numel() for p in model.parameters()]
    bounds = np.cumsum([0] + sizes)
    layer_bounds = [(bounds[i], bounds[i + 2]) for i in range(0, len(sizes), 2)]  # weight + bias per layer
    for lo, hi in layer_bounds:
        assert (H[lo:hi, lo:hi] - G[lo:hi, lo:hi]).abs().max() <= 1e-12 * H.abs().max()
    assert (H - G).abs().max() > 1e-3 * H.abs().max()  # the cross-layer residual is not zero


def test_rejects_bad_chunk_and_outputs():
    model, loss_fn, batch = mlp_case("ce")
    with pytest.raises(ValueError, match="chunk_size"):
        gauss_newton(model, loss_fn, batch, chunk_size=0)
    flat = nn.Sequential(nn.Linear(4, 3), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        gauss_newton(flat, lambda z, t: z.sum(), batch)
