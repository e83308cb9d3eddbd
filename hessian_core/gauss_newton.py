"""The generalised Gauss–Newton part ``G = Jᵀ Λ J`` of a loss Hessian.

With per-sample outputs ``Z = f(θ)`` of shape ``[N, C]``, ``J = ∂Z/∂θ`` and ``Λ = ∂²ℓ/∂Z²``, the Hessian of the
loss ``ℓ(f(θ))`` is ``H = Jᵀ Λ J + Σ (∂ℓ/∂Z)·∇²Z``; :func:`gauss_newton` returns the first term exactly. For a
softmax cross-entropy each sample's block of ``Λ`` is ``diag(p) − p pᵀ`` (times the reduction's weight), of rank
``C − 1``, so ``rank G ≤ N (C − 1)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .operators import LossFn, _FunctionalLoss

__all__ = ["gauss_newton"]


def gauss_newton(model: nn.Module, loss_fn: LossFn, batch: object, *, dtype: torch.dtype = torch.float64,
                 chunk_size: int = 256) -> Tensor:
    """The exact generalised Gauss–Newton matrix ``G = Jᵀ Λ J`` ``Tensor[P, P]`` of the loss on ``batch``.

    ``J`` is the per-sample Jacobian of the outputs with respect to all parameters (flattened in
    ``model.parameters()`` order), taken one sample at a time (``vmap`` of ``jacrev``): the model must treat
    samples independently (true in eval mode for networks without cross-sample layers). ``Λ = ∂²ℓ/∂Z²`` is the
    loss's Hessian in output space over the whole batch (``[N·C, N·C]``, so ``N·C`` should stay in the
    thousands); when it is block-diagonal over samples (a loss that is a sum or mean over samples) only the
    per-sample blocks are used.

    Args:
        model, loss_fn, batch, dtype: as in :func:`hessian_core.hessian_operator`; outputs must be ``[N, C]``.
        chunk_size: samples per per-sample Jacobian (bounds its memory, ``chunk_size · C · P`` numbers).
    Returns:
        ``Tensor[P, P]`` of ``dtype``, symmetric, positive semidefinite when every block of ``Λ`` is.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    f = _FunctionalLoss(model, loss_fn, batch, dtype)
    params = [p.detach() for p in f.params]
    Z = f.outputs(params).detach()
    if Z.ndim != 2:
        raise ValueError(f"gauss_newton needs outputs of shape [N, C], got {tuple(Z.shape)}")
    N, C = Z.shape
    P = f.n_params

    def loss_of_outputs(z: Tensor) -> Tensor:
        return f.loss_fn(z, f.targets).reshape(())

    Lam = torch.func.jacrev(torch.func.grad(loss_of_outputs))(Z).reshape(N, C, N, C)
    blocks = Lam[torch.arange(N), :, torch.arange(N), :]  # [N, C, C]
    block_diagonal = bool((Lam.abs().sum() - blocks.abs().sum()) == 0)

    def outputs_one(ps: list[Tensor], x: Tensor) -> Tensor:
        return f.outputs(ps, x.unsqueeze(0))[0]

    inputs = f.inputs
    G = torch.zeros(P, P, dtype=dtype)
    if block_diagonal:
        for start in range(0, N, chunk_size):
            Jc = torch.func.vmap(torch.func.jacrev(outputs_one), in_dims=(None, 0))(params, inputs[start:start + chunk_size])
            Jc = torch.cat([j.reshape(j.shape[0], C, -1) for j in Jc], dim=2)  # [n, C, P]
            LJ = torch.einsum("nij,njp->nip", blocks[start:start + chunk_size], Jc)
            G += Jc.reshape(-1, P).T @ LJ.reshape(-1, P)
    else:
        J = torch.cat([torch.cat([j.reshape(j.shape[0], C, -1) for j in torch.func.vmap(
            torch.func.jacrev(outputs_one), in_dims=(None, 0))(params, inputs[s:s + chunk_size])], dim=2)
            for s in range(0, N, chunk_size)]).reshape(N * C, P)
        G = J.T @ (Lam.reshape(N * C, N * C) @ J)
    return (G + G.T) / 2
