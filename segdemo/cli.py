"""`python -m segdemo …`: the command line. Its subcommands live in segdemo.commands, listed there in order."""

from __future__ import annotations

import argparse
import logging
import sys

from .commands import commands
from .errors import SegdemoError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="segdemo", description="SegFormer → fused ONNX → TensorRT demo tools")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return top


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.run(args)
    except SegdemoError as exc:
        print(f"segdemo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segdemo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
