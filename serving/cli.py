"""The `colorizer` console command: parses the command line (only here) and dispatches.

Each subcommand lives in the module that owns its behaviour and exposes
``add_parser(subparsers)`` and a ``run``-style function it sets as ``func``. This file only
lists them by module NAME: a command's module is imported when that command runs, so
`colorizer archive` never imports ``training`` (the serving image has no training code)
and `colorizer train` never imports the launcher.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> (module that owns it, one-line help), in the order `colorizer --help` lists them.
# The client install (pyproject's base dependencies) runs `colorize` only; each other
# command's module needs the extra that EXTRA_OF_COMMAND names.
COMMANDS = {
    "synth": ("training.synth", "write a learnable synthetic colorization data set"),
    "train": ("training.train", "train the colorization network"),
    "export": ("training.export", "export a training checkpoint to one TorchScript file"),
    "tune-decoding": (
        "training.decoding",
        "choose the classification head's temperature and prior correction on val photos",
    ),
    "evaluate": (
        "training.evaluate",
        "colorize a folder with an exported model and report quality metrics",
    ),
    "train-bench": (
        "training.benchmark",
        "training throughput on this CPU: fp32 vs bf16 (ratio from one run)",
    ),
    "archive": (
        "serving.launcher.archive",
        "package an exported model as a TorchServe archive (.mar)",
    ),
    "serve": ("serving.launcher.server", "start TorchServe with the colorizer model"),
    "stop": ("serving.launcher.server", "stop the server `colorizer serve` started"),
    "colorize": ("serving.client.colorize", "colorize photos through a running service"),
    "bench": (
        "serving.client.bench",
        "measure latency and throughput of a running service (REST vs gRPC)",
    ),
    "pipeline-bench": (
        "serving.benchmark",
        "where a request's time and memory go: pipeline stages, network, served (ratios)",
    ),
}


EXTRA_OF_COMMAND = {
    "synth": "train",
    "train": "train",
    "export": "train",
    "tune-decoding": "train",
    "evaluate": "train",
    "train-bench": "train",
    "archive": "launcher",
    "serve": "launcher",
    "stop": "launcher",
    "bench": "bench",
    "pipeline-bench": "runtime",
}


class MissingExtra(Exception):
    """A command's module needs a package this install lacks; the message says which extra."""


def import_command(command: str):
    """The module that owns ``command``; MissingExtra when its extra is not installed."""
    module = COMMANDS[command][0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in ("serving", "training", "handlers"):
            raise
        extra = EXTRA_OF_COMMAND.get(command, "dev")
        raise MissingExtra(
            f"`colorizer {command}` needs {exc.name.split('.')[0]}, which this install lacks; "
            f"install the '{extra}' extra (pip install 'colorizer[{extra}]')"
        ) from exc


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first known word), if any."""
    return next((word for word in argv if word in COMMANDS), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (the others are listed by name)."""
    parser = argparse.ArgumentParser(
        prog="colorizer",
        description="Train, export, package, serve and call the image colorizer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = COMMANDS[command][0] if command else None
    for name, (module, help_text) in COMMANDS.items():
        if name in sub.choices:  # registered by its module, beside `command`
            continue
        if module == wanted:
            import_command(command).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(chosen_command(argv)).parse_args(argv)
    except MissingExtra as exc:
        print(f"colorizer: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"colorizer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
