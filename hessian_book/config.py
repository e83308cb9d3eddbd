"""Chapter configurations: defaults, presets, and validation that names the bad parameter before any heavy work.

Every chapter module defines ``Config(ChapterConfig)``, a frozen dataclass whose fields are the chapter's
parameters and whose defaults are the chapter's defaults, plus ``PRESETS`` (e.g. ``"smoke"``: seconds, for CI).
A notebook builds it from its ``parameters`` cell::

    config = chapter.Config.from_parameters(globals())

A parameter the notebook (or papermill) sets to something other than the default wins over the preset; a
parameter left at its default takes the preset's value, if the preset names it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

__all__ = ["ChapterConfig", "ConfigError", "nested", "positive_int", "non_negative_int", "fraction",
           "positive_float", "choice", "prime", "is_prime", "int_list", "scheduler"]

C = TypeVar("C", bound="ChapterConfig")


class ConfigError(ValueError):
    """A chapter parameter is invalid; the message names it."""


def positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a non-negative integer")


def positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value!r} must be a positive finite number")


def fraction(name: str, value: Any, *, closed: bool = False) -> None:
    """``value`` in (0, 1), or in [0, 1] with ``closed``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (
        0 <= value <= 1 if closed else 0 < value < 1)
    if not ok:
        raise ConfigError(f"{name}={value!r} must be in {'[0, 1]' if closed else '(0, 1)'}")


def choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {list(choices)}")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def prime(name: str, value: Any) -> None:
    positive_int(name, value)
    if not is_prime(value):
        raise ConfigError(f"{name}={value!r} must be prime (the Fourier analysis of a + b mod p needs a field)")


def int_list(name: str, value: Any, *, minimum: int = 0, non_empty: bool = True) -> None:
    if (not isinstance(value, (list, tuple)) or (non_empty and not value)
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum for v in value)):
        raise ConfigError(f"{name}={value!r} must be a {'non-empty ' if non_empty else ''}list of integers "
                          f">= {minimum}")


_SCHEDULER = re.compile(r"^(tcp|tls)://[^:/\s]+:\d+$")


def scheduler(name: str, value: Any) -> None:
    """``None``/``""`` (local processes), ``"serial"`` (in process) or a Dask address ``tcp://host:port``."""
    if value in (None, "", "serial"):
        return
    if not isinstance(value, str) or not _SCHEDULER.match(value):
        raise ConfigError(f"{name}={value!r} must be empty (local processes), 'serial', or a Dask scheduler "
                          "address such as 'tcp://127.0.0.1:8786'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChapterConfig:
    """Base of the chapters' configurations.

    Attributes:
        preset: the preset the configuration was built with (``"full"`` = the chapter's defaults).
        results_dir: results root; ``""`` means a fresh temporary directory (resolved by :meth:`from_parameters`).
    """

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {"full": {}}

    preset: str = "full"
    results_dir: str = "../results"

    def __post_init__(self) -> None:
        choice("preset", self.preset, self.PRESETS)
        if not isinstance(self.results_dir, str):
            raise ConfigError(f"results_dir={self.results_dir!r} must be a path (str)")
        for f in dataclasses.fields(self):
            kind = _nested_config(f)
            if kind is not None and not isinstance(getattr(self, f.name), kind):
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r} must be a {kind.__module__}.Config (or, in "
                                  "from_parameters, a dict of its parameters)")
        self.validate()

    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` naming the first bad one. Chapters extend this."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The chapter's defaults, field by field."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    @classmethod
    def from_parameters(cls: type[C], parameters: Mapping[str, Any], **extra: Any) -> C:
        """Build from a notebook's parameters (e.g. ``globals()``: names that are not fields are ignored).

        ``parameters["preset"]`` selects the preset. A field given here with a value other than its default
        overrides the preset; the preset's values fill the rest. ``results_dir=""`` becomes a fresh temporary
        directory. Nested chapter configurations (fields holding another chapter's ``Config``) accept a dict of
        overrides and inherit the preset.
        """
        given = {name: parameters[name] for name in cls.field_names() if name in parameters}
        given.update(extra)
        preset = given.get("preset", "full")
        choice("preset", preset, cls.PRESETS)
        defaults = cls.defaults()
        values = dict(cls.PRESETS[preset])
        for name, value in given.items():
            if name not in values or _differs(value, defaults.get(name, dataclasses.MISSING)):
                values[name] = value
        values["preset"] = preset
        if values.get("results_dir", defaults.get("results_dir")) == "":
            # one fresh temporary directory, shared with the nested chapter configurations
            values["results_dir"] = tempfile.mkdtemp(prefix=f"{cls.__module__.rsplit('.', 1)[-1]}_")
        for f in dataclasses.fields(cls):
            kind = _nested_config(f)
            if kind is not None:
                nested = values.get(f.name, {})
                if not isinstance(nested, kind):
                    if not isinstance(nested, Mapping):
                        raise ConfigError(f"{f.name}={nested!r} must be a dict of {kind.__module__} parameters")
                    unknown = set(nested) - set(kind.field_names())
                    if unknown:
                        raise ConfigError(f"{f.name}: unknown parameters {sorted(unknown)} for {kind.__module__}")
                    nested = kind.from_parameters({"preset": preset if preset in kind.PRESETS else "full",
                                                   "results_dir": values.get("results_dir", defaults["results_dir"]),
                                                   **nested})
                values[f.name] = nested
        return cls(**values)


def nested(kind: type[ChapterConfig]) -> Any:
    """A field holding another chapter's configuration (its defaults unless overridden)::

        mnist: mnist_lenet.Config = nested(mnist_lenet.Config)
    """
    return dataclasses.field(default_factory=kind, metadata={"config": kind})


def _differs(value: Any, default: Any) -> bool:
    if default is dataclasses.MISSING:
        return True
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(default, tuple):
        default = list(default)
    return value != default


def _nested_config(f: dataclasses.Field) -> type[ChapterConfig] | None:
    kind = f.metadata.get("config")
    return kind if isinstance(kind, type) and issubclass(kind, ChapterConfig) else None
