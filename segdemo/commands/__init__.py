"""The subcommands of `python -m segdemo`, one module each, listed in the order `--help` shows them.

This package is a leaf: it imports the library, the library never imports it (nor `segdemo.cli`). Each module
defines `COMMAND = Command(name, help, add_arguments, run)`; `run(args)` returns the exit code and raises
SegdemoError for a one-sentence failure.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import NamedTuple


class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    # Its process may end the moment `run` returns (cli.main, as the process's entry): everything it made is written,
    # closed and reaped by then, so the interpreter's teardown (torch's, CUDA's: tenths of a second) is skipped.
    exits_at_once: bool = False


ORDER = ("export", "segment", "build", "bench", "doctor", "triton")  # module names under segdemo.commands


def commands() -> list[Command]:
    """Every subcommand, in ORDER."""
    return [importlib.import_module(f"{__name__}.{name}").COMMAND for name in ORDER]
