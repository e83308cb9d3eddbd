"""Argument checks shared by the core's modules: one wording for every error, naming the bad argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.sparse.linalg import LinearOperator, aslinearoperator

__all__ = ["check_int", "check_positive_float", "check_choice", "as_block_operator", "readonly"]


def check_int(name: str, value: object, *, minimum: int) -> int:
    """``value`` as an ``int`` (bools refused), or a ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return int(value)


def check_positive_float(name: str, value: object) -> float:
    """``value`` as a positive finite ``float``, or an error naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a float")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value} must be a positive finite number")
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming ``name``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {choices}")
    return value


def as_block_operator(operator: LinearOperator | ArrayLike) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """``(apply, P)``: ``apply(X: ndarray[P, b]) -> ndarray[P, b]`` float64 via one ``matmat`` call."""
    try:
        linear_operator = aslinearoperator(operator)
    except (TypeError, ValueError) as error:
        raise TypeError(f"operator must be a LinearOperator, ndarray or sparse matrix, got "
                        f"{type(operator).__name__}") from error
    shape = linear_operator.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"operator must be square, got shape {shape}")
    size = int(shape[0])
    if size < 1:
        raise ValueError(f"operator must have a positive size, got shape {shape}")

    def apply(block: np.ndarray) -> np.ndarray:
        # One column goes through matvec: same cost for an HVP operator, and for matrix-backed operators a
        # matrix-vector product (BLAS-2) is much cheaper than a one-column matrix-matrix product.
        if block.shape[1] == 1:
            product = linear_operator.matvec(np.ascontiguousarray(block[:, 0]))
        else:
            product = linear_operator.matmat(block)
        # Some LinearOperators return (P,) for a single column; restore the block shape.
        return np.asarray(product, dtype=np.float64).reshape(block.shape)

    return apply, size


def readonly(array: np.ndarray) -> np.ndarray:
    """``array``, marked read-only (results are frozen)."""
    array.setflags(write=False)
    return array
