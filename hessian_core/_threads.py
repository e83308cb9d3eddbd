"""Capping numpy/scipy's BLAS thread pool while a solver runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def blas_threads_limited(threads: int | None) -> Iterator[None]:
    """Temporarily cap the BLAS thread pools of numpy/scipy (``threadpoolctl``); restored afterwards.

    Why: the solvers here make many small BLAS calls between operator applications. Multi-threaded OpenBLAS
    spends small calls synchronising threads, and its idle threads keep spinning into the next Hessian-vector
    product, where they compete with torch's own threads for the same cores. Measured on this 2-core machine
    (transformer Hessian, k = 20 at both ends, load ~8): 91-105 ms per HVP with one BLAS thread against
    318-648 ms with the default pool. ``None`` leaves the pool alone.
    """
    if threads is None:
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield
