"""Run configs made of typed settings sections, filled from defaults, then a TOML file, then flags.

A task lists its sections as Groups (a theme, and the settings dataclasses in it). Every field's
name is its TOML key and, with '-' for '_', its CLI flag (`prior_loss_weight` /
`--prior-loss-weight`); a TOML file may write keys at the top level or inside a table named after
their group (`[prior]`, `[lora]`). Help, choices and range checks come from the fields (util/settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imprint.util.errors import ImprintError
from imprint.util.settings import fields_of, type_name


@dataclass
class Group:
    name: str                 # the TOML table and --help section
    title: str
    classes: list[type]       # settings dataclasses whose fields belong to the group

    def fields(self) -> dict[str, dataclasses.Field]:
        out = {}
        for cls in self.classes:
            out.update(fields_of(cls))
        return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def all_fields(groups: list[Group]) -> dict[str, dataclasses.Field]:
    out: dict[str, dataclasses.Field] = {}
    for group in groups:
        for name, f in group.fields().items():
            out.setdefault(name, f)  # a field two methods share (train_text_encoder) is one flag
    return out


def load_toml(path: str, groups: list[Group]) -> dict[str, Any]:
    """A TOML run file -> flat {key: value}; an unknown key or table is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise ImprintError(f"--config {path}: file not found; pass the path of a TOML run file")
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ImprintError(f"--config {path}: not valid TOML ({e}); fix the file") from e
    known, tables = all_fields(groups), {g.name: g for g in groups}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = key.replace("-", "_")
        if isinstance(value, dict):
            if key not in tables:
                raise ImprintError(f"--config {path}: unknown table [{key}]; tables are "
                                   f"{', '.join(f'[{t}]' for t in tables)}")
            inside = tables[key].fields()
            for inner, inner_value in value.items():
                inner = inner.replace("-", "_")
                if inner not in inside:
                    raise ImprintError(f"--config {path}: [{key}] has no key {inner!r}; "
                                       f"its keys are {', '.join(inside)}")
                flat[inner] = inner_value
        elif key in known:
            flat[key] = value
        else:
            raise ImprintError(f"--config {path}: unknown key {key!r}; see `imprint train --help` for the keys")
    return flat


def chosen_method(values: dict[str, Any], registry: dict[str, type], default: str, command: str,
                  key: str = "method") -> type:
    """The --method class (or another registry's, by `key`: --objective); a setting of another
    entry given with it is a one-line error."""
    name = values.get(key, default)
    if name not in registry:
        raise ImprintError(f"{flag(key)} {name}: unknown {key}; choose one of {', '.join(sorted(registry))}")
    own = {f.name for f in dataclasses.fields(registry[name].Settings)}
    for setting_name in sorted(values):
        owners = [m for m, cls in registry.items()
                  if setting_name in {f.name for f in dataclasses.fields(cls.Settings)}]
        if owners and setting_name not in own and values[setting_name] is not None:
            raise ImprintError(f"{flag(setting_name)}: a setting of {' / '.join(owners)}, not of {flag(key)} {name}; "
                               f"drop it or choose that {key} (`{command} --help`)")
    return registry[name]


def method_groups(registry: dict[str, type], first: str) -> list[Group]:
    """One group per method with settings, `first` leading: the flags several methods share are
    listed under it, and its title says which others they set."""
    first_fields = {f.name for f in dataclasses.fields(registry[first].Settings)}
    sharing = sorted(n for n, cls in registry.items() if n != first
                     and first_fields & {f.name for f in dataclasses.fields(cls.Settings)})
    titles = {first: f"method {first} (its flags also set {', '.join(sharing)})"} if sharing else {}
    return [Group(name, titles.get(name, f"method {name}"), [cls.Settings])
            for name, cls in sorted(registry.items(), key=lambda item: (item[0] != first, item[0]))
            if dataclasses.fields(cls.Settings)]


def check_resume_settings(before: dict[str, Any] | None, now: dict[str, Any], build, resumable: set[str],
                          config_path) -> None:
    """A resume must use the run's settings: `before` (its config.json) and `now` are normalised the
    same way by `build` (values -> a run config, whose to_dict() is compared): a key added since the
    run started has its default. Keys in `resumable` may change."""
    if before is None:
        return
    saved = {k: v for k, v in before.items() if k in now or k == "method"}
    try:
        normal = build(saved, {}, check_required=False).to_dict()
    except ImprintError as e:
        raise ImprintError(f"--resume: {config_path} does not load ({e}); use a new --output") from e
    changed = sorted(k for k in now if k not in resumable and normal.get(k) != now[k])
    if changed:
        raise ImprintError(f"--resume: this run was started with other settings ({', '.join(changed)}); "
                           f"use the same settings as {config_path} or a new --output")


def check_values(values: dict[str, Any], fields: dict[str, dataclasses.Field]) -> None:
    """Types, choices and ranges of the given values, from the fields' declarations."""
    for name, value in values.items():
        f = fields[name]
        kind = type_name(f)
        if value is None:
            continue
        if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ImprintError(f"{flag(name)}: expected a number, got {value!r}")
        if kind == "int" and not isinstance(value, int):
            raise ImprintError(f"{flag(name)}: expected an integer, got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ImprintError(f"{flag(name)}: expected true or false, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            raise ImprintError(f"{flag(name)}: expected a string, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ImprintError(f"{flag(name)} {value}: choose one of {', '.join(map(str, choices))}")
        if f.metadata.get("positive") and value <= 0:
            raise ImprintError(f"{flag(name)} must be > 0, got {value}")
        if f.metadata.get("non_negative") and value < 0:
            raise ImprintError(f"{flag(name)} must be >= 0 (0 turns it off), got {value}")


def instantiate(cls: type, values: dict[str, Any]):
    names = fields_of(cls)
    return cls(**{k: v for k, v in values.items() if k in names})


def default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("shown_default"):
        return f.metadata["shown_default"]
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(value) if value else "none"
    return str(value)


def add_flags(parser: argparse.ArgumentParser, groups: list[Group], special: dict[str, dict] | None = None) -> None:
    """One argparse group per Group; every flag's help ends with its default. Flags default to
    None so that a value given in a TOML file is not overridden by a flag left out."""
    seen = set()
    for group in groups:
        arguments = parser.add_argument_group(group.title)
        for name, f in group.fields().items():
            if name in seen:
                continue
            seen.add(name)
            kind = type_name(f)
            text = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices and kind != "bool":
                text += f" ({' | '.join(map(str, choices))})"
            help_text = f"{text} [default: {default_text(f)}]".replace("%", "%%")  # argparse formats help with %
            kwargs = {"dest": name, "default": None, "help": help_text}
            kwargs.update((special or {}).get(name, {}))
            if kind == "bool":
                arguments.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kwargs)
            elif kind == "list":
                arguments.add_argument(flag(name), action="append", **kwargs)
            elif "nargs" in kwargs:
                arguments.add_argument(flag(name), **kwargs)
            else:
                caster = {"int": int, "float": float}.get(kind, str)
                arguments.add_argument(flag(name), type=caster, **kwargs)
