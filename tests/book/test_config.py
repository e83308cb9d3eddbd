"""Chapter configurations: presets, explicit overrides, nested chapter configs, and errors that name the parameter."""

from dataclasses import dataclass
from typing import ClassVar

import pytest

from hessian_book import config as checks
from hessian_book.config import ChapterConfig, ConfigError, nested


@dataclass(frozen=True, kw_only=True)
class Inner(ChapterConfig):
    PRESETS: ClassVar = {"full": {}, "smoke": {"n": 2}}
    n: int = 10
    lr: float = 0.1

    def validate(self):
        checks.positive_int("n", self.n)
        checks.positive_float("lr", self.lr)


@dataclass(frozen=True, kw_only=True)
class Outer(ChapterConfig):
    PRESETS: ClassVar = {"full": {}, "smoke": {"depth": 1, "results_dir": ""}}
    depth: int = 4
    inner: Inner = nested(Inner)

    def validate(self):
        checks.positive_int("depth", self.depth)


def test_preset_fills_defaults_and_explicit_values_win():
    assert Inner.from_parameters({"preset": "smoke"}).n == 2
    assert Inner.from_parameters({"preset": "smoke", "n": 7}).n == 7  # papermill -p n 7 beats the preset
    assert Inner.from_parameters({"preset": "full", "unrelated": object()}).n == 10  # notebook globals ignored


def test_nested_config_takes_overrides_and_inherits_preset_and_results_dir():
    outer = Outer.from_parameters({"preset": "smoke", "inner": {"lr": 0.5}})
    assert outer.depth == 1 and outer.inner.n == 2 and outer.inner.lr == 0.5 and outer.inner.preset == "smoke"
    assert outer.results_dir and outer.inner.results_dir == outer.results_dir  # one temporary directory
    assert Outer.from_parameters({}).inner == Inner()


@pytest.mark.parametrize("parameters, name", [
    ({"n": 0}, "n="), ({"lr": -1.0}, "lr="), ({"n": 2.5}, "n="), ({"preset": "fast"}, "preset="),
    ({"results_dir": 3}, "results_dir="),
])
def test_bad_parameters_are_named(parameters, name):
    with pytest.raises(ConfigError, match=name):
        Inner.from_parameters(parameters)


def test_nested_errors_name_the_field():
    with pytest.raises(ConfigError, match="inner: unknown parameters"):
        Outer.from_parameters({"inner": {"m": 1}})
    with pytest.raises(ConfigError, match="lr="):
        Outer.from_parameters({"inner": {"lr": 0.0}})


def test_validators():
    checks.prime("p", 113)
    for bad in (100, 1, 2.0):
        with pytest.raises(ConfigError, match="p="):
            checks.prime("p", bad)
    for ok in (None, "", "serial", "tcp://127.0.0.1:8786"):
        checks.scheduler("scheduler", ok)
    for bad in ("localhost:8786", "tcp://host", 42):
        with pytest.raises(ConfigError, match="scheduler="):
            checks.scheduler("scheduler", bad)
    with pytest.raises(ConfigError, match="seeds="):
        checks.int_list("seeds", [0, -1])


def test_a_nested_field_must_hold_its_chapters_config():
    """ChapterConfig checks every nested() field itself, so no chapter repeats the check."""
    from hessian_book.chapters import fiedler_lenet, mechanistic_modadd

    with pytest.raises(ConfigError, match=r"^mnist=\{\} must be a hessian_book\.chapters\.mnist_lenet\.Config"):
        fiedler_lenet.Config(mnist={})
    with pytest.raises(ConfigError, match=r"^depth="):
        mechanistic_modadd.Config(depth=fiedler_lenet.Config())
