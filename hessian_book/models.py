"""The models the book studies: LeNet-tiny, the modular-addition transformer, and modular-addition MLPs.

All are small enough for an exact float64 Hessian. Parameter order (``model.parameters()``) is the order in which the
flattened Hessian indexes parameters; :func:`parameter_groups` names the slices.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["lenet_tiny", "ModAddTransformer", "ModAddMLP", "parameter_groups", "n_parameters"]


def lenet_tiny(seed: int | None = None) -> nn.Sequential:
    """LeNet-tiny, as in the seed repository: 5,994 parameters, no BatchNorm.

    ``Conv2d(1,8,5) → ReLU → MaxPool2d(2) → Conv2d(8,16,5) → ReLU → MaxPool2d(2) → Flatten → Linear(256,10)``.
    Input ``[N, 1, 28, 28]``, output logits ``[N, 10]``. Built as an ``nn.Sequential`` of piecewise-linear modules,
    which :func:`hessian_core.full_hessian` recognises for its fast exact path.

    Args:
        seed: if given, the parameters are initialised from ``torch.Generator().manual_seed(seed)``
            (PyTorch's default initialisation, reproducible without touching the global RNG).
    """
    if seed is not None:
        # Fork so that building a model never shifts the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return lenet_tiny(None)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


class ModAddTransformer(nn.Module):
    """One-layer transformer for ``a + b mod p`` on the sequence ``[a, b, =]`` (vocabulary ``p + 1``, ``=`` is ``p``).

    Token and positional embeddings, multi-head attention with ``W_Q, W_K, W_V, W_O`` (no biases), an optional
    ReLU MLP block (``d_mlp``), unembedding to ``p`` logits read at the ``=`` position; no LayerNorm (Nanda et al.
    2023). At ``d_model=32, n_heads=1, d_mlp=None, p=113`` it has 11,456 parameters.

    Only the ``=`` position's output is read, and in a one-layer model it depends on the other positions only
    through attention, so only the last query is computed (causal or not makes no difference for it).

    Args:
        p: modulus; vocabulary ``p + 1``.
        d_model: residual width; must be divisible by ``n_heads``.
        n_heads: attention heads.
        d_mlp: width of the ReLU MLP block after attention (with biases), or ``None`` for attention only.
        seed: initialisation seed; weights ``~ N(0, 1/fan_in)``, biases zero.
    """

    def __init__(self, p: int = 113, d_model: int = 32, n_heads: int = 1, d_mlp: int | None = None, seed: int = 0):
        super().__init__()
        for name, value in (("p", p), ("d_model", d_model), ("n_heads", n_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if d_mlp is not None and (not isinstance(d_mlp, int) or d_mlp < 1):
            raise ValueError(f"d_mlp={d_mlp!r} must be a positive integer or None")
        self.p, self.d_model, self.n_heads, self.d_mlp = p, d_model, n_heads, d_mlp
        g = torch.Generator().manual_seed(seed)

        def normal(*shape: int, fan_in: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) / math.sqrt(fan_in))

        self.W_E = normal(p + 1, d_model, fan_in=d_model)
        self.W_pos = normal(3, d_model, fan_in=d_model)
        self.W_Q = normal(d_model, d_model, fan_in=d_model)
        self.W_K = normal(d_model, d_model, fan_in=d_model)
        self.W_V = normal(d_model, d_model, fan_in=d_model)
        self.W_O = normal(d_model, d_model, fan_in=d_model)
        if d_mlp is not None:
            self.W_in = normal(d_model, d_mlp, fan_in=d_model)
            self.b_in = nn.Parameter(torch.zeros(d_mlp))
            self.W_out = normal(d_mlp, d_model, fan_in=d_mlp)
            self.b_out = nn.Parameter(torch.zeros(d_model))
        self.W_U = normal(d_model, p, fan_in=d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits at the ``=`` position.

        Args:
            tokens: ``LongTensor[N, 3]`` of ``[a, b, p]``.
        Returns:
            ``Tensor[N, p]``.
        """
        if tokens.ndim != 2 or tokens.shape[1] != 3:
            raise ValueError(f"tokens must have shape [N, 3], got {tuple(tokens.shape)}")
        x = self.W_E[tokens] + self.W_pos  # [N, 3, d]
        n, _, d = x.shape
        h, dh = self.n_heads, d // self.n_heads
        q = (x[:, -1] @ self.W_Q).view(n, h, dh)  # [N, h, dh]: only the "=" query is read
        k = (x @ self.W_K).view(n, 3, h, dh)
        v = (x @ self.W_V).view(n, 3, h, dh)
        scores = torch.einsum("nhd,nshd->nhs", q, k) / math.sqrt(dh)
        attn = torch.softmax(scores, dim=-1)  # [N, h, 3]
        z = torch.einsum("nhs,nshd->nhd", attn, v).reshape(n, d)
        resid = x[:, -1] + z @ self.W_O
        if self.d_mlp is not None:
            resid = resid + torch.relu(resid @ self.W_in + self.b_in) @ self.W_out + self.b_out
        return resid @ self.W_U


class ModAddMLP(nn.Module):
    """MLP for ``(x + y) mod p``: embed ``x`` and ``y``, ``depth`` ReLU hidden layers of ``width``, linear readout.

    Args:
        p: modulus (inputs in ``[0, p)``, ``p`` classes).
        depth: number of hidden layers (>= 1).
        width: hidden width.
        input_encoding: ``"onehot"`` (the two one-hot vectors concatenated, ``2p`` inputs) or ``"embed"`` (a
            learned ``p × width`` embedding shared by ``x`` and ``y``, concatenated).
        seed: initialisation seed (PyTorch default initialisation under a private generator state).
    """

    def __init__(self, p: int = 97, depth: int = 2, width: int = 128, input_encoding: str = "onehot", seed: int = 0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1")
        if input_encoding not in ("onehot", "embed"):
            raise ValueError(f"input_encoding={input_encoding!r} must be 'onehot' or 'embed'")
        self.p, self.depth, self.width, self.input_encoding = p, depth, width, input_encoding
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if input_encoding == "embed":
                self.embed = nn.Embedding(p, width)
                d_in = 2 * width
            else:
                d_in = 2 * p
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [nn.Linear(d_in, width), nn.ReLU()]
                d_in = width
            layers.append(nn.Linear(width, p))
            self.layers = nn.Sequential(*layers)

    def forward(self, xy: Tensor) -> Tensor:
        """Logits ``[N, p]`` from integer pairs ``xy: LongTensor[N, 2]``."""
        if self.input_encoding == "embed":
            return self.layers(self.embed(xy).flatten(1))
        # one_hot(x) ⊕ one_hot(y) times W1ᵀ is the sum of two columns of W1: a lookup instead of a [N, 2p] matmul
        # (the same function and derivatives, a fraction of the cost; checked against the matmul in the tests).
        first = self.layers[0]
        columns = first.weight.t()  # [2p, width]
        h = columns[xy[:, 0]] + columns[self.p + xy[:, 1]] + first.bias
        return self.layers[1:](h)


def parameter_groups(model: nn.Module) -> list[tuple[str, slice]]:
    """Name and slice of each parameter tensor in the flattened parameter vector (``model.parameters()`` order)."""
    groups, start = [], 0
    for name, param in model.named_parameters():
        groups.append((name, slice(start, start + param.numel())))
        start += param.numel()
    return groups


def n_parameters(model: nn.Module) -> int:
    """Number of scalar parameters ``P``."""
    return sum(p.numel() for p in model.parameters())
