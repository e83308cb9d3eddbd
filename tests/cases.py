"""Small models, batches and losses shared by the tests (float64 references are computed from these)."""

from __future__ import annotations

import torch
from torch import nn

from hessian_core.models import ModAddMLP, ModAddTransformer


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
