"""Command-line options generated from a config dataclass, so each option is declared once: its
field (default, type) with the help text and choices as field metadata.

    @dataclass
    class Config(PlainConfig):
        epochs: int = option(2, "fine-tuning epochs")
        lr: float | None = option(None, "learning rate; none: the source's")

    add_config_arguments(parser, Config)          # --epochs N, --lr X|none
    config = config_from_args(parser.parse_args(argv), Config)
    config_argv(config)                           # ["--epochs", "2", "--lr", "none"]: parses back to config

Metadata keys: "help", "choices", "parse" (str -> value) and "format" (value -> str) for types the
annotation does not describe, "aliases" (older spellings, accepted but not shown), "metavar".
A bool field is a switch pair --name / --no-name; help shows the one that changes the default.
An optional field (`int | None`) takes the word "none" for None, so every value has a spelling.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

NONE_WORD = "none"


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its command-line help (and choices, parse, format, aliases...)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def flag_of(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _annotation(config_cls: type, field: dataclasses.Field):
    # with `from __future__ import annotations` field.type is a string; resolve it in the class's module
    return typing.get_type_hints(config_cls)[field.name]


def _optional_inner(annotation) -> tuple[bool, Any]:
    """(accepts None, the remaining type) of an annotation such as `int | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        return optional, members[0] if len(members) == 1 else annotation
    return False, annotation


def value_parser(config_cls: type, field: dataclasses.Field) -> Callable[[str], Any]:
    """str -> field value: the metadata's "parse", else the annotation's type; "none" gives None
    where the annotation allows it."""
    optional, inner = _optional_inner(_annotation(config_cls, field))
    convert = field.metadata.get("parse") or inner
    if convert not in (int, float, str) and "parse" not in field.metadata:
        raise TypeError(f"{config_cls.__name__}.{field.name}: give a 'parse' for the type {inner!r}")

    def parse(text: str) -> Any:
        if optional and text.strip().lower() == NONE_WORD:
            return None
        return convert(text)

    parse.__name__ = field.name  # argparse names it in "invalid <name> value"
    return parse


def format_value(field: dataclasses.Field, value: Any) -> str:
    if value is None:
        return NONE_WORD
    if "format" in field.metadata:
        return field.metadata["format"](value)
    return repr(value) if isinstance(value, float) else str(value)  # repr: floats parse back exactly


def _metavar(config_cls: type, field: dataclasses.Field) -> str | None:
    optional, inner = _optional_inner(_annotation(config_cls, field))
    word = {int: "N", float: "X"}.get(inner)
    return f"{word}|{NONE_WORD}" if word and optional else word


def _config_fields(config_cls: type, skip: Iterable[str]) -> list[dataclasses.Field]:
    skipped = set(skip)
    return [f for f in dataclasses.fields(config_cls) if f.name not in skipped]


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, skip: Iterable[str] = (),
                         default_note: str | None = None) -> None:
    """One option per field of `config_cls` (except `skip`). Options that are not given are absent
    from the parsed namespace, so config_from_args keeps its base's value. `default_note` replaces
    "(default X)" in the help, for commands whose defaults come from elsewhere (a preset)."""
    for field in _config_fields(config_cls, skip):
        default = field.default
        note = default_note or f"default {format_value(field, default)}"
        text = field.metadata.get("help", "")
        if _annotation(config_cls, field) is bool:
            shown, hidden = (f"--no-{flag_of(field)[2:]}", flag_of(field)) if default else \
                (flag_of(field), f"--no-{flag_of(field)[2:]}")
            parser.add_argument(shown, dest=field.name, action="store_const", const=not default,
                                default=argparse.SUPPRESS, help=text)
            parser.add_argument(hidden, dest=field.name, action="store_const", const=bool(default),
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            continue
        common = {"dest": field.name, "type": value_parser(config_cls, field), "default": argparse.SUPPRESS}
        if field.metadata.get("choices") is not None:
            common["choices"] = list(field.metadata["choices"])
        else:
            common["metavar"] = field.metadata.get("metavar") or _metavar(config_cls, field)
        parser.add_argument(flag_of(field), help=f"{text} ({note})" if text else note, **common)
        for alias in field.metadata.get("aliases", ()):
            parser.add_argument(alias, help=argparse.SUPPRESS, **common)


def config_from_args(args: argparse.Namespace, config_cls: type, base=None):
    """`base` (default: the class's defaults) with the options given in `args`; not validated."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    return dataclasses.replace(base if base is not None else config_cls(), **given)


def config_argv(config, *, base=None, skip: Iterable[str] = ()) -> list[str]:
    """Options that make config_from_args rebuild `config` exactly: every field, or with `base`
    only those that differ from it."""
    argv: list[str] = []
    for field in _config_fields(type(config), skip):
        value = getattr(config, field.name)
        if base is not None and value == getattr(base, field.name):
            continue
        if isinstance(value, bool):
            argv.append(flag_of(field) if value else f"--no-{flag_of(field)[2:]}")
        else:
            argv += [flag_of(field), format_value(field, value)]
    return argv
