"""Fan independent tasks (training runs over seeds, depths, widths) out to an executor.

A chapter's runs are independent: each is a call ``function(**task)`` of a
module-level function, and each task writes its own results into the shared,
parameter-keyed results store (atomic writes; see the store module).  This
module only runs the callables and collects their return values, through a
:class:`concurrent.futures.Executor` chosen by the chapter's ``scheduler``
parameter:

``None`` or ``""``
    local worker processes (:class:`~concurrent.futures.ProcessPoolExecutor`,
    ``spawn`` start method);
``"serial"``
    every task runs at once in the calling process (tests, debugging, pdb);
``"tcp://host:port"`` or ``"tls://host:port"``
    the workers of a running Dask distributed cluster whose scheduler listens
    at that address (``distributed`` is imported only then).

Start a cluster in the project's environment, from the repository root.
The scheduler as well as the workers must import ``hessian_book`` (the
scheduler unpickles the submitted tasks), hence ``PYTHONPATH``::

    PYTHONPATH=$PWD dask scheduler --port 8786
    env $(python -m hessian_book.numerics --export) PYTHONPATH=$PWD \
        dask worker tcp://SCHEDULER_HOST:8786 --nworkers 2 --nthreads 1

Workers compute, so they must run on the pinned numerical path
(:mod:`hessian_book.numerics`; the ``env $(...)`` prefix): a task submitted by a
pinned process checks in its worker, before it runs, that the path is in force
(once per worker process) and fails with a message saying how to start the
worker otherwise.  Spawned local workers inherit the pinned environment.  Each
:class:`TaskResult` says which path its worker ran (``numerics``).

Use one thread per worker process (``--nthreads 1``): tasks that share a
process share torch's global random generator and thread settings.

Task functions must be defined in an importable module (such as
``hessian_book.training``), not in a notebook: process-pool workers import
them by name.  A task must set its own seeds and state when it starts, since
a worker process runs several tasks one after another.

Example::

    from hessian_book.fanout import run_tasks
    results = run_tasks(train_one, [{"seed": s, "depth": d} for s in seeds for d in depths],
                        scheduler=scheduler, desc="depth sweep")
    values = [r.value for r in results]  # in task order
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import reprlib
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tqdm.std import tqdm

__all__ = [
    "SerialExecutor",
    "TaskError",
    "TaskResult",
    "executor",
    "run_tasks",
    "validate_scheduler",
]

_ADDRESS_SCHEMES = ("tcp", "tls")
_SCHEDULER_HELP = (
    "scheduler must be None or '' (local processes), 'serial' (in this process) "
    "or a Dask scheduler address 'tcp://host:port' / 'tls://host:port'"
)


# --------------------------------------------------------------------------------------
# Scheduler parameter


def validate_scheduler(scheduler: object) -> str | None:
    """Check the syntax of a chapter's ``scheduler`` parameter; return its canonical form.

    Accepted: ``None`` or ``""`` (local processes; returned as ``None``),
    ``"serial"``, and ``"tcp://host:port"`` or ``"tls://host:port"`` with an
    integer port (returned unchanged).  Only the syntax is checked: nothing is
    contacted.  Raises :class:`ValueError` naming ``scheduler`` otherwise.
    """
    if scheduler is None or scheduler == "":
        return None
    if not isinstance(scheduler, str):
        raise ValueError(f"{_SCHEDULER_HELP}; got {scheduler!r} ({type(scheduler).__name__})")
    if scheduler == "serial":
        return scheduler
    problem = _address_problem(scheduler)
    if problem:
        raise ValueError(f"{_SCHEDULER_HELP}; got {scheduler!r}: {problem}")
    return scheduler


def _address_problem(address: str) -> str | None:
    """Why ``address`` is not ``scheme://host:port`` (None when it is)."""
    if address != address.strip() or any(c.isspace() for c in address):
        return "whitespace in the address"
    if "://" not in address:
        return "no scheme (write tcp://host:port)"
    parts = urlsplit(address)
    if parts.scheme not in _ADDRESS_SCHEMES:
        return f"scheme {parts.scheme!r} is not one of {', '.join(_ADDRESS_SCHEMES)}"
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return "only scheme://host:port is allowed (no path, query or user)"
    if not parts.hostname:
        return "no host"
    try:
        port = parts.port
    except ValueError:
        return "the port is not an integer in 1..65535"
    if port is None or not 1 <= port <= 65535:
        return "no port (write tcp://host:port, e.g. tcp://127.0.0.1:8786)"
    return None


def _scheduler_kind(scheduler: object) -> str:
    """``"processes"``, ``"serial"`` or ``"dask"`` for a valid ``scheduler``."""
    scheduler = validate_scheduler(scheduler)
    if scheduler is None:
        return "processes"
    return "serial" if scheduler == "serial" else "dask"


def _check_max_workers(max_workers: object) -> None:
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise ValueError(f"max_workers must be None or a positive int, got {max_workers!r}")


def _available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------
# Executors


class SerialExecutor(concurrent.futures.Executor):
    """An executor that runs each task immediately, in the calling process.

    :meth:`submit` returns an already completed future; an exception raised by
    the task is stored in the future (as with the other executors), except
    ``KeyboardInterrupt`` and ``SystemExit``, which propagate so that an
    interrupt stops the loop.
    """

    def __init__(self) -> None:
        self._shutdown = False
        self._lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        """Run ``fn(*args, **kwargs)`` now; return its completed future."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse further tasks (nothing runs in the background)."""
        with self._lock:
            self._shutdown = True


@contextlib.contextmanager
def executor(
    scheduler: str | None = None, *, max_workers: int | None = None
) -> Iterator[concurrent.futures.Executor]:
    """Context manager yielding the :class:`concurrent.futures.Executor` for ``scheduler``.

    ``None`` / ``""``: a process pool of ``max_workers`` processes (default: the
    CPUs available to this process), started with ``spawn``.  ``"serial"``: a
    :class:`SerialExecutor`.  ``"tcp://host:port"`` / ``"tls://host:port"``: a
    Dask ``distributed.Client`` connected to that scheduler and its
    ``get_executor()``; the client is closed on exit.  ``max_workers`` is
    ignored for ``"serial"`` and Dask (the cluster's workers set the
    concurrency).  An invalid ``scheduler`` raises :class:`ValueError` before
    anything starts.

    On exit with an exception (a failed task, an interrupt) the tasks not yet
    started are cancelled and the exit does not wait for running ones; those
    still finish in their worker processes, writing their results.
    """
    kind = _scheduler_kind(scheduler)
    _check_max_workers(max_workers)
    if kind == "serial":
        serial = SerialExecutor()
        try:
            yield serial
        finally:
            serial.shutdown()
    elif kind == "processes":
        # "spawn", not "fork": a forked child inherits a copy of the parent's
        # memory but only the forking thread, so locks held by torch's (OpenMP,
        # MKL) thread pools or by the notebook kernel's threads stay locked
        # forever in the child, which can deadlock it; torch documents fork
        # after its threads started as unsupported.  "forkserver" would be safe
        # too, but "spawn" exists on every platform and is what Dask's nannies
        # use to start workers (distributed.worker.multiprocessing-method), so
        # a task sees the same fresh interpreter whichever executor runs it.
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=max_workers or _available_cpus(),
            mp_context=multiprocessing.get_context("spawn"),
        )
        failed = True
        try:
            yield pool
            failed = False
        finally:
            pool.shutdown(wait=not failed, cancel_futures=failed)
    else:
        client = _dask_client(scheduler)
        try:
            _warn_about_workers(client, scheduler)
            # pure=False: every submitted task runs, even two with equal
            # arguments, and nothing is served from results the cluster holds
            # from other clients -- tasks have side effects (the results store).
            dask_executor = client.get_executor(pure=False)
            failed = True
            try:
                yield dask_executor
                failed = False
            finally:
                dask_executor.shutdown(wait=not failed)
        finally:
            client.close()


def _dask_client(address: str):
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"scheduler={address!r} needs Dask distributed, which is not installed in "
            f"this environment ({sys.executable}); install it (pip install distributed) "
            "or use scheduler=None for local processes"
        ) from exc
    # set_as_default=False: leave the notebook's dask.compute() calls alone.
    return distributed.Client(address, set_as_default=False)


def _warn_about_workers(client, address: str) -> None:
    nthreads = client.nthreads()
    if not nthreads:
        warnings.warn(
            f"no Dask worker is connected to {address} yet: tasks wait until one joins",
            stacklevel=4,
        )
    elif any(n > 1 for n in nthreads.values()):
        warnings.warn(
            f"Dask workers at {address} run several threads per process "
            f"({sorted(set(nthreads.values()))}); tasks sharing a process share torch's "
            "global random generator and thread settings, so a result can depend on "
            "which tasks ran beside it; start workers with --nthreads 1",
            stacklevel=4,
        )


# --------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class TaskResult:
    """One task's return ``value``, the ``worker`` (``"hostname:pid"``) that ran it,
    ``seconds`` of wall time inside the task, and ``numerics``: the worker's numerical
    path (``"pinned AVX2"``, checked before the task ran when the submitting process is
    pinned; ``"unpinned AVX512"``; ``"unpinned"`` when the task did not load torch)."""

    value: Any
    worker: str
    seconds: float
    numerics: str = ""

    @property
    def host(self) -> str:
        """The host name part of :attr:`worker`."""
        return self.worker.rsplit(":", 1)[0]

    @property
    def pid(self) -> int:
        """The process id part of :attr:`worker`."""
        return int(self.worker.rsplit(":", 1)[1])


class TaskError(RuntimeError):
    """A task failed (or its worker died); the original exception is ``__cause__``.

    ``index`` is the task's position in the task list and ``task`` the task
    itself (a mapping of keyword arguments or a tuple of positional ones).
    """

    def __init__(self, message: str, *, index: int, task: Mapping[str, Any] | tuple) -> None:
        super().__init__(message)
        self.index = index
        self.task = task


@dataclass(frozen=True)
class _Timed:
    """Picklable wrapper run in the worker: calls the task, records the process and wall time.

    A module-level class, so process pools (pickle) and Dask (cloudpickle) both
    send it by reference.  It takes the task's arguments as two positional
    parameters rather than ``**kwargs``: Dask's ``submit`` would swallow task
    keywords that are also its own options (``key``, ``workers``, ``priority``,
    ``retries``, ``resources``, ``pure``).
    """

    function: Callable[..., Any]
    # The submitting process is on the pinned numerical path (hessian_book.numerics): so
    # must the worker be, or its numbers would not be the record's.
    expect_pinned: bool = False

    def __call__(self, args: tuple, kwargs: dict[str, Any]) -> TaskResult:
        worker = f"{socket.gethostname()}:{os.getpid()}"
        if self.expect_pinned:
            _check_worker_pinned()
        start = time.perf_counter()
        try:
            value = self.function(*args, **kwargs)
        except Exception as exc:
            if hasattr(exc, "add_note"):  # Python >= 3.11; notes survive pickling
                exc.add_note(f"(task ran in process {worker})")
            raise
        return TaskResult(value=value, worker=worker, seconds=time.perf_counter() - start,
                          numerics=_worker_numerics())


_PINNED_CHECKED: set[int] = set()  # process ids whose pinned path was checked (once per process)


def _check_worker_pinned() -> None:
    """Raise NumericsError unless this worker process runs the pinned numerical path."""
    if os.getpid() in _PINNED_CHECKED:
        return
    from hessian_book.numerics import check_pinned

    check_pinned()
    _PINNED_CHECKED.add(os.getpid())


def _worker_numerics() -> str:
    from hessian_book.numerics import is_pinned_env

    state = "pinned" if is_pinned_env() else "unpinned"
    torch = sys.modules.get("torch")
    if torch is None:
        return state
    return f"{state} {torch.backends.cpu.get_cpu_capability()}"


def _split(index: int, task: object) -> tuple[tuple, dict[str, Any]]:
    """A task as (positional, keyword) arguments."""
    if isinstance(task, Mapping):
        if not all(isinstance(key, str) for key in task):
            raise TypeError(f"task {index}: keyword names must be str, got {task!r}")
        return (), dict(task)
    if isinstance(task, tuple):
        return task, {}
    raise TypeError(
        f"task {index} must be a mapping of keyword arguments or a tuple of positional "
        f"ones, got {type(task).__name__}: {task!r}"
    )


_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


def _name(function: Callable[..., Any]) -> str:
    """``module.qualname`` of a function (its repr for other callables)."""
    qualname = getattr(function, "__qualname__", None)
    if not qualname:
        return repr(function)
    module = getattr(function, "__module__", None)
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


def _describe(function: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> str:
    """``name(arg, key=value)`` with long values shortened."""
    name = _name(function)
    arguments = [_repr.repr(a) for a in args] + [f"{k}={_repr.repr(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(arguments)})"


def _check_picklable(wrapped: _Timed, function: Callable[..., Any]) -> None:
    """Fail early, with advice, when process-pool workers could not import ``function``."""
    main = sys.modules.get("__main__")
    if getattr(function, "__module__", None) == "__main__" and not getattr(main, "__file__", None):
        raise TypeError(
            f"{_name(function)} is defined in an interactive session "
            "(notebook), which worker processes cannot import; define task functions in a "
            "module such as hessian_book.training"
        )
    try:
        pickle.dumps(wrapped)
    except Exception as exc:
        raise TypeError(
            f"cannot send {function!r} to worker processes ({exc}); task functions must be "
            "module-level functions of an importable module (not lambdas or nested functions)"
        ) from exc


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[Mapping[str, Any]] | Sequence[tuple],
    *,
    scheduler: str | None = None,
    max_workers: int | None = None,
    desc: str = "tasks",
    progress: bool | None = None,
) -> list[TaskResult]:
    """Run ``function(**task)`` (mapping tasks) or ``function(*task)`` (tuple tasks) for
    every task through :func:`executor` ``(scheduler)``; return a :class:`TaskResult` per
    task, in task order.

    All tasks are submitted at once (a process pool gets ``min(max_workers,
    len(tasks))`` processes).  A tqdm bar named ``desc`` counts finished tasks;
    ``progress=None`` shows it only when stderr is a terminal (not, e.g., in a
    notebook executed by papermill).

    The first task to fail raises :class:`TaskError` naming the task and its
    arguments, chained from the task's exception; the tasks not yet started
    are cancelled.  A worker process that dies (killed, out of memory,
    ``os._exit``, a crash in native code) breaks a process pool: that also
    raises :class:`TaskError`, chained from
    :class:`~concurrent.futures.process.BrokenProcessPool`.  On a Dask cluster
    the task is retried on other workers, then fails with ``KilledWorker``.
    """
    kind = _scheduler_kind(scheduler)
    _check_max_workers(max_workers)
    if not callable(function):
        raise TypeError(f"function must be callable, got {function!r}")
    if isinstance(tasks, (str, bytes)):
        raise TypeError("tasks must be a sequence of mappings or tuples, not a string")
    tasks = list(tasks)
    calls = [_split(i, task) for i, task in enumerate(tasks)]
    if not calls:
        return []
    from hessian_book.numerics import is_pinned_env

    wrapped = _Timed(function, expect_pinned=is_pinned_env())
    if kind == "processes":
        _check_picklable(wrapped, function)
        max_workers = min(max_workers or _available_cpus(), len(calls))
    submit_options: dict[str, Any] = {}
    if progress is None:
        progress = _stderr_is_terminal()

    results: list[TaskResult | None] = [None] * len(calls)
    with executor(scheduler, max_workers=max_workers) as pool:
        futures = {}
        for index, (args, kwargs) in enumerate(calls):
            if kind == "dask":
                # Name the Dask task after the function (dashboard, logs), not "_Timed".
                name = getattr(function, "__name__", None) or "task"
                submit_options = {"key": f"{name}-{index}-{uuid.uuid4().hex}"}
            futures[pool.submit(wrapped, args, kwargs, **submit_options)] = index
        with tqdm(total=len(calls), desc=desc, unit="task", disable=not progress) as bar:
            try:
                for future in concurrent.futures.as_completed(futures):
                    index = futures[future]
                    exc = future.exception()
                    if exc is not None:
                        raise _task_error(function, tasks, calls, index, exc, results) from exc
                    results[index] = future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return results  # type: ignore[return-value]


def _task_error(function, tasks, calls, index, exc, results) -> TaskError:
    args, kwargs = calls[index]
    call = _describe(function, args, kwargs)
    if isinstance(exc, BrokenProcessPool):
        done = sum(r is not None for r in results)
        message = (
            f"a worker process died abruptly (killed, out of memory, os._exit or a crash in "
            f"native code) while running {call} or another task; the process pool is broken: "
            f"{done} of {len(calls)} tasks had finished, the others were lost"
        )
    else:
        message = f"task {index} failed: {call}: {type(exc).__name__}: {exc}"
    return TaskError(message, index=index, task=tasks[index])


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


# --------------------------------------------------------------------------------------
# Test probe


def _probe_task(x: int, seed: int) -> dict[str, Any]:
    """A deterministic toy task, used by the tests and to smoke-test a cluster.

    It lives here rather than in the test module because worker processes
    (spawned pool processes, Dask workers started elsewhere) import task
    functions by module name, and ``hessian_book.fanout`` is importable
    wherever the tasks run while a test module generally is not.  Returns a
    value computed from ``(x, seed)`` only; raises :class:`ValueError` for a
    negative ``x`` (the tests' failing task).
    """
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    import random

    rng = random.Random(seed * 1_000_003 + x)
    return {"x": x, "seed": seed, "value": sum(rng.random() for _ in range(100 + x))}
