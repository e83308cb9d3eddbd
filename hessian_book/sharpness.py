"""Sharpness over training: the extreme signed Hessian eigenvalues at a saved state, Adam's preconditioned
sharpness and its stability threshold.

Used by the depth chapter (MLPs on modular addition); nothing here is specific to MLPs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn

from hessian_core import hessian_operator, lanczos

__all__ = ["hessian_extremes", "adam_preconditioner", "adam_stability_threshold", "PreconditionedOperator"]


def hessian_extremes(model: nn.Module, loss_fn, batch: object, *, tol: float = 1e-3,
                     dtype: torch.dtype = torch.float32, preconditioner: np.ndarray | None = None,
                     seed: int = 0) -> dict:
    """The largest and smallest signed eigenvalues of the loss Hessian on ``batch`` by Lanczos.

    Both ends come from one Krylov space (``which="both"``), accurate to ``tol`` times the spectral radius (the
    stopping rule of :func:`hessian_core.lanczos`). With ``preconditioner`` (Adam's diagonal ``P``, see
    :func:`adam_preconditioner`) the largest eigenvalue of ``P^{-1} H`` is added (``preconditioned_lambda_max``),
    from a second Lanczos run on the symmetric ``P^{-1/2} H P^{-1/2}``, which has the same eigenvalues.

    Args:
        model, loss_fn, batch: as in :func:`hessian_core.hessian_operator` (``batch = (inputs, targets)``).
        tol: relative residual tolerance.
        dtype: precision of the Hessian-vector products (float32: eigenvalues good to ~1e-6 of ``|λ|_max``).
        preconditioner: ``ndarray[P]``, positive, in ``model.parameters()`` order.
        seed: Lanczos start-vector seed.
    Returns:
        ``{"lambda_max", "lambda_min", "loss", "n_hvp", "seconds"}`` (+ ``"preconditioned_lambda_max"``).
    """
    started = time.perf_counter()
    op = hessian_operator(model, loss_fn, batch, dtype=dtype)
    lam_min, lam_max = lanczos(op, 1, which="both", tol=tol, seed=seed, progress=False)
    out = {"lambda_max": float(lam_max), "lambda_min": float(lam_min), "loss": op.loss}
    if preconditioner is not None:
        scaled = PreconditionedOperator(op, preconditioner)
        out["preconditioned_lambda_max"] = float(lanczos(scaled, 1, which="largest", tol=tol, seed=seed,
                                                         progress=False)[-1])
    out.update(n_hvp=op.n_products, seconds=time.perf_counter() - started)
    return out


class PreconditionedOperator(LinearOperator):
    """``P^{-1/2} A P^{-1/2}`` for a symmetric operator ``A`` and a positive diagonal ``P`` (``ndarray[n]``).

    Similar to ``P^{-1} A`` (same eigenvalues), but symmetric, so Lanczos applies.
    """

    def __init__(self, operator: LinearOperator, diagonal: np.ndarray):
        diagonal = np.asarray(diagonal, dtype=np.float64).reshape(-1)
        if diagonal.shape != (operator.shape[0],) or not np.all(diagonal > 0):
            raise ValueError(f"diagonal must be positive with shape ({operator.shape[0]},), got {diagonal.shape}")
        self._operator, self._scale = operator, 1 / np.sqrt(diagonal)
        super().__init__(dtype=np.float64, shape=operator.shape)

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        scale = self._scale[:, None]
        return scale * self._operator.matmat(scale * X)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return self._scale * self._operator.matvec(self._scale * x)

    def _adjoint(self) -> PreconditionedOperator:
        return self


def adam_preconditioner(optimiser_state: Mapping) -> np.ndarray:
    """Adam's effective diagonal preconditioner ``P`` at the current step, flattened: ``ndarray[P]``.

    Adam's update is ``θ ← θ − η m_t / P_t`` with the raw first moment ``m_t`` and (Cohen et al. 2022, "Adaptive
    gradient methods at the edge of stability") ``P_t = (1 − β1^t) (sqrt(v_t / (1 − β2^t)) + ε)``. Read off a
    ``torch.optim.Adam``/``AdamW`` ``state_dict()`` with one parameter group, in parameter order.
    """
    group = optimiser_state["param_groups"][0]
    (beta1, beta2), eps = group["betas"], group["eps"]
    parts = []
    for index in group["params"]:
        state = optimiser_state["state"][index]
        t = float(state["step"])
        v_hat = state["exp_avg_sq"].double().reshape(-1) / (1 - beta2 ** t)
        parts.append((1 - beta1 ** t) * (v_hat.sqrt() + eps))
    return torch.cat(parts).numpy()


def adam_stability_threshold(lr: float, beta1: float) -> float:
    """The largest stable preconditioned sharpness ``λ_max(P^{-1} H)`` of Adam on a quadratic:
    ``(2 + 2 β1) / ((1 − β1) lr)`` (``38 / lr`` for ``β1 = 0.9``; gradient descent's ``2 / lr`` is ``β1 = 0``)."""
    if not (lr > 0 and 0 <= beta1 < 1):
        raise ValueError(f"lr={lr!r} must be > 0 and beta1={beta1!r} in [0, 1)")
    return (2 + 2 * beta1) / ((1 - beta1) * lr)
