"""Optional packages: imported where they are needed, through one helper whose error names what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SegdemoError


class MissingPackageError(SegdemoError):
    """An optional package is not installed; the message says which one and what it is for."""


def require(module: str, package: str | None = None, purpose: str = "") -> ModuleType:
    """Import `module`, or raise MissingPackageError naming the pip package to install (and why)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackageError(missing_text(module, package, purpose, exc)) from None


def missing(module: str, package: str | None = None, purpose: str = "") -> str | None:
    """None if `module` imports, else the sentence MissingPackageError would carry."""
    try:
        require(module, package, purpose)
    except MissingPackageError as exc:
        return str(exc)
    return None


def missing_text(module: str, package: str | None, purpose: str, exc: BaseException) -> str:
    what = f" ({purpose})" if purpose else ""
    return f"{module} is not installed{what}: pip install {package or module} — {exc}"
