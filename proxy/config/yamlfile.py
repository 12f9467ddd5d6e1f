"""Reading a config file: YAML (safe, without aliases) -> `parse`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.config.model import Config, ConfigError
from proxy.config.parsing import parse

__all__ = ["load"]


# `${NAME}` standing alone as a value: `{key: ${NAME}}` is invalid YAML ({ opens a flow
# map), so such a value is quoted before parsing; a missing variable is then named.
_LONE_ENV = re.compile(r"([:\[{,]\s*)(\$\{[A-Za-z_][A-Za-z0-9_]*\})(?=\s*(?:[,}\]]|#|$))", re.M)


def _quote_lone_env(text: str) -> str:
    return _LONE_ENV.sub(r'\1"\2"', text)


class _AliasRefused(yaml.composer.ComposerError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: `*name` repeats a whole subtree, and a few nested ones
    (a "billion laughs" of 500 bytes) expand to gigabytes; a config has no need of them."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(
                None, None, f"aliases (*{event.anchor}) are not supported: write the value out",
                event.start_mark)
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def load(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; None means ./config.yaml if present, else defaults."""
    if path is None:
        default = Path("config.yaml")
        if not default.exists():
            return parse({}, env)
        path = default
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        raw = yaml.load(_quote_lone_env(text), Loader=_NoAliasLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        why = f": {exc.problem}" if isinstance(exc, _AliasRefused) else ""
        raise ConfigError(f"{path}:{where} invalid YAML{why}") from exc
    return parse(raw, env)
