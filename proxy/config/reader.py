"""Reading the YAML tree: typed access to one mapping at a time, every error a ConfigError
naming the YAML path of the bad key. It owns `${NAME}` expansion from the environment
(`expand_env`), the `Reader` of one section (unknown keys refused, values type-checked,
non-finite numbers refused), and the helpers every section's parser shares: a section's
keys and each field's default as its dataclass in `proxy.config.model` writes them, and
numeric fields checked to be positive (or not negative).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, get_args, get_type_hints

from proxy.config.model import ConfigError

__all__ = ["Reader", "expand_env", "field_default", "positive", "read_numbers", "section_keys"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"{path}: environment variable {m.group(1)} is not set")
            return env[m.group(1)]
        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value


class Reader:
    """Typed access to one mapping of the YAML tree; remembers its path for errors."""

    def __init__(self, data: Any, path: str, allowed: tuple[str, ...]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{_join(path, unknown[0])}: unknown key (allowed: {', '.join(allowed)})")
        self.data = data
        self.path = path

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.data or self.data[key] is None and default is None:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind in (int, float):
            raise ConfigError(f"{_join(self.path, key)}: expected {_kind(kind)}, got bool")
        if not isinstance(value, kind):
            raise ConfigError(
                f"{_join(self.path, key)}: expected {_kind(kind)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):  # .nan, .inf
            raise ConfigError(f"{_join(self.path, key)}: expected a finite number, got {value}")
        return value

    def child(self, key: str, allowed: tuple[str, ...]) -> Reader:
        return Reader(self.data.get(key), _join(self.path, key), allowed)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def positive(path: str, value: float) -> float:
    if not value > 0:  # NaN too
        raise ConfigError(f"{path}: must be greater than 0")
    return value


def _not_negative(path: str, value: float) -> float:
    if not value >= 0:
        raise ConfigError(f"{path}: must not be negative")
    return value


def section_keys(cls: type) -> tuple[str, ...]:
    """A section's YAML keys: its dataclass's fields, in order."""
    return tuple(f.name for f in fields(cls))


def field_default(cls: type, name: str) -> Any:
    """A field's default as its dataclass writes it (the one place it is written)."""
    (default,) = (f.default for f in fields(cls) if f.name == name)
    assert default is not MISSING, f"{cls.__name__}.{name} has no default"
    return default


def read_numbers(r: Reader, cls: type, names: tuple[str, ...],
                 not_negative: tuple[str, ...] = ()) -> dict[str, Any]:
    """The numeric fields `names` of `cls` read from `r`: of the field's type, defaulting to
    the field's default, greater than 0 (or not negative); None only where that is the
    default."""
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    for name in names:
        kind = next(k for k in (int, float) if k in (hints[name], *get_args(hints[name])))
        value = r.get(name, kind, field_default(cls, name))
        if value is not None:
            check = _not_negative if name in not_negative else positive
            value = check(_join(r.path, name), value)
        out[name] = value
    return out
