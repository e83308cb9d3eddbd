"""hessian_book.fanout: serial, local-process and Dask executors give the same results.

The task function is ``hessian_book.fanout._probe_task`` (or a builtin), not a
function of this module: spawned pool processes and Dask workers import task
functions by module name, and this test module is not reliably importable
there.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from hessian_book.fanout import (
    SerialExecutor,
    TaskError,
    TaskResult,
    _probe_task,
    executor,
    run_tasks,
    validate_scheduler,
)

TASKS = [{"x": x, "seed": seed} for seed in (0, 1) for x in (0, 3, 7)]


def _values(results: list[TaskResult]) -> list:
    return [r.value for r in results]


def _within(seconds: float, function, *args, **kwargs):
    """Call ``function`` in a thread; fail instead of hanging if it takes longer."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{function.__name__} did not return within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --------------------------------------------------------------------------------------
# Scheduler parameter


@pytest.mark.parametrize(
    "scheduler, expected",
    [
        (None, None),
        ("", None),
        ("serial", "serial"),
        ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
        ("tls://scheduler.example.org:8786", "tls://scheduler.example.org:8786"),
        ("tcp://[::1]:8786", "tcp://[::1]:8786"),
    ],
)
def test_validate_scheduler_accepts(scheduler, expected):
    assert validate_scheduler(scheduler) == expected


@pytest.mark.parametrize(
    "scheduler",
    [
        "localhost:8786",
        "tcp://host",
        "tcp://host:",
        "tcp://host:port",
        "tcp://host:99999",
        "tcp://host:8786/path",
        "http://host:8786",
        "inproc://host:8786",
        " tcp://host:8786",
        "Serial",
        42,
        1.5,
        ["tcp://host:8786"],
    ],
)
def test_validate_scheduler_rejects(scheduler):
    with pytest.raises(ValueError, match="scheduler"):
        validate_scheduler(scheduler)


def test_invalid_scheduler_fails_before_any_work():
    calls = []
    with pytest.raises(ValueError, match="scheduler"):
        run_tasks(calls.append, [(1,)], scheduler="localhost:8786")
    with pytest.raises(ValueError, match="scheduler"):
        with executor("tcp://host"):
            calls.append("entered")
    assert calls == []


# --------------------------------------------------------------------------------------
# Serial and local processes


def test_serial_executor_completes_futures_and_stores_exceptions():
    pool = SerialExecutor()
    assert pool.submit(pow, 2, 5).result(timeout=0) == 32
    failed = pool.submit(_probe_task, x=-1, seed=0)
    assert failed.done() and isinstance(failed.exception(timeout=0), ValueError)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(pow, 2, 5)


def test_serial_and_processes_give_identical_results():
    serial = run_tasks(_probe_task, TASKS, scheduler="serial")
    processes = _within(60, run_tasks, _probe_task, TASKS, max_workers=2)

    assert _values(processes) == _values(serial)
    # In task order, whatever order they finished in.
    assert [(v["x"], v["seed"]) for v in _values(serial)] == [(t["x"], t["seed"]) for t in TASKS]
    assert {r.pid for r in serial} == {os.getpid()}
    pool_pids = {r.pid for r in processes}
    assert os.getpid() not in pool_pids and 1 <= len(pool_pids) <= 2
    assert all(r.seconds >= 0 for r in serial + processes)


@pytest.mark.parametrize("scheduler", ["serial", None])
def test_positional_tasks_and_keywords_that_executors_also_use(scheduler):
    assert _values(run_tasks(pow, [(2, 10), (3, 2)], scheduler=scheduler, max_workers=1)) == [
        1024,
        9,
    ]
    # Task keywords named like executor options reach the function untouched.
    task = {"key": "k", "workers": 2, "priority": 3, "pure": True, "fn": None}
    assert _values(run_tasks(dict, [task], scheduler=scheduler)) == [task]


@pytest.mark.parametrize("scheduler", ["serial", None])
def test_failing_task_names_its_arguments(scheduler):
    tasks = [{"x": 1, "seed": 0}, {"x": -1, "seed": 3}]
    with pytest.raises(TaskError, match=r"_probe_task\(x=-1, seed=3\)") as caught:
        _within(60, run_tasks, _probe_task, tasks, scheduler=scheduler, max_workers=2)
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.index == 1 and caught.value.task == tasks[1]


def test_worker_death_breaks_the_pool_instead_of_hanging():
    # os._exit(1) ends the pool process at once, as a kill or the OOM killer would.
    with pytest.raises(TaskError, match="worker process died") as caught:
        _within(60, run_tasks, os._exit, [(1,)], max_workers=1)
    assert isinstance(caught.value.__cause__, BrokenProcessPool)


def test_unsendable_function_is_refused_before_starting_processes():
    with pytest.raises(TypeError, match="module-level"):
        run_tasks(lambda x: x, [(1,)])


def test_no_tasks_and_bad_tasks():
    assert run_tasks(_probe_task, [], scheduler="serial") == []
    with pytest.raises(TypeError, match="task 1"):
        run_tasks(_probe_task, [{"x": 1, "seed": 0}, [2, 0]], scheduler="serial")


def test_progress_bar_on_request(capsys):
    run_tasks(_probe_task, TASKS, scheduler="serial", desc="probe sweep", progress=True)
    assert "probe sweep" in capsys.readouterr().err
    run_tasks(_probe_task, TASKS, scheduler="serial", desc="quiet sweep", progress=False)
    assert "quiet sweep" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Dask distributed


@pytest.fixture(scope="module")
def distributed():
    return pytest.importorskip(
        "distributed", reason="Dask distributed is not installed: no cluster tests"
    )


def test_dask_local_cluster_gives_serial_results_on_its_workers(distributed, recwarn):
    serial = run_tasks(_probe_task, TASKS, scheduler="serial")
    start = time.perf_counter()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster, set_as_default=False) as client:
        worker_pids = set(client.run(os.getpid).values())
        assert len(worker_pids) == 2

        results = _within(60, run_tasks, _probe_task, TASKS, scheduler=cluster.scheduler_address)
        assert _values(results) == _values(serial)
        ran_in = {r.pid for r in results}
        assert ran_in <= worker_pids
        assert os.getpid() not in ran_in  # nothing silently ran in the client

        task = {"key": "k", "workers": 2, "priority": 3, "pure": True}
        assert _values(run_tasks(dict, [task], scheduler=cluster.scheduler_address)) == [task]

        with pytest.raises(TaskError, match=r"_probe_task\(x=-1, seed=3\)") as caught:
            _within(
                60,
                run_tasks,
                _probe_task,
                [{"x": 1, "seed": 0}, {"x": -1, "seed": 3}],
                scheduler=cluster.scheduler_address,
            )
        assert isinstance(caught.value.__cause__, ValueError)
    assert not [w for w in recwarn if "nthreads" in str(w.message)]
    assert time.perf_counter() - start < 60


def test_dask_workers_with_several_threads_are_warned_about(distributed):
    # Threads in the test process (processes=False) over TCP: quick to start.
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        dashboard_address=None,
    ) as cluster:
        with pytest.warns(UserWarning, match="--nthreads 1"):
            results = run_tasks(_probe_task, TASKS[:2], scheduler=cluster.scheduler_address)
    assert _values(results) == _values(run_tasks(_probe_task, TASKS[:2], scheduler="serial"))
