"""The build/ cache: artifact paths, content hashes, atomic writes and inter-process locks."""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock

BUILD_DIR_ENV = "SEGDEMO_BUILD_DIR"


def resolve_build_dir(override: str | os.PathLike | None = None) -> Path:
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


def package_version(name: str) -> str:
    """An installed package's version from its metadata, without importing it ("absent" if not installed)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def cpu_signature() -> str:
    """The CPU's model and instruction-set flags (what ONNX Runtime's layouts and int8 kernels depend on)."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return "|".join(lines) or platform.machine()
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"


def hash_file_into(h: Any, path: Path) -> None:
    """Feed a file to a hash object in 4 MiB blocks (weights and plans can be hundreds of MB)."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    hash_file_into(h, path)
    return h.hexdigest()


def memo_sha256(path: Path, build_dir: Path | None = None) -> str:
    """sha256 of a file, remembered under build/hashes by path, size, mtime and inode, so a warm start reads no
    weights (hashing a large model's weights is a noticeable part of a start); any change to the file hashes it
    again."""
    stat = path.stat()
    stamp = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    memo = resolve_build_dir(build_dir) / "hashes" / digest(stamp)[:32]
    try:
        text = memo.read_text()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            return text
    except OSError:
        pass
    sha = file_sha256(path)
    atomic_write(memo, sha.encode())
    return sha


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
