"""Small models, batches and losses shared by the tests (float64 references are computed from these)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn

from hessian_book.models import ModAddMLP, ModAddTransformer


# The tiny grokking transformer (P = 936) that the chapter tests put on top of the grokking smoke preset, whose own
# model (P = 9,888, the one the smoke notebook trains) costs more than they need. from_parameters lets a value equal
# to a field's default lose to the preset's, so the preset's train_fraction 0.6 and init/split 2 stay unless a test
# sets them with dataclasses.replace.
TINY_TRANSFORMER = dict(d_model=8, d_mlp=16, weight_decay=1.0, lr=3e-3)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp_case(loss: str = "ce"):
    """Tanh+ReLU MLP (not piecewise linear: exercises the generic path) with a choice of loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 3))
    x = torch.randn(7, 4, generator=_generator(1))
    if loss == "ce":
        return model, nn.CrossEntropyLoss(), (x, torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    if loss == "ce_sum":
        return model, nn.CrossEntropyLoss(reduction="sum"), (x, torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    if loss == "mse":
        return model, nn.MSELoss(), (x, torch.randn(7, 3, generator=_generator(2)))
    if loss == "bce":
        return model, nn.BCEWithLogitsLoss(), (x, (torch.rand(7, 3, generator=_generator(3)) > 0.5).double())
    raise ValueError(loss)


def relu_mlp_case(loss: str = "ce"):
    """Piecewise-linear MLP (structured path applies): Linear-ReLU-Linear-ReLU-Linear."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(9, 5, generator=_generator(4))
    y = torch.randint(0, 3, (9,), generator=_generator(5))
    if loss == "mse":
        return model, nn.MSELoss(reduction="sum"), (x, torch.randn(9, 3, generator=_generator(6)))
    return model, nn.CrossEntropyLoss(), (x, y)


def conv_case():
    """A miniature LeNet: conv + ReLU + max-pool, twice, then a Linear readout (structured path applies)."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3, 4),
    )
    x = torch.randn(6, 1, 10, 10, generator=_generator(7))
    y = torch.randint(0, 4, (6,), generator=_generator(8))
    return model, nn.CrossEntropyLoss(), (x, y)


def attention_case():
    """The modular-addition transformer at a tiny size, with integer-token inputs and an MLP block."""
    model = ModAddTransformer(p=5, d_model=4, n_heads=2, d_mlp=6, seed=3)
    a = torch.randint(0, 5, (8,), generator=_generator(9))
    b = torch.randint(0, 5, (8,), generator=_generator(10))
    tokens = torch.stack([a, b, torch.full_like(a, 5)], dim=1)
    return model, nn.CrossEntropyLoss(), (tokens, (a + b) % 5)


def modadd_mlp_case():
    """The modular-addition MLP with a learned embedding (structured path does not apply: Embedding)."""
    model = ModAddMLP(p=5, depth=2, width=4, input_encoding="embed", seed=4)
    xy = torch.randint(0, 5, (10, 2), generator=_generator(11))
    return model, nn.CrossEntropyLoss(), (xy, xy.sum(1) % 5)


ALL_CASES = {
    "mlp_ce": lambda: mlp_case("ce"),
    "mlp_ce_sum": lambda: mlp_case("ce_sum"),
    "mlp_mse": lambda: mlp_case("mse"),
    "mlp_bce": lambda: mlp_case("bce"),
    "relu_mlp_ce": lambda: relu_mlp_case("ce"),
    "relu_mlp_mse": lambda: relu_mlp_case("mse"),
    "conv": conv_case,
    "attention": attention_case,
    "modadd_mlp": modadd_mlp_case,
}
STRUCTURED_CASES = ["relu_mlp_ce", "relu_mlp_mse", "conv"]


def reference_hessian(model, loss_fn, batch) -> torch.Tensor:
    """Dense float64 Hessian by ``torch.autograd.functional.hessian`` on a float64 deep copy of the model."""
    import copy

    ref = copy.deepcopy(model).double().eval()
    inputs, targets = batch
    inputs = inputs.double() if inputs.is_floating_point() else inputs
    targets = targets.double() if targets.is_floating_point() else targets
    names = [n for n, _ in ref.named_parameters()]
    shapes = [p.shape for p in ref.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])

    def loss_of(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            n = shape.numel()
            params[name] = theta[start:start + n].reshape(shape)
            start += n
        return loss_fn(torch.func.functional_call(ref, params, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss_of, flat)


# Symmetric matrices with planted spectra, for the Krylov solvers

def planted(spectrum: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``A = Q diag(spectrum) Q^T`` with Haar-random orthogonal ``Q``; returns ``(A, Q)``."""
    rng = np.random.default_rng(seed)
    size = len(spectrum)
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    q *= np.sign(np.diag(r))
    matrix = (q * spectrum) @ q.T
    return 0.5 * (matrix + matrix.T), q


class CountingOperator(LinearOperator):
    """Symmetric LinearOperator around a dense matrix that counts applied vectors."""

    def __init__(self, matrix: np.ndarray):
        super().__init__(np.float64, matrix.shape)
        self.matrix = matrix
        self.count = 0

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        self.count += 1
        return self.matrix @ x

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        self.count += X.shape[1]
        return self.matrix @ X

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)


def reference_ends(matrix: np.ndarray, k: int, which: str) -> np.ndarray:
    values = np.linalg.eigvalsh(matrix)
    return {"largest": values[-k:], "smallest": values[:k], "both": np.r_[values[:k], values[-k:]]}[which]


def check_pairs(matrix: np.ndarray, values: np.ndarray, vectors: np.ndarray, bound: float) -> None:
    """Residuals ``||A v - lambda v|| <= bound`` and orthonormal columns."""
    residuals = np.linalg.norm(matrix @ vectors - vectors * values, axis=0)
    assert residuals.max() <= bound
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(len(values)), atol=1e-10)
