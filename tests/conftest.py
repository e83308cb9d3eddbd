"""Test-session set-up."""

import os
from pathlib import Path

# Notebooks under nbval run with their own working directory: make a relative MNIST_DATA_DIR absolute first.
if os.environ.get("MNIST_DATA_DIR"):
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ["MNIST_DATA_DIR"]).resolve())
