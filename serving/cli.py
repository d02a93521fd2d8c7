"""The `colorizer` console command: parses the command line (only here) and dispatches.

Each subcommand lives in the module that owns its behaviour and exposes
``add_parser(subparsers)``; this file only lists them. Modules are imported when
`main()` runs, never at import time of this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules in the order `colorizer --help` lists them.
COMMAND_MODULES = (
    "training.synth",
    "training.train",
    "training.export",
    "training.decoding",
    "training.evaluate",
    "training.benchmark",
    "serving.archive",
    "serving.server",
    "serving.client",
    "serving.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colorizer",
        description="Train, export, package, serve and call the image colorizer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
