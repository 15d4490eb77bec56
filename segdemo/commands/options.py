"""The options that pick a session — --model, --backend, --precision, --build-dir — declared once, for the
subcommands and for `app.py` (which may import the command-line package; the library may not)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..model.source import DEFAULT_MODEL, MODEL_HELP

PRECISION_HELP = ("auto (default): fp16 on GPU backends (sensitive ops fp32, accuracy-checked), int8 on the CPU where "
                  "it agrees with fp32 on ≥ 99 %% of each probe photo's pixels (else fp32); int8: the CPU backend only")
BUILD_DIR_HELP = "artifact cache folder (default build/, or $SEGDEMO_BUILD_DIR)"


def add_model(p: Any, default: str = DEFAULT_MODEL, help: str = MODEL_HELP) -> None:
    """--model on `p` (a parser or an argument group; so are the others')."""
    p.add_argument("--model", default=default, help=help)


def add_backend(p: Any, default: str = "auto",
                help: str = "auto (best available) or a backend name", choices: Sequence[str] | None = None) -> None:
    """--backend: a backend name, a server address, or auto."""
    p.add_argument("--backend", default=default, choices=choices, help=help)


def add_precision(p: Any, default: str = "auto",
                  help: str = PRECISION_HELP, choices: Sequence[str] = ("auto", "fp16", "fp32", "int8")) -> None:
    """--precision."""
    p.add_argument("--precision", default=default, choices=choices, help=help)


def add_build_dir(p: Any, default: str | Path | None = None,
                  help: str = BUILD_DIR_HELP) -> None:
    """--build-dir, the artifact folder (a Path, or None: $SEGDEMO_BUILD_DIR, else build/)."""
    p.add_argument("--build-dir", type=Path, default=Path(default) if default else None, help=help)


def add_session_options(p: argparse.ArgumentParser, model: str = DEFAULT_MODEL, backend: str = "auto",
                        precision: str = "auto", build_dir: str | Path | None = None) -> None:
    """--model, --backend, --precision and --build-dir with these defaults (a session's four choices)."""
    add_model(p, model)
    add_backend(p, backend)
    add_precision(p, precision)
    add_build_dir(p, build_dir)
