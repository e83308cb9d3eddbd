"""A fixed, portable numerical path for every process that computes the book's numbers, and its provenance.

Training is chaotic: a different reduction order in one kernel changes the trained network, and everything
measured on it. Which kernels run is decided by the CPU unless pinned: ATen's vectorised kernels (AVX2 or
AVX-512), MKL's BLAS/LAPACK code branch, oneDNN's convolutions, OpenBLAS (numpy/scipy), the thread counts that
split reductions, and the vector width of ``torch.compile``'d kernels. :data:`PINNED_ENV` fixes all of them to
a path that every x86-64 CPU with AVX2 (AMD EPYC, Intel Xeon) runs:

==========================  ====================  ==========================================================
variable                    value                 what it fixes
==========================  ====================  ==========================================================
``ATEN_CPU_CAPABILITY``     ``avx2``              ATen's vectorised CPU kernels (else AVX-512 where present)
``MKL_CBWR``                ``AVX2`` (mode        MKL's conditional numerical reproducibility branch: its
                            ``avx2``) or          AVX2 branch on Intel CPUs; on other CPUs MKL falls back to
                            ``COMPATIBLE``        ``AUTO`` (fixed per machine, recorded). ``COMPATIBLE`` (mode
                            (``portable``)        ``portable``) is the only branch MKL documents as the same on
                                                  every x86 CPU, but it is an SSE2 path
``MKL_DYNAMIC``             ``FALSE``             MKL may not change its thread count per call
``DNNL_MAX_CPU_ISA``,       ``AVX2``              oneDNN's (MKL-DNN's) instruction set: convolutions
``ONEDNN_MAX_CPU_ISA``
``OPENBLAS_CORETYPE``       ``Haswell``           numpy's and scipy's OpenBLAS kernels (AVX2)
``OMP_NUM_THREADS``,        ``1`` (or             thread counts: with more than one, some CPU kernels
``MKL_NUM_THREADS``,        ``HESSIAN_THREADS``)  (an embedding's gradient) are not bitwise reproducible even
``OPENBLAS_NUM_THREADS``                          on one machine; chapters use the cores through worker
                                                  processes, and those that set their own counts keep doing so
==========================  ====================  ==========================================================

and :func:`configure_inductor` sets ``torch._inductor.config.cpp.simdlen`` to 256 bits (AVX2) before
``torch.compile``. These variables are read when the libraries initialise, i.e. when torch is imported and first
used: they must be in a process's environment *before* it imports torch. Hence the pinning happens where
processes are started: ``book/build.py`` pins its own environment first thing, and the notebook kernels it starts
(papermill), the worker processes they spawn (:mod:`hessian_book.fanout`) and the test session
(``tests/conftest.py``, whose nbval kernels inherit it) inherit it. A notebook cannot pin itself: its first
cell imports torch. Dask workers run elsewhere and must be started with the pinned environment::

    env $(python -m hessian_book.numerics --export) dask worker tcp://HOST:8786 --nworkers 2 --nthreads 1

(``python -m hessian_book.numerics`` prints the path of the running process.) A task submitted by a pinned
process checks, in its worker, that the path is in force and fails with a clear message otherwise.

Two modes (``HESSIAN_NUMERICS``): ``avx2`` (the default) and ``portable``. They differ only in MKL's branch,
and the choice is a measured trade-off. On this project's AMD EPYC (December 2026, one thread, interleaved runs)
``MKL_CBWR=COMPATIBLE`` made one full-batch AdamW step of the grokking transformer 1.7x slower (24.8 / 28.0 ms
against 14.4 / 18.2 ms with ``AVX2``) and a 1,500² float64 product 4x slower (529 / 590 ms against 134 / 148 ms);
ATen's and oneDNN's AVX2 pins and OpenBLAS's Haswell kernels cost nothing measurable. So the default pins every
library to AVX2 and leaves MKL's branch to MKL where the CPU is not Intel (the branch in force is probed and
recorded, and ``path_differences`` names it when two records differ in it); ``portable`` buys MKL's
vendor-independent branch at that price, for a cross-vendor bitwise check.

Run unpinned with ``HESSIAN_UNPINNED=1`` in the environment: nothing is changed, the CPU's own fastest path is
used, and the provenance says ``pinned: false``. The numbers then agree with a pinned record statistically, not
bitwise.

What stays outside the pin: the CPU's cache sizes (oneDNN's blocking heuristics read them; MKL's CNR mode fixes
its own), glibc's libm (``exp``/``log`` of scalar code; the same ifunc variant on every AVX2 + FMA CPU), and a
different torch/MKL/oneDNN/OpenBLAS build (the provenance records their versions).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import MutableMapping
from typing import Any

__all__ = [
    "PINNED_ENV",
    "MODE_VAR",
    "MODES",
    "numerics_mode",
    "PINNED_CAPABILITY",
    "PINNED_SIMDLEN",
    "UNPINNED_VAR",
    "NumericsError",
    "pinned_env",
    "pin_environment",
    "is_pinned_env",
    "unpinned_requested",
    "check_pinned",
    "configure_inductor",
    "numerical_path",
    "path_differences",
    "describe_path",
]

UNPINNED_VAR = "HESSIAN_UNPINNED"
THREADS_VAR = "HESSIAN_THREADS"
# One thread: bitwise equal reruns need it. With 2 threads (pinned or not) the gradient of an embedding lookup
# (``W_E[tokens]``: index_put_ with accumulate on CPU) differed between two runs from the same state, so 300 AdamW
# steps of the grokking transformer did; with 1 thread they were equal. The chapters' tasks already train on one
# thread each and use the cores through worker processes (hessian_book.fanout).
DEFAULT_THREADS = 1
PINNED_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports on the pinned path
PINNED_SIMDLEN = 256        # inductor's vector width in bits for AVX2
MODE_VAR = "HESSIAN_NUMERICS"
# mode -> MKL's CNR branch; and the branches MKL may report in force under it (it falls back to AUTO for AVX2 on
# non-Intel CPUs)
MODES = {"avx2": "AVX2", "portable": "COMPATIBLE"}
_MKL_ACCEPTED = {"avx2": ("AVX2", "AUTO"), "portable": ("COMPATIBLE",)}
DEFAULT_MODE = "avx2"
_ISA_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": MODES[DEFAULT_MODE],
    "MKL_DYNAMIC": "FALSE",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class NumericsError(RuntimeError):
    """The process is not on the numerical path it should be on (or cannot be put on it any more)."""


def _threads(env: MutableMapping[str, str] | dict[str, str]) -> int:
    value = env.get(THREADS_VAR, "") or str(DEFAULT_THREADS)
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_VAR} must be a positive integer, got {value!r}")
    return threads


def numerics_mode(env: MutableMapping[str, str] | dict[str, str] | None = None) -> str:
    """The pinned mode ``HESSIAN_NUMERICS`` asks for: ``"avx2"`` (default) or ``"portable"``."""
    env = os.environ if env is None else env
    value = (env.get(MODE_VAR, "") or DEFAULT_MODE).strip().lower()
    if value not in MODES:
        raise ValueError(f"{MODE_VAR}={value!r} must be one of {sorted(MODES)}")
    return value


def pinned_env(env: MutableMapping[str, str] | dict[str, str] | None = None) -> dict[str, str]:
    """The variables of the pinned path (MKL's branch from ``HESSIAN_NUMERICS``, thread count from
    ``HESSIAN_THREADS`` in ``env``, default 1)."""
    env = os.environ if env is None else env
    threads = str(_threads(env))
    return {**_ISA_ENV, "MKL_CBWR": MODES[numerics_mode(env)], **{name: threads for name in _THREAD_VARS}}


PINNED_ENV: dict[str, str] = {**_ISA_ENV, **{name: str(DEFAULT_THREADS) for name in _THREAD_VARS}}


def unpinned_requested(env: MutableMapping[str, str] | dict[str, str] | None = None) -> bool:
    """Whether ``HESSIAN_UNPINNED`` asks for the CPU's own path (``1``, ``true``, ``yes``)."""
    env = os.environ if env is None else env
    return env.get(UNPINNED_VAR, "").strip().lower() in ("1", "true", "yes")


def is_pinned_env(env: MutableMapping[str, str] | dict[str, str] | None = None) -> bool:
    """Whether ``env`` holds every variable of the pinned path (and does not ask to run unpinned)."""
    env = os.environ if env is None else env
    if unpinned_requested(env):
        return False
    try:
        wanted = pinned_env(env)
    except ValueError:
        return False
    return all(env.get(k) == v for k, v in wanted.items())


def pin_environment(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put the pinned path into ``env`` (default: this process's ``os.environ``) and return a copy of it, the
    environment to start child processes with. With ``HESSIAN_UNPINNED=1`` nothing changes.

    Pinning this process is refused (:class:`NumericsError`) once torch is imported with other settings: the
    libraries have read their variables already, so setting them now would record a path that is not in force.
    Calling it again when the path is already in force does nothing.
    """
    target = os.environ if env is None else env
    if unpinned_requested(target):
        return dict(target)
    wanted = pinned_env(target)
    if env is None and "torch" in sys.modules:
        wrong = {k: target.get(k) for k, v in wanted.items() if target.get(k) != v}
        if wrong:
            raise NumericsError(
                "cannot pin the numerical path: torch is already imported in this process with "
                f"{wrong} (pinned: { {k: wanted[k] for k in wrong} }); set the environment before torch is "
                "imported (book/build.py does; for a notebook kernel, start it from a pinned environment), or "
                f"set {UNPINNED_VAR}=1 to run unpinned")
    target.update(wanted)
    return dict(target)


# ---------------------------------------------------------------------------------------------------------------
# What is in force: probes of the running process


def _capture_fd1(function) -> str:
    """What ``function()`` writes to file descriptor 1 (the C libraries' verbose output goes there)."""
    import tempfile

    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(1)
        os.dup2(sink.fileno(), 1)
        try:
            function()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode(errors="replace")


def _probe_libraries() -> dict[str, Any]:
    """MKL's CNR branch and dynamic threading, and oneDNN's ISA, as the libraries report them while running one
    small float64 matrix product and one float32 convolution with their verbose output on."""
    import torch

    out: dict[str, Any] = {"mkl_cnr": None, "mkl_dynamic": None, "onednn_isa": None, "onednn_kernels": []}
    if torch.backends.mkl.is_available():
        def mkl():
            a = torch.ones(16, 16, dtype=torch.float64)
            with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
                a @ a
        for line in _capture_fd1(mkl).splitlines():
            for token in line.split():
                if token.startswith("CNR:"):
                    out["mkl_cnr"] = token[4:]
                elif token.startswith("Dyn:"):
                    out["mkl_dynamic"] = token[4:] == "1"
    if torch.backends.mkldnn.is_available():
        def onednn():
            x, w = torch.ones(4, 1, 28, 28), torch.ones(4, 1, 3, 3)
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.nn.functional.conv2d(x, w)
        kernels = set()
        for line in _capture_fd1(onednn).splitlines():
            fields = line.split(",")
            if len(fields) > 5 and fields[2:4] == ["info", "cpu"] and fields[4].startswith("isa:"):
                out["onednn_isa"] = fields[4][4:]
            elif len(fields) > 6 and fields[2] == "primitive" and fields[3] == "exec":
                kernels.add(fields[6])
        out["onednn_kernels"] = sorted(kernels)
    return out


def _cpu_info() -> dict[str, Any]:
    model = vendor = None
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key == "flags" and not flags:
                    flags = sorted(value.split())
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("sse", "ssse", "avx", "fma", "amx", "f16c"))]
    return {"model": model or platform.processor() or platform.machine(), "vendor": vendor,
            "cores": os.cpu_count(), "simd_flags": simd, "flags": flags}


def _threadpools() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture", "threading_layer")
    return [{k: pool.get(k) for k in keep if k in pool} for pool in threadpool_info()]


def numerical_path(*, probe: bool = True) -> dict[str, Any]:
    """The numerical path of this process (imports torch, numpy and scipy): whether it is pinned, the settings,
    the CPU (model, vendor, flags), ATen's capability, torch's build, MKL's branch and oneDNN's ISA as in force
    (``probe=True`` runs one tiny product and convolution with the libraries' verbose output on), the BLAS
    libraries loaded (threadpoolctl: torch's OpenMP, numpy's and scipy's OpenBLAS), thread counts and
    inductor's vector width. JSON-serialisable; stored in every record's provenance."""
    import numpy  # noqa: F401 - load its BLAS so threadpoolctl lists it
    import scipy.linalg  # noqa: F401
    import torch

    config = torch.__config__.show()
    mkl_version = next((line.strip().lstrip("- ") for line in config.splitlines() if "Math Kernel Library" in line),
                       None)
    onednn_version = next((line.strip().lstrip("- ") for line in config.splitlines() if "MKL-DNN" in line
                           or "oneDNN" in line), None)
    settings = {k: os.environ.get(k) for k in [*_ISA_ENV, *_THREAD_VARS, MODE_VAR]}
    path: dict[str, Any] = {
        "pinned": is_pinned_env(),
        "unpinned_requested": unpinned_requested(),
        "settings": settings,
        "cpu": _cpu_info(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": {"version": torch.__version__, "git": torch.version.git_version,
                  "debug": torch.version.debug, "blas": "mkl" if torch.backends.mkl.is_available() else "other",
                  "mkl": mkl_version, "onednn": onednn_version},
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()},
        "threadpools": _threadpools(),
        "inductor_simdlen": _inductor_simdlen(),
    }
    if probe:
        path.update(_probe_libraries())
    return json.loads(json.dumps(path, default=repr))


def _inductor_simdlen() -> int | None:
    if "torch._inductor.config" not in sys.modules:
        return None  # never configured, never compiled
    return sys.modules["torch._inductor.config"].cpp.simdlen


def check_pinned(*, probe: bool = True) -> dict[str, Any]:
    """Raise :class:`NumericsError` unless this process runs on the pinned path: its environment holds the pinned
    settings, ATen dispatches AVX2 kernels and (``probe=True``) MKL runs the mode's branch (``avx2``: AVX2, or AUTO
    where MKL falls back on a non-Intel CPU; ``portable``: COMPATIBLE) and oneDNN no
    AVX-512 kernels. Returns :func:`numerical_path` (without the full flag list)."""
    path = numerical_path(probe=probe)
    problems = []
    if path["unpinned_requested"]:
        problems.append(f"{UNPINNED_VAR}={os.environ.get(UNPINNED_VAR)} asks for the unpinned path")
    try:
        wanted = pinned_env()
    except ValueError as exc:
        problems.append(str(exc))
        wanted = PINNED_ENV
    wrong = {k: os.environ.get(k) for k, v in wanted.items() if os.environ.get(k) != v}
    if wrong:
        problems.append(f"environment {wrong} (pinned: { {k: wanted[k] for k in wrong} })")
    if path["aten_capability"] != PINNED_CAPABILITY:
        problems.append(f"ATen dispatches {path['aten_capability']} kernels, not {PINNED_CAPABILITY}")
    if probe:
        accepted = _MKL_ACCEPTED[numerics_mode()] if not wrong else (wanted["MKL_CBWR"],)
        if path.get("mkl_cnr") not in (None, *accepted):
            problems.append(f"MKL runs its {path['mkl_cnr']} branch, not {' or '.join(accepted)}")
        if path.get("onednn_isa") not in (None, "Intel AVX2") or any(
                "avx512" in k or "amx" in k for k in path.get("onednn_kernels", [])):
            problems.append(f"oneDNN runs {path.get('onednn_isa') or path.get('onednn_kernels')}")
    if problems:
        raise NumericsError(
            f"process {os.getpid()} on {path['cpu']['model']} is not on the pinned numerical path: "
            + "; ".join(problems) + ". Start it from a pinned environment (book/build.py pins the kernels it "
            "starts and their workers; Dask workers: env $(python -m hessian_book.numerics --export) dask worker "
            f"...), or run everything unpinned with {UNPINNED_VAR}=1.")
    path["cpu"].pop("flags", None)
    return path


def configure_inductor() -> int | None:
    """Before ``torch.compile``: on the pinned path, compiled CPU kernels use the pinned vector width
    (``torch._inductor.config.cpp.simdlen = 256``, AVX2) rather than the widest the CPU has. Idempotent; returns
    the width set (None when unpinned: inductor picks)."""
    if not is_pinned_env():
        return None
    import torch._inductor.config as inductor_config

    inductor_config.cpp.simdlen = PINNED_SIMDLEN
    return PINNED_SIMDLEN


# ---------------------------------------------------------------------------------------------------------------
# Comparing two paths (a record's and a rerun's)

# What decides the numbers once the path is pinned: the settings and the builds. The CPU model is not in it:
# that is what pinning is for (shown beside, since bitwise equality across CPU models is expected, not assumed).
def _key(path: dict[str, Any]) -> dict[str, Any]:
    # Every BLAS loaded, as a set: numpy's and scipy's wheels each bring an OpenBLAS with the same prefix
    # ("libscipy_openblas") and their own version, listed in an order that varies between processes.
    pools = {f"{p.get('prefix')} {p.get('version')}" for p in path.get("threadpools", [])
             if p.get("user_api") == "blas"}
    return {"pinned": path.get("pinned"), "settings": path.get("settings"),
            "aten_capability": path.get("aten_capability"), "mkl_cnr": path.get("mkl_cnr"),
            "onednn_isa": path.get("onednn_isa"), "torch": path.get("torch"),
            "openblas": sorted(pools)}


def path_differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """What differs between two :func:`numerical_path` records, in words; ``[]`` when the same pinned path (so
    the numbers should agree bitwise). An unknown or unpinned path never matches."""
    if not a or not b:
        return ["the numerical path of " + ("the record" if not a else "the rerun") + " is not recorded"]
    problems = []
    for side, path in (("the record", a), ("the rerun", b)):
        if not path.get("pinned"):
            problems.append(f"{side} ran unpinned ({path.get('aten_capability')}, MKL {path.get('mkl_cnr')})")
    ka, kb = _key(a), _key(b)
    for name in ka:
        if name != "pinned" and ka[name] != kb[name]:
            problems.append(f"{name}: {ka[name]} vs {kb[name]}")
    return problems


def describe_path(path: dict[str, Any] | None) -> str:
    """One sentence for a page: pinned or not, CPU, ATen capability, MKL branch, oneDNN ISA, threads."""
    if not path:
        return "numerical path not recorded (made before the path was pinned)"
    cpu = path.get("cpu", {})
    settings = path.get("settings") or {}
    return (f"{'pinned' if path.get('pinned') else 'unpinned'} numerical path on {cpu.get('model')} "
            f"({', '.join(f for f in cpu.get('simd_flags', []) if f in ('avx2', 'fma', 'avx512f')) or 'no AVX2'}): "
            f"ATen {path.get('aten_capability')}, "
            f"MKL branch {path.get('mkl_cnr') or settings.get('MKL_CBWR') or 'auto'}, "
            f"oneDNN {path.get('onednn_isa') or settings.get('DNNL_MAX_CPU_ISA') or 'auto'}, "
            f"OpenBLAS {settings.get('OPENBLAS_CORETYPE') or 'auto'}, "
            f"{_threads_text(settings.get('OMP_NUM_THREADS'))}, torch {path.get('torch', {}).get('version')}")


def _threads_text(value: str | None) -> str:
    return "default threads" if not value else f"{value} thread{'' if value == '1' else 's'}"


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The numerical path: print this process's, or the pinned "
                                     "environment to start workers with.")
    parser.add_argument("--export", action="store_true", help="print the pinned variables as NAME=value words "
                        "(for `env $(...) command`)")
    parser.add_argument("--check", action="store_true", help="exit 1 unless this process is on the pinned path")
    args = parser.parse_args(argv)
    if args.export:
        print(" ".join(f"{k}={v}" for k, v in pinned_env().items()))
        return
    if args.check:
        try:
            path = check_pinned()
        except NumericsError as exc:
            sys.exit(str(exc))
        print(describe_path(path))
        return
    path = numerical_path()
    path["cpu"].pop("flags", None)
    print(json.dumps(path, indent=1))


if __name__ == "__main__":
    _main()
