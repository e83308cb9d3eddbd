"""hessian_book.numerics: the pinned numerical path takes effect in processes started with it (ATen's capability,
MKL's branch, oneDNN's ISA as the libraries report them), is refused or detected where it is not in force, and is
checked in the fan-out's worker processes."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from hessian_book import numerics
from hessian_book.fanout import _probe_task, _Timed, run_tasks

ALL_VARS = [*numerics.PINNED_ENV, numerics.UNPINNED_VAR, numerics.THREADS_VAR, numerics.MODE_VAR]


def _unpinned_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ALL_VARS}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hessian_book.numerics", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_pinned_env_sets_every_library_and_the_thread_count():
    env = numerics.pin_environment({"HESSIAN_THREADS": "3", "OTHER": "x"})
    assert env["OTHER"] == "x" and env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2"
    assert env["DNNL_MAX_CPU_ISA"] == env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert numerics.is_pinned_env(env) and not numerics.is_pinned_env({**env, "MKL_CBWR": "COMPATIBLE"})
    assert numerics.pinned_env({})["OMP_NUM_THREADS"] == str(numerics.DEFAULT_THREADS)
    with pytest.raises(ValueError, match="HESSIAN_THREADS"):
        numerics.pinned_env({"HESSIAN_THREADS": "zero"})


def test_portable_mode_pins_mkls_vendor_independent_branch():
    env = numerics.pin_environment({"HESSIAN_NUMERICS": "portable"})
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert numerics.is_pinned_env(env) and not numerics.is_pinned_env({**env, "MKL_CBWR": "AVX2"})
    with pytest.raises(ValueError, match="HESSIAN_NUMERICS"):
        numerics.pinned_env({"HESSIAN_NUMERICS": "fastest"})


def test_unpinned_request_leaves_the_environment_alone():
    env = {"HESSIAN_UNPINNED": "1", "MKL_CBWR": "AUTO"}
    assert numerics.pin_environment(env) == {"HESSIAN_UNPINNED": "1", "MKL_CBWR": "AUTO"}
    assert not numerics.is_pinned_env({**numerics.PINNED_ENV, "HESSIAN_UNPINNED": "1"})


def test_pinning_is_refused_once_torch_runs_on_another_path(monkeypatch):
    import torch  # noqa: F401 - imported: the libraries have read their variables

    monkeypatch.setenv("MKL_CBWR", "AUTO")
    monkeypatch.delenv("HESSIAN_UNPINNED", raising=False)
    with pytest.raises(numerics.NumericsError, match="already imported.*MKL_CBWR"):
        numerics.pin_environment()
    assert os.environ["MKL_CBWR"] == "AUTO"  # refused before changing anything


def test_a_process_started_pinned_runs_the_pinned_kernels():
    env = numerics.pin_environment(_unpinned_env())
    result = _run(env)
    assert result.returncode == 0, result.stderr
    path = json.loads(result.stdout)
    assert path["pinned"] and path["aten_capability"] == "AVX2"
    # MKL honours AVX2 on Intel CPUs and falls back to AUTO elsewhere (this project's AMD EPYC): both accepted
    assert path["mkl_cnr"] in ("AVX2", "AUTO") and path["mkl_dynamic"] is False
    assert path["onednn_isa"] in (None, "Intel AVX2")
    assert not [k for k in path["onednn_kernels"] if "avx512" in k]
    assert path["threads"]["torch"] == int(env["OMP_NUM_THREADS"]) == numerics.DEFAULT_THREADS
    assert _run(numerics.pin_environment(_unpinned_env()), "--check").returncode == 0


def test_check_fails_in_an_unpinned_process():
    result = _run(_unpinned_env(), "--check")
    assert result.returncode == 1
    assert "not on the pinned numerical path" in result.stderr and "HESSIAN_UNPINNED=1" in result.stderr
    unpinned = json.loads(_run({**_unpinned_env(), "HESSIAN_UNPINNED": "1"}).stdout)
    assert unpinned["pinned"] is False and unpinned["unpinned_requested"] is True
    assert unpinned["mkl_cnr"] == "OFF"  # MKL without a CNR branch: its own dispatch


def test_path_differences():
    result = _run(numerics.pin_environment(_unpinned_env()))
    pinned = json.loads(result.stdout)
    assert numerics.path_differences(pinned, pinned) == []
    other = json.loads(json.dumps(pinned))
    other["cpu"]["model"] = "Intel Xeon"  # the CPU model is not part of the path: that is what pinning is for
    assert numerics.path_differences(pinned, other) == []
    other["settings"]["MKL_CBWR"] = "COMPATIBLE"
    assert any("settings" in d for d in numerics.path_differences(pinned, other))
    assert numerics.path_differences(None, pinned) == ["the numerical path of the record is not recorded"]
    unpinned = dict(pinned, pinned=False)
    assert any("ran unpinned" in d for d in numerics.path_differences(pinned, unpinned))
    assert "pinned numerical path on" in numerics.describe_path(pinned)
    # numpy's and scipy's OpenBLAS share a prefix: listed in either order they are the same path; another version
    # of either is not
    blas = [dict(user_api="blas", internal_api="openblas", prefix="libscipy_openblas", version=v,
                 filepath=f"/lib/{i}.so") for i, v in enumerate(("0.3.30", "0.3.31"))]
    first, second = dict(pinned, threadpools=blas), dict(pinned, threadpools=blas[::-1])
    assert numerics.path_differences(first, second) == []
    newer = dict(pinned, threadpools=[blas[0], dict(blas[1], version="0.3.32")])
    assert any("openblas" in d for d in numerics.path_differences(first, newer))


def test_fanout_workers_run_the_pinned_path():
    assert numerics.is_pinned_env(), "the test session pins its environment (tests/conftest.py)"
    results = run_tasks(_probe_task, [{"x": x, "seed": 0} for x in range(3)], scheduler=None, max_workers=2)
    assert {r.numerics for r in results} == {"pinned AVX2"}
    assert len({r.pid for r in results}) >= 1 and all(r.pid != os.getpid() for r in results)


def test_a_worker_off_the_pinned_path_fails_with_a_clear_message(monkeypatch):
    # A Dask worker started without the pinned environment: the task from a pinned client refuses to run.
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(_Timed(_probe_task, expect_pinned=True), (), {"x": 1, "seed": 0})
        with pytest.raises(numerics.NumericsError, match="not on the pinned numerical path"):
            future.result(timeout=300)
        unchecked = pool.submit(_Timed(_probe_task, expect_pinned=False), (), {"x": 1, "seed": 0}).result(300)
    assert unchecked.numerics.startswith("unpinned")


def test_configure_inductor_pins_the_vector_width(monkeypatch):
    import torch._inductor.config as inductor_config

    before = inductor_config.cpp.simdlen
    try:
        assert numerics.configure_inductor() == numerics.PINNED_SIMDLEN == 256
        assert numerics.configure_inductor() == 256 and inductor_config.cpp.simdlen == 256  # idempotent
        inductor_config.cpp.simdlen = None
        monkeypatch.setenv("HESSIAN_UNPINNED", "1")
        assert numerics.configure_inductor() is None and inductor_config.cpp.simdlen is None
    finally:
        inductor_config.cpp.simdlen = before


_TRAIN = """
import hashlib, torch
from torch import nn
from hessian_book.data import modular_addition_split
from hessian_book.models import ModAddTransformer
inputs, labels = modular_addition_split(113, 0.3, 0)["train"]
model = ModAddTransformer(113, 32, 1, 128, 0)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.5, betas=(0.9, 0.98))
for _ in range(20):
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(inputs), labels).backward()
    opt.step()
flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
print(hashlib.sha256(flat.numpy().tobytes()).hexdigest())
"""


def test_training_on_the_pinned_path_is_bitwise_reproducible():
    """Two processes on the pinned path train the grokking transformer to bitwise equal parameters (with 2
    threads the embedding's gradient, an index_put_ with accumulate, was not reproducible: hence 1 thread)."""
    env = numerics.pin_environment(_unpinned_env())
    hashes = [subprocess.run([sys.executable, "-c", _TRAIN], env=env, capture_output=True, text=True, timeout=600,
                             check=True).stdout.strip() for _ in range(2)]
    assert len(hashes[0]) == 64 and hashes[0] == hashes[1]
