"""The Hessian of a model's loss: Hessian-vector products, the dense Hessian, and a scipy ``LinearOperator``.

Conventions shared by every function here:

* ``batch = (inputs, targets)``; ``loss_fn(outputs, targets)`` returns the scalar batch loss (any reduction).
* Parameters are flattened in ``model.parameters()`` order into a vector of length ``P``.
* The loss is evaluated through ``torch.func.functional_call`` on ``dtype`` copies of the parameters, buffers and
  floating inputs/targets, with every module in eval mode (deterministic: no dropout noise, BatchNorm uses its
  running statistics). The model itself is never modified: its parameters keep their dtype and values and each
  module's ``training`` flag is restored.
* Second derivatives are taken reverse-over-reverse (double backward). Forward-over-reverse would be cheaper for
  some layers but fails through ``MSELoss`` in torch 2.13/2.14 ("ZeroTensors are immutable").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.std import tqdm

__all__ = [
    "LossFn",
    "flatten_tensors",
    "hvp",
    "hessian_operator",
    "HessianOperator",
    "full_hessian",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def flatten_tensors(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one vector ``Tensor[sum of numels]`` (row-major within each tensor)."""
    return torch.cat([t.reshape(-1) for t in tensors])


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode, restoring each module's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _check_batch(batch: object) -> tuple[object, object]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
    return batch[0], batch[1]


def _cast(obj: object, dtype: torch.dtype) -> object:
    """Floating tensors to ``dtype``; integer tensors (tokens, class labels) and non-tensors unchanged."""
    if isinstance(obj, Tensor) and obj.is_floating_point():
        return obj.detach().to(dtype)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype) for o in obj)
    return obj


class _FunctionalLoss:
    """The loss as a function of a list of parameter tensors, on ``dtype`` copies of everything floating.

    Attributes:
        params: ``dtype`` copies of the model's parameters, detached, ``requires_grad=True``.
        names: their names, in ``model.parameters()`` order.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: object, dtype: torch.dtype):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype} must be torch.float32 or torch.float64")
        inputs, targets = _check_batch(batch)
        self.model, self.loss_fn, self.dtype = model, loss_fn, dtype
        named = list(model.named_parameters())
        if not named:
            raise ValueError("model has no parameters")
        self.names = [name for name, _ in named]
        self.params = [p.detach().to(dtype).requires_grad_(True) for _, p in named]
        self.buffers = {name: _cast(b, dtype) for name, b in model.named_buffers()}
        self.inputs, self.targets = _cast(inputs, dtype), _cast(targets, dtype)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def outputs(self, params: Sequence[Tensor], inputs: object | None = None) -> Tensor:
        """Model outputs at ``params`` (a list aligned with ``self.names``)."""
        inputs = self.inputs if inputs is None else inputs
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        with _eval_mode(self.model):
            return functional_call(self.model, {**dict(zip(self.names, params)), **self.buffers}, args)

    def loss(self, params: Sequence[Tensor]) -> Tensor:
        value = self.loss_fn(self.outputs(params), self.targets)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (the batch loss)")
        return value.reshape(())

    def gradient_graph(self) -> tuple[Tensor, Tensor]:
        """The loss and its flat gradient ``Tensor[P]``, the latter with a graph for double backward."""
        value = self.loss(self.params)
        if not torch.isfinite(value):
            raise ValueError(f"the loss at these parameters is not finite ({value.item()}); check model and batch")
        grads = torch.autograd.grad(value, self.params, create_graph=True, allow_unused=True)
        # Parameters the loss does not touch have a zero gradient and zero Hessian rows.
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]
        return value.detach(), flatten_tensors(grads)


class HessianOperator(spla.LinearOperator):
    """The Hessian ``H: R^P → R^P`` of the loss as a scipy ``LinearOperator`` (float64 numpy in and out).

    The forward pass and the gradient graph are built once, at construction; every product is then one backward
    pass through that graph (``matmat`` vectorises the columns with ``is_grads_batched``). ``n_products`` counts
    the Hessian-vector products made so far (a ``matmat`` of ``B`` columns counts ``B``).

    Attributes:
        loss: the loss value (Python float).
        gradient: the gradient ``ndarray[P]``.
        n_products: number of Hessian-vector products computed.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: object, *, dtype: torch.dtype = torch.float64,
                 chunk_size: int = 64):
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        self._f = _FunctionalLoss(model, loss_fn, batch, dtype)
        loss, self._grad = self._f.gradient_graph()
        self.loss = loss.item()
        self.gradient = self._grad.detach().double().numpy()
        self.chunk_size = chunk_size
        self.n_products = 0
        self._batched_ok = True
        P = self._f.n_params
        super().__init__(dtype=np.float64, shape=(P, P))

    def _products(self, V: Tensor) -> Tensor:
        """``H V`` for ``V: Tensor[B, P]`` (rows are directions) → ``Tensor[B, P]``."""
        params = self._f.params
        out = []
        for start in range(0, V.shape[0], self.chunk_size):
            chunk = V[start:start + self.chunk_size]
            if chunk.shape[0] > 1 and self._batched_ok:
                try:
                    rows = torch.autograd.grad(self._grad, params, grad_outputs=chunk, retain_graph=True,
                                               is_grads_batched=True, allow_unused=True)
                    out.append(_flatten_batched(rows, params, chunk.shape[0]))
                    continue
                except RuntimeError:
                    # Some ops have no batching rule for their double backward: fall back to a loop for good.
                    self._batched_ok = False
            for v in chunk:
                rows = torch.autograd.grad(self._grad, params, grad_outputs=v, retain_graph=True, allow_unused=True)
                out.append(_flatten_batched([r if r is None else r.unsqueeze(0) for r in rows], params, 1))
        self.n_products += V.shape[0]
        return torch.cat(out)

    def hvp_tensor(self, V: Tensor) -> Tensor:
        """Torch-side product: ``V: Tensor[P]`` or ``Tensor[B, P]`` (rows are directions), result of the same shape."""
        squeeze = V.ndim == 1
        V = V.to(self._f.dtype).reshape(-1, self.shape[0])
        HV = self._products(V)
        return HV[0] if squeeze else HV

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1))
        return self.hvp_tensor(v).detach().double().numpy()

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        V = torch.as_tensor(np.ascontiguousarray(np.asarray(X, dtype=np.float64).T))
        return self.hvp_tensor(V).detach().double().numpy().T

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:  # H is symmetric
        return self._matvec(x)

    def _adjoint(self) -> HessianOperator:
        return self


def _flatten_batched(rows: Sequence[Tensor | None], params: Sequence[Tensor], batch: int) -> Tensor:
    """``[B, *shape]`` per-parameter results (``None`` = unused parameter, zero) → ``Tensor[B, P]``."""
    parts = [torch.zeros(batch, p.numel(), dtype=p.dtype) if r is None else r.reshape(batch, -1)
             for r, p in zip(rows, params)]
    return torch.cat(parts, dim=1)


def hessian_operator(model: nn.Module, loss_fn: LossFn, batch: object, *, dtype: torch.dtype = torch.float64,
                     chunk_size: int = 64) -> HessianOperator:
    """The loss Hessian as a ``scipy.sparse.linalg.LinearOperator`` with ``matvec`` and a vectorised ``matmat``.

    Args:
        model: the network; not modified.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        batch: ``(inputs, targets)``; inputs may be integer tokens.
        dtype: precision of the computation (float64 by default; results are returned as float64 numpy).
        chunk_size: how many columns one batched backward pass takes in ``matmat``.
    Returns:
        :class:`HessianOperator` of shape ``(P, P)``.
    """
    return HessianOperator(model, loss_fn, batch, dtype=dtype, chunk_size=chunk_size)


def hvp(model: nn.Module, loss_fn: LossFn, batch: object, v: Tensor | np.ndarray, *,
        dtype: torch.dtype = torch.float64) -> Tensor:
    """Hessian-vector product ``H v`` of the loss, exact (double backward).

    Args:
        v: ``Tensor[P]`` (or ndarray) in flattened ``model.parameters()`` order.
    Returns:
        ``Tensor[P]`` of ``dtype``.
    """
    f = _FunctionalLoss(model, loss_fn, batch, dtype)
    v = torch.as_tensor(v).to(dtype)
    if v.shape != (f.n_params,):
        raise ValueError(f"v must have shape ({f.n_params},) (the number of parameters), got {tuple(v.shape)}")
    _, grad = f.gradient_graph()
    rows = torch.autograd.grad(grad, f.params, grad_outputs=v, allow_unused=True)
    return _flatten_batched([r if r is None else r.unsqueeze(0) for r in rows], f.params, 1)[0].detach()


# --------------------------------------------------------------------------------------------------------------
# The dense Hessian
# --------------------------------------------------------------------------------------------------------------

# Modules in which the network output is piecewise *linear* in everything: they carry no parameters of their own.
_PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AvgPool3d, nn.Flatten, nn.Identity, nn.Dropout)
# Modules whose output is affine in their own parameters (weight and bias jointly).
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _structured_layout(model: nn.Module) -> list[int] | None:
    """Indices of the parametrised modules of ``model`` if the structured path applies, else ``None``.

    It applies to an ``nn.Sequential`` built only from affine layers (Linear/Conv) and parameter-free piecewise
    linear modules (ReLU, LeakyReLU, max/avg pooling, Flatten, Identity, Dropout — identity in eval mode), whose
    last parametrised module is an ``nn.Linear``.
    """
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return None
    layers = []
    for index, module in enumerate(model):
        if isinstance(module, _AFFINE):
            layers.append(index)
        elif not isinstance(module, _PIECEWISE_LINEAR):
            return None
    if not layers or not isinstance(model[layers[-1]], nn.Linear):
        return None
    return layers


def full_hessian(model: nn.Module, loss_fn: LossFn, batch: object, *, dtype: torch.dtype = torch.float64,
                 method: str = "auto", chunk_size: int = 64, progress: bool = True) -> Tensor:
    """The exact, symmetric Hessian ``Tensor[P, P]`` of the loss with respect to all parameters.

    Two exact methods:

    * ``"rows"`` (any model): the gradient graph is built once and ``H`` is assembled from batched double-backward
      passes along ``chunk_size`` unit vectors at a time.
    * ``"structured"`` (an ``nn.Sequential`` of Linear/Conv layers and ReLU/pooling/Flatten, ending in a Linear
      layer, like LeNet-tiny): with outputs ``Z`` (per sample), residual ``r = ∂ℓ/∂Z`` and ``J = ∂Z/∂θ``,
      ``H = Jᵀ (∂²ℓ/∂Z²) J + Σ r·∇²Z`` (Gauss–Newton + residual). Between its kinks such a network is affine in
      each layer's own parameters, so the residual term vanishes inside every layer's block. For the last
      Linear layer ``u = W a + b`` it is ``Σₙ δₙ ⊗ ∂aₙ/∂θ`` (``δ = ∂(r·Z)/∂u``), from a per-sample Jacobian of
      the last layer's input; the remaining cross-layer blocks come from exact Hessian rows along every earlier
      layer but the largest. For LeNet-tiny that is 208 rows instead of 5,994.
      Requires samples to be independent (true for such a network in eval mode).

    ``"auto"`` takes ``"structured"`` where it applies, else ``"rows"``. Both agree with
    ``torch.autograd.functional.hessian`` to rounding (see ``tests/test_operators.py``).

    Args:
        model, loss_fn, batch, dtype: as in :func:`hessian_operator`.
        method: ``"auto"``, ``"rows"`` or ``"structured"``.
        chunk_size: unit vectors per batched backward pass.
        progress: show a tqdm bar.
    Returns:
        ``Tensor[P, P]`` of ``dtype``, symmetric.
    """
    if method not in ("auto", "rows", "structured"):
        raise ValueError(f"method={method!r} must be 'auto', 'rows' or 'structured'")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    layout = _structured_layout(model)
    if method == "structured" and layout is None:
        raise ValueError("method='structured' needs an nn.Sequential of Linear/Conv layers and parameter-free "
                         "piecewise-linear modules ending in an nn.Linear; use method='rows'")
    if method == "rows" or layout is None:
        op = HessianOperator(model, loss_fn, batch, dtype=dtype, chunk_size=chunk_size)
        H = _rows(op, torch.arange(op.shape[0]), chunk_size, progress, "Hessian rows")
    else:
        H = _structured_hessian(model, loss_fn, batch, layout, dtype, chunk_size, progress)
    H = (H + H.T) / 2
    if not torch.isfinite(H).all():
        raise ValueError("the Hessian has non-finite entries; check the model, loss_fn and batch")
    return H


def _rows(op: HessianOperator, index: Tensor, chunk_size: int, progress: bool, label: str) -> Tensor:
    """Hessian rows ``H[index, :]`` → ``Tensor[len(index), P]``."""
    P, dtype = op.shape[0], op._f.dtype
    out = torch.empty(len(index), P, dtype=dtype)
    with tqdm(total=len(index), desc=label, disable=not progress, leave=False) as bar:
        for start in range(0, len(index), chunk_size):
            rows = index[start:start + chunk_size]
            E = torch.zeros(len(rows), P, dtype=dtype)
            E[torch.arange(len(rows)), rows] = 1
            out[start:start + len(rows)] = op.hvp_tensor(E).detach()
            bar.update(len(rows))
    return out


def _structured_hessian(model: nn.Sequential, loss_fn: LossFn, batch: object, layers: list[int],
                        dtype: torch.dtype, chunk_size: int, progress: bool) -> Tensor:
    """See :func:`full_hessian`, method ``"structured"``."""
    f = _FunctionalLoss(model, loss_fn, batch, dtype)
    # Parameter ranges of each parametrised module, in flattened order.
    module_of = {name: int(name.split(".")[0]) for name in f.names}
    offsets = np.cumsum([0] + [p.numel() for p in f.params])
    span = {}
    for i, name in enumerate(f.names):
        lo, hi = span.get(module_of[name], (offsets[i], offsets[i]))
        span[module_of[name]] = (min(lo, offsets[i]), max(hi, offsets[i + 1]))
    last = layers[-1]
    earlier = layers[:-1]
    # Rows along every earlier layer except the largest: they give all cross blocks among earlier layers.
    largest = max(earlier, key=lambda m: span[m][1] - span[m][0]) if earlier else None
    row_layers = [m for m in earlier if m != largest]
    row_index = torch.cat([torch.arange(*span[m]) for m in row_layers]) if row_layers else torch.arange(0)
    P = f.n_params
    rest = torch.ones(P, dtype=torch.bool)
    rest[row_index] = False
    rest_index = torch.nonzero(rest).squeeze(1)
    n_steps = len(row_index) + 3
    bar = tqdm(total=n_steps, desc="Hessian (structured)", disable=not progress, leave=False)

    H = torch.zeros(P, P, dtype=dtype)
    if len(row_index):
        op = HessianOperator(model, loss_fn, batch, dtype=dtype, chunk_size=chunk_size)
        R = _rows(op, row_index, chunk_size, False, "")
        H[row_index] = R
        H[:, row_index] = R.T
        bar.update(len(row_index))

    # Per-sample Jacobian of the outputs wrt the remaining parameters: J [N, C, P_rest].
    inputs = f.inputs
    params = [p.detach() for p in f.params]
    is_rest = [bool(rest[offsets[i]]) for i in range(len(params))]  # a tensor lies wholly in or out of the rows
    rest_ids = [i for i, keep in enumerate(is_rest) if keep]

    def outputs_one(rest_params: list[Tensor], x: Tensor) -> Tensor:
        full = list(params)
        for i, t in zip(rest_ids, rest_params):
            full[i] = t
        return f.outputs(full, x.unsqueeze(0))[0]

    rest_params = [params[i] for i in rest_ids]
    Z = f.outputs(params).detach()
    if Z.ndim != 2:
        raise ValueError("method='structured' needs outputs of shape [N, C]; use method='rows'")
    N, C = Z.shape
    J = torch.func.vmap(torch.func.jacrev(outputs_one), in_dims=(None, 0))(rest_params, inputs)
    J = torch.cat([j.reshape(N, C, -1) for j in J], dim=2)  # [N, C, P_rest]
    bar.update(1)

    # Loss curvature in output space, Λ = ∂²ℓ/∂Z² [N, C, N, C], and residual r = ∂ℓ/∂Z [N, C].
    def loss_of_outputs(z: Tensor) -> Tensor:
        return f.loss_fn(z, f.targets).reshape(())

    r = torch.func.grad(loss_of_outputs)(Z)
    Lam = torch.func.jacrev(torch.func.grad(loss_of_outputs))(Z)
    diag = Lam[torch.arange(N), :, torch.arange(N), :]  # [N, C, C] per-sample blocks
    off_block = Lam.abs().sum() - diag.abs().sum()
    if off_block == 0:  # the usual case: the loss is a sum over samples
        LamJ = torch.einsum("nij,njp->nip", diag, J)
    else:
        LamJ = (Lam.reshape(N * C, N * C) @ J.reshape(N * C, -1)).reshape(N, C, -1)
    G = J.reshape(N * C, -1).T @ LamJ.reshape(N * C, -1)  # Gauss-Newton block on the remaining parameters
    bar.update(1)

    # Residual of the last Linear layer against the largest earlier layer (the only cross block left).
    residual = torch.zeros_like(G)
    if largest is not None:
        split = last  # a = model[:split](x), u = model[split](a), Z = model[split + 1:](u)
        with _eval_mode(model):
            prefix_names = [i for i in rest_ids if module_of[f.names[i]] == largest]

            def prefix_state(full: Sequence[Tensor]) -> dict[str, Tensor]:
                """Parameters and buffers of the modules before the last Linear layer."""
                named = {n: t for n, t in zip(f.names, full) if module_of[n] < split}
                named.update({n: b for n, b in f.buffers.items() if int(n.split(".")[0]) < split})
                return named

            def activation_one(layer_params: list[Tensor], x: Tensor) -> Tensor:
                full = list(params)
                for i, t in zip(prefix_names, layer_params):
                    full[i] = t
                return functional_call(model[:split], prefix_state(full), (x.unsqueeze(0),))[0]

            a = functional_call(model[:split], prefix_state(params), (inputs,))
            if a.ndim != 2:
                raise ValueError("method='structured' needs the last Linear layer's input to be [N, K]")
            w_name, b_name = f"{last}.weight", f"{last}.bias"
            weight = params[f.names.index(w_name)]
            bias = params[f.names.index(b_name)] if b_name in f.names else None
            u = torch.nn.functional.linear(a, weight, bias).detach().requires_grad_(True)
            z = model[last + 1:](u) if last + 1 < len(model) else u
            # δ = ∂(r·Z)/∂u: the residual pulled back through the parameter-free tail (kinks held fixed).
            delta = torch.autograd.grad(z, u, grad_outputs=r)[0]  # [N, out]
        K = a.shape[1]
        layer_params = [params[i] for i in prefix_names]
        cross = torch.zeros(delta.shape[1] * K, sum(t.numel() for t in layer_params), dtype=dtype)
        # Chunk over samples to bound the memory of the per-sample Jacobian [n, K, P_layer].
        step = max(1, int(2**27 // max(1, K * cross.shape[1])))
        for start in range(0, N, step):
            Ja = torch.func.vmap(torch.func.jacrev(activation_one), in_dims=(None, 0))(
                layer_params, inputs[start:start + step])
            Ja = torch.cat([j.reshape(j.shape[0], K, -1) for j in Ja], dim=2)  # [n, K, P_layer]
            cross += torch.einsum("nc,nkp->ckp", delta[start:start + step], Ja).reshape(cross.shape)
        # Place it: rows = the last layer's weight entries, columns = the largest earlier layer, within "rest".
        position = {int(g): k for k, g in enumerate(rest_index)}
        w_lo = offsets[f.names.index(w_name)]
        w_rows = torch.tensor([position[w_lo + k] for k in range(cross.shape[0])])
        l_lo, l_hi = span[largest]
        l_cols = torch.tensor([position[k] for k in range(l_lo, l_hi)])
        residual[w_rows[:, None], l_cols[None, :]] = cross
        residual[l_cols[:, None], w_rows[None, :]] = cross.T
    bar.update(1)
    H[rest_index[:, None], rest_index[None, :]] = G + residual
    bar.close()
    return H
