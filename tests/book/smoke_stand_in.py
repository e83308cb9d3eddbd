"""A stand-in for book/build.py's smoke task, importable by the worker processes that
tests/book/test_smoke.py's scheduler test starts: it logs when each chapter ran and fails where told."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def task(name: str, out_path: str, results_dir: str) -> tuple[float | None, str]:
    start = time.time()
    time.sleep(float(os.environ.get("SMOKE_STAND_IN_SECONDS", "0.5")))
    if name in os.environ.get("SMOKE_STAND_IN_FAIL", "").split(","):
        return None, f"{name} failed on purpose"
    Path(out_path).write_text(name)
    with open(Path(results_dir) / "log.jsonl", "a") as log:
        log.write(json.dumps({"name": name, "start": start, "end": time.time(), "pid": os.getpid()}) + "\n")
    return time.time() - start, ""
