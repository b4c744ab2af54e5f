"""Settings dataclasses whose fields carry their own help, choices and theme, so the CLI flags,
the TOML keys and `imprint methods` are generated from one declaration."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def setting(default: Any = None, help: str = "", choices: tuple | None = None, factory=None,
            positive: bool = False, non_negative: bool = False, shown_default: str | None = None) -> Any:
    """A settings field: its default, one line of help, allowed values, simple range checks;
    `shown_default` is what --help says where the default is computed (e.g. per method)."""
    meta = {"help": help, "choices": choices, "positive": positive, "non_negative": non_negative,
            "shown_default": shown_default}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def fields_of(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def type_name(f: dataclasses.Field) -> str:
    """'int', 'float', 'bool', 'str' or 'list' (for `list[str]`), from the annotation string."""
    text = str(f.type).replace(" ", "")
    for name in ("bool", "int", "float", "list"):
        if text == name or text.startswith(name + "|") or text.startswith(name + "["):
            return name
    return "str"
