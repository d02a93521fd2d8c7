"""Command-line options generated from a config dataclass: one source for each option.

A field becomes ``--field-name``; its type, default and help come from the field
(``help`` and, optionally, ``choices`` and ``flag`` in ``field(metadata=...)``). A bool
field that defaults to True becomes ``--no-field-name``; a field without a default is
required. ``config_from_args`` builds the dataclass back from the parsed namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def option(help: str, default: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field with its command-line help (and ``choices=...`` if any)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def _base_type(annotation: Any) -> type:
    """``Path | None`` -> Path; ``int`` -> int."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help")
        if help_text is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: declare it with option()")
        kind = _base_type(hints[f.name])
        required = f.default is dataclasses.MISSING
        if kind is bool:
            if f.default is not True:
                raise TypeError(f"{cls.__name__}.{f.name}: only bools that default to True")
            negative = "--no-" + f.name.replace("_", "-")
            parser.add_argument(negative, dest=f.name, action="store_false", help=help_text)
            continue
        if not required and f.default is not None:
            help_text += f" (default {f.default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind if kind in (int, float, str, Path) else str,
            required=required,
            default=None if required else f.default,
            choices=f.metadata.get("choices"),
            metavar=f.metadata.get("metavar"),
            help=help_text,
        )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` from the options ``add_options`` added."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
