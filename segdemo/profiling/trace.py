"""Chrome Trace Event Format export of spans (opens in Perfetto UI and chrome://tracing)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write
from .spans import Span

PROCESS_NAME = "segdemo"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def chrome_trace(spans: list[Span], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Complete events (`ph: "X"`, µs since the first span) plus process/thread-name metadata events."""
    pid = os.getpid()
    origin = min((s.start_ns for s in spans), default=0)
    threads: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    for s in sorted(spans, key=lambda s: (s.start_ns, -s.duration_ns)):
        tid = threads.setdefault(s.thread, len(threads) + 1)
        events.append({
            "name": s.name, "cat": s.category, "ph": "X", "pid": pid, "tid": tid,
            "ts": (s.start_ns - origin) / 1e3, "dur": max(s.duration_ns, 0) / 1e3,
            "args": _jsonable(s.attrs),
        })
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": PROCESS_NAME}}]
    meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
             for name, tid in threads.items()]
    meta += [{"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}}
             for tid in threads.values()]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms", "otherData": _jsonable(metadata or {})}


def write_trace(path: Path, spans: list[Span], metadata: dict[str, Any] | None = None) -> Path:
    """Write the trace JSON atomically and return its path."""
    atomic_write(path, json.dumps(chrome_trace(spans, metadata), separators=(",", ":")).encode())
    return path


def problems(trace: dict[str, Any]) -> list[str]:
    """Every way `trace` breaks the Trace Event Format rules this project relies on (empty = valid)."""
    found: list[str] = []
    events = trace.get("traceEvents")
    if not isinstance(events, list):
        return ["traceEvents is missing or not a list"]
    open_stacks: dict[tuple[Any, Any], list[tuple[float, float, str]]] = {}
    for i, e in enumerate(events):
        for key, kind in (("name", str), ("ph", str), ("pid", int), ("tid", int)):
            if not isinstance(e.get(key), kind):
                found.append(f"event {i}: '{key}' missing or not {kind.__name__}")
        if e.get("ph") == "M":
            if not isinstance(e.get("args"), dict):
                found.append(f"event {i}: metadata without args")
            continue
        if e.get("ph") != "X":
            found.append(f"event {i}: unexpected phase {e.get('ph')!r}")
            continue
        ts, dur = e.get("ts"), e.get("dur")
        if not isinstance(ts, (int, float)) or not isinstance(dur, (int, float)):
            found.append(f"event {i}: ts/dur not numbers")
            continue
        if dur < 0 or ts < 0:
            found.append(f"event {i} '{e['name']}': negative ts or dur")
        # Complete events on one thread must nest: each either inside the enclosing one or after it.
        stack = open_stacks.setdefault((e.get("pid"), e.get("tid")), [])
        while stack and ts >= stack[-1][1] - 1e-3:
            stack.pop()
        if stack and ts + dur > stack[-1][1] + 1e-3:
            found.append(f"event {i} '{e['name']}' overlaps '{stack[-1][2]}' on tid {e.get('tid')} without nesting")
        stack.append((ts, ts + dur, e["name"]))
    return found
