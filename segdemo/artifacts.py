"""The build/ cache: artifact paths, content hashes, atomic writes and inter-process locks."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

BUILD_DIR_ENV = "SEGDEMO_BUILD_DIR"


def build_dir(override: str | os.PathLike | None = None) -> Path:
    """The artifact folder: the argument, else $SEGDEMO_BUILD_DIR, else ./build."""
    folder = Path(override or os.environ.get(BUILD_DIR_ENV) or "build")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def digest(*parts: str | bytes) -> str:
    """A stable hex digest of the given parts (order matters)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def hash_file_into(h: Any, path: Path) -> None:
    """Feed a file to a hash object in 4 MiB blocks (weights and plans can be hundreds of MB)."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    hash_file_into(h, path)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, so never toggle it while threads run


def lock_for(path: Path, timeout: float = -1) -> FileLock:
    """An inter-process lock guarding the creation of `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout)
