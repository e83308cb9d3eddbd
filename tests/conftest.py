"""Test-session set-up."""

import os
from pathlib import Path

from hessian_book.numerics import THREADS_VAR, pin_environment

# The smoke notebooks (tests/book/test_smoke.py) run with cwd notebooks/: make a relative MNIST_DATA_DIR absolute.
if os.environ.get("MNIST_DATA_DIR"):
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ["MNIST_DATA_DIR"]).resolve())

# The pinned numerical path (hessian_book.numerics), before anything imports torch: the tests and the notebook
# kernels the smoke tests start (they inherit this environment) compute on the path the golden copies were executed on.
# A caller's OMP_NUM_THREADS sets the pinned thread count (the suite is run with 1 thread on the shared machine);
# HESSIAN_UNPINNED=1 runs the suite unpinned.
if not os.environ.get(THREADS_VAR) and os.environ.get("OMP_NUM_THREADS", "").isdigit():
    os.environ[THREADS_VAR] = os.environ["OMP_NUM_THREADS"]
pin_environment()

# Training steps run eager unless a test asks for the compiled one (hessian_book.training.resolve_step_backend):
# compiling costs more than a test run's few hundred steps save, and the golden copies were executed eager.
os.environ.setdefault("HESSIAN_STEP_BACKEND", "eager")
