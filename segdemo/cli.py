"""`python -m segdemo …`: the command line. Its subcommands live in segdemo.commands, listed there in order."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from .commands import commands
from .errors import SegdemoError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="segdemo", description="SegFormer → fused ONNX → TensorRT demo tools")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run, exits_at_once=command.exits_at_once)
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
    """Run the command `argv` names (the process's arguments when None: then it is the process's entry, and a
    command that `exits_at_once` ends the process here)."""
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    code = _run(args)
    if argv is None and args.exits_at_once:
        exit_now(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except SegdemoError as exc:
        print(f"segdemo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segdemo: interrupted", file=sys.stderr)
        return 130


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, once what it printed and logged is out: a one-shot
    command's files are closed and its children reaped before it returns, and the teardown is long where torch was
    imported (`segment` of a video on a CPU, torch and transformers imported: 1.2–1.3 s from its last line to exit,
    0.05–0.07 s without it); a CUDA context adds its own."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
