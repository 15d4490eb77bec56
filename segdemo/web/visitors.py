"""Each visitor's files in a folder of their own under one private root: a visitor's new result replaces their older
ones, a folder goes when its visitor's session ends or idles past its time to live, and the root goes at exit."""

from __future__ import annotations

import atexit
import hashlib
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .response import Response

log = logging.getLogger("segdemo.app")

KEEP_RESULTS = 2  # a visitor's newest results: the page may still be loading the one before the newest


@dataclass
class Visitor:
    """What a visitor's session holds: the key of their folder and who they are (for downloads bound to them)."""

    token: str  # random: the folder's name, never derived from anything the visitor sends
    owner: str  # fingerprint of the client that started the session (see `fingerprint`)
    last: Response | None = None  # their newest image result, for re-blends and the full-size overlay


def fingerprint(host: str | None, user_agent: str | None) -> str:
    """Who a request comes from, as far as a server can tell without accounts: its address and browser."""
    return hashlib.sha256(f"{host or ''}\n{user_agent or ''}".encode()).hexdigest()[:32]


@dataclass
class VisitorFolders:
    """Folders of visitors' files; at most `capacity` visitors, each kept `ttl_s` seconds after their last use."""

    ttl_s: float
    capacity: int
    _root: Path | None = None
    _used: OrderedDict[str, float] = field(default_factory=OrderedDict)  # token → last use, oldest first
    _sessions: OrderedDict[str, Visitor] = field(default_factory=OrderedDict)  # Gradio session → its visitor
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path:
        """The private root (made on first use, removed at exit); served to the browser via allowed_paths."""
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="segdemo-visitors-"))
                atexit.register(self.close)
            return self._root

    def new_visitor(self, owner: str) -> Visitor:
        return Visitor(secrets.token_urlsafe(16), owner)

    def folder(self, visitor: Visitor) -> Path:
        """The visitor's folder, made if new (or if it aged out: the visitor starts afresh); marks it used."""
        root = self.root
        with self._lock:
            self._used[visitor.token] = time.monotonic()
            self._used.move_to_end(visitor.token)
            self._sweep_locked()
        folder = root / visitor.token
        folder.mkdir(exist_ok=True)
        return folder

    def known(self, visitor: Visitor) -> bool:
        """Whether the visitor's folder is still kept (not aged out or released)."""
        with self._lock:
            self._sweep_locked()
            return visitor.token in self._used

    def result_folder(self, visitor: Visitor, kind: str = "r") -> Path:
        """A fresh folder for one result of the visitor; their older results of that kind beyond KEEP_RESULTS go."""
        folder = self.folder(visitor)
        with self._lock:
            self._counter += 1
            fresh = folder / f"{kind}{self._counter:08d}"
        fresh.mkdir()
        older = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(kind))[:-KEEP_RESULTS]
        for path in older:
            shutil.rmtree(path, ignore_errors=True)
        return fresh

    def bind(self, session_hash: str | None, visitor: Visitor) -> None:
        """Remember which Gradio session the visitor is, so the session's end (the tab closed) removes their files."""
        if not session_hash:
            return
        with self._lock:
            self._sessions[session_hash] = visitor
            self._sessions.move_to_end(session_hash)
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)

    def end_session(self, session_hash: str | None) -> None:
        """The visitor closed or reloaded the page: their files go now."""
        with self._lock:
            visitor = self._sessions.pop(session_hash, None) if session_hash else None
        self.release(visitor)

    def release(self, visitor: Visitor | None) -> None:
        """Remove a visitor's folder (their session ended); Gradio calls this as the state's delete callback."""
        if visitor is None:
            return
        with self._lock:
            self._used.pop(visitor.token, None)
            root = self._root
        if root is not None:
            shutil.rmtree(root / visitor.token, ignore_errors=True)

    def _sweep_locked(self) -> None:
        """Drop folders idle past the time to live, then the least recently used beyond capacity."""
        now = time.monotonic()
        gone = []
        while self._used:
            token, used = next(iter(self._used.items()))
            if now - used <= self.ttl_s and len(self._used) <= self.capacity:
                break
            del self._used[token]
            gone.append(token)
        if gone and self._root is not None:
            for token in gone:
                shutil.rmtree(self._root / token, ignore_errors=True)
            log.info("removed %d visitors' folders (idle over %.0f s, or beyond %d visitors)", len(gone), self.ttl_s,
                     self.capacity)

    @property
    def count(self) -> int:
        return len(self._used)

    def close(self) -> None:
        """Remove every visitor's files (at exit)."""
        with self._lock:
            root, self._root = self._root, None
            self._used.clear()
            self._sessions.clear()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
