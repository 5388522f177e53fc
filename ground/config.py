"""Configuration: a TOML file (standard library ``tomllib``) plus flags.

Each stage declares its own section as a frozen dataclass (the coalescer's
``Policy``, the updater's settings, ...).  Every field is a config key; a field
declared with ``cli=True`` is also a command-line option of ``run`` (and of
any command that asks for the section), so the file and the flags can never
drift apart.  The stage says *whether* a key is a flag; the command line that
adds the section says how it is spelled (``--KEY``, or ``--PREFIX-KEY`` for a
section added with a prefix, as ``run`` does for ``[kexec]`` and
``[metrics]``).  Field metadata:

- ``cli``: the key is also a flag;
- ``help``: one line for ``--help`` and the docs;
- ``choices``: allowed values of a ``str`` field.

Unknown sections and keys, wrong types and values outside ``choices`` are
:class:`ConfigError`\\ s that name the file and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

from .errors import ConfigError

T = TypeVar("T")


def option(default: Any, *, cli: bool = False, help: str = "", choices: Iterable[str] | None = None) -> Any:
    """A dataclass field that is a config key (and a command-line flag with ``cli=True``)."""
    meta: dict[str, Any] = {"help": help}
    if cli:
        meta["cli"] = True
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use immutable defaults (tuples) in config sections")
    return dataclasses.field(default=default, metadata=meta)


def _field_types(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Check a TOML value against a field's annotation (str, int, float, bool,
    ``X | None``, ``tuple[str, ...]``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(where, value, args[0])
        raise ConfigError(where, f"unsupported type {annotation}")
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return tuple(_coerce(where, v, item) for v in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return value
    raise ConfigError(where, f"unsupported type {annotation}")


def build_section(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Make a section dataclass from a mapping, rejecting unknown keys."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(f.replace("_", "-") for f in fields))
            raise ConfigError(f"{where}.{key}", f"unknown key (known: {known})")
        coerced = _coerce(f"{where}.{key}", value, hints[name])
        choices = fields[name].metadata.get("choices")
        if choices and coerced not in choices:
            raise ConfigError(f"{where}.{key}", f"must be one of {', '.join(choices)}, got {coerced!r}")
        kwargs[name] = coerced
    try:
        return cast(T, cls(**kwargs))
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, str(exc)) from exc


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(path, f"cannot read config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from exc


def section_values(document: Mapping[str, Any], name: str, path: str) -> Mapping[str, Any]:
    raw = document.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{name}]", "must be a table")
    return cast(Mapping[str, Any], raw)


def check_sections(document: Mapping[str, Any], known: Iterable[str], path: str) -> None:
    known = set(known)
    for key in document:
        if key not in known:
            raise ConfigError(f"{path}: [{key}]", f"unknown section (known: {', '.join(sorted(known))})")


# -- flags -------------------------------------------------------------------


def _parse_flag_value(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    if annotation is bool:
        return None  # handled with BooleanOptionalAction
    if annotation in (int, float, str):
        return annotation
    if typing.get_origin(annotation) is tuple:
        return "list"
    raise TypeError(f"no flag parser for {annotation}")


def flag_of(key: str, prefix: str = "") -> str:
    """The command-line spelling of config key ``key`` (a field name)."""
    return f"--{prefix}{key.replace('_', '-')}"


def add_section_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, section: str, cls: type[Any], prefix: str = "") -> None:
    """Add one option per ``cli`` field of ``cls``, spelled ``--PREFIXKEY``;
    the parsed value lands in ``args.<section>__<field>`` (``None`` when the
    flag was not given)."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli"):
            continue
        flag = flag_of(f.name, prefix)
        dest = f"{section}__{f.name}"
        help_text = f.metadata.get("help", "")
        default_text = f"(config [{section}] {f.name.replace('_', '-')}; default {f.default!r})"
        kind = _parse_flag_value(hints[f.name])
        if kind is None:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=f"{help_text} {default_text}")
        elif kind == "list":
            parser.add_argument(flag, dest=dest, action="append", default=None, metavar="VALUE", help=f"{help_text} (repeatable) {default_text}")
        else:
            parser.add_argument(
                flag,
                dest=dest,
                type=kind,
                default=None,
                choices=f.metadata.get("choices"),
                metavar=None if f.metadata.get("choices") else f.name.upper(),
                help=f"{help_text} {default_text}",
            )


def section_from(cls: type[T], section: str, document: Mapping[str, Any], path: str, args: argparse.Namespace | None) -> T:
    """File values overridden by flags given on the command line."""
    values = dict(section_values(document, section, path))
    if args is not None:
        for f in dataclasses.fields(cast(Any, cls)):
            value = getattr(args, f"{section}__{f.name}", None)
            if value is not None:
                values[f.name] = value
    return build_section(cls, values, f"{path}: [{section}]" if path else f"[{section}]")
