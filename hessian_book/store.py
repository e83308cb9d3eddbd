"""A results store keyed by the run's parameters, with atomic, checksummed writes, so interrupted runs resume safely.

A run's results live in ``<root>/<experiment>/<key>/`` where ``key`` is a hash of the parameters that determine
them; ``params.json`` there records those parameters. A rerun with other parameters gets another directory, so
results never mix. Every file is written to a temporary name in the same directory and renamed into place
(``os.replace`` is atomic), so a killed run leaves at most a stray temporary file, which is ignored, and the next
run recomputes only what is missing.

Every item carries the SHA-256 of its payload in a one-line header. Reading verifies it: a truncated or corrupted
file (a full disk, a copy cut short, bit rot) raises :class:`CorruptResultError` naming the file, and
:meth:`ResultStore.cached` / :meth:`ResultStore.verified` move such a file aside (``<name>.pt.corrupt``), warn,
and recompute instead of reading it as data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["parameter_key", "ResultStore", "CorruptResultError", "read_verified"]

_MAGIC = b"hessian-book-result sha256="


class CorruptResultError(OSError):
    """A stored item failed its checksum or could not be parsed; ``path`` names the file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path


def _canonical(value: Any) -> Any:
    """JSON-able canonical form (tuples → lists, numpy scalars → Python, paths → str)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"parameter value {value!r} of type {type(value).__name__} is not JSON-able")


def parameter_key(params: Mapping[str, Any], length: int = 12) -> str:
    """A short stable hash of ``params`` (order of keys does not matter; ``1`` and ``1.0`` differ)."""
    text = json.dumps(_canonical(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def read_verified(path: str | os.PathLike) -> Any:
    """The object stored in ``path`` by :meth:`ResultStore.save`, after checking its checksum.

    Raises:
        CorruptResultError: the file is truncated, corrupted or not a result of a store.
    """
    path = Path(path)
    data = path.read_bytes()
    newline = data.find(b"\n")
    if not data.startswith(_MAGIC) or newline != len(_MAGIC) + 64:
        raise CorruptResultError(path, "no checksum header (truncated, or not written by ResultStore)")
    payload = data[newline + 1:]
    if hashlib.sha256(payload).hexdigest().encode() != data[len(_MAGIC):newline]:
        raise CorruptResultError(path, f"checksum mismatch ({len(payload)} payload bytes): truncated or corrupted")
    try:
        return torch.load(io.BytesIO(payload), weights_only=False)
    except Exception as error:  # a valid checksum over bytes torch cannot read: a bug, not bit rot
        raise CorruptResultError(path, f"unreadable payload: {error}") from error


class ResultStore:
    """Files of one run, under a directory named by its parameters.

    Args:
        root: the results root (e.g. ``results/``).
        experiment: a name for the experiment (a sub-directory of ``root``).
        params: everything that determines the results (and nothing that does not: a progress-bar switch or
            an output path must stay out, or reruns would not find their results).

    Example::

        store = ResultStore("results", "mnist", params)
        spectrum = store.cached(f"spectrum_{step:06d}", lambda: compute(step))
    """

    def __init__(self, root: str | os.PathLike, experiment: str, params: Mapping[str, Any]):
        if not experiment or "/" in experiment:
            raise ValueError(f"experiment={experiment!r} must be a non-empty name without '/'")
        self.params = _canonical(params)
        self.key = parameter_key(self.params)
        self.directory = Path(root) / experiment / self.key
        self.directory.mkdir(parents=True, exist_ok=True)
        record = self.directory / "params.json"
        if record.exists():
            stored = json.loads(record.read_text())
            if stored != self.params:  # a hash collision, or a hand-edited directory
                raise RuntimeError(f"{record} holds other parameters than this run's: {stored} != {self.params}")
        else:
            self._write_bytes("params.json", json.dumps(self.params, indent=2, sort_keys=True).encode())

    def path(self, name: str) -> Path:
        """Where item ``name`` lives (``.pt`` file)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"name={name!r} must be a plain file name")
        return self.directory / f"{name}.pt"

    def exists(self, name: str) -> bool:
        """Whether item ``name`` was completely written."""
        return self.path(name).is_file()

    def _write_bytes(self, filename: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{filename}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def save(self, name: str, obj: Any) -> None:
        """Write ``obj`` (tensors, arrays, dicts, dataclasses; anything ``torch.save`` takes) atomically, with
        the checksum of its bytes."""
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        payload = buffer.getvalue()
        header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
        self._write_bytes(self.path(name).name, header + payload)

    def load(self, name: str) -> Any:
        """Read item ``name``, verifying its checksum.

        Raises:
            FileNotFoundError: it was never completely written.
            CorruptResultError: the file is truncated, corrupted or not a result of this store.
        """
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no result {name!r} in {self.directory}")
        return read_verified(path)

    def quarantine(self, name: str, error: Exception | None = None) -> Path:
        """Move item ``name`` aside to ``<name>.pt.corrupt`` (so it is never read as data) and warn."""
        path = self.path(name)
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"{path} is corrupt ({error}); moved to {aside.name} and recomputing", RuntimeWarning,
                      stacklevel=3)
        return aside

    def verified(self, name: str) -> bool:
        """Whether item ``name`` exists and passes its checksum; a corrupt file is quarantined (False)."""
        if not self.exists(name):
            return False
        try:
            self.load(name)
        except CorruptResultError as error:
            self.quarantine(name, error)
            return False
        return True

    def cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """Load item ``name`` if present and intact, else ``compute()`` it, save it, and return it."""
        if self.exists(name):
            try:
                return self.load(name)
            except CorruptResultError as error:
                self.quarantine(name, error)
        value = compute()
        self.save(name, value)
        return value

    @classmethod
    def find(cls, root: str | os.PathLike, experiment: str, **fields: Any) -> list[ResultStore]:
        """The existing stores of ``experiment`` under ``root`` whose parameters include ``fields`` (equal values).

        Lets one chapter read another's run from the parameters that matter to it (say, the model and optimiser)
        without repeating every parameter of the other chapter (say, its checkpoint schedule). Sorted by key.
        """
        wanted = _canonical(fields)
        found = []
        for record in sorted((Path(root) / experiment).glob("*/params.json")):
            params = json.loads(record.read_text())
            if all(k in params and params[k] == v for k, v in wanted.items()):
                found.append(cls(root, experiment, params))
        return found

    def names(self) -> list[str]:
        """Items completely written so far, sorted."""
        return sorted(p.stem for p in self.directory.glob("*.pt"))
