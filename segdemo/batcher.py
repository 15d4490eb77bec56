"""Dynamic batching: requests that reach the engine close together share one engine call.

A request that finds no other in flight (`alone`) takes the unbatched path instead. A dispatcher
thread takes the first waiting request, then keeps collecting for up to `window` seconds — but only
while more requests are on their way (holding a ticket from `expect`: decoding or resizing), so a lone request never
waits — until `max_batch` are together, and runs them through the batch function while holding the session's engine
slot. A batch is of whatever that function takes: model inputs (`BatchRunner.run_batch`) or whole requests for a
device (`BatchRenderer.render_batch`). Each request gets the batch's spans plus a "batch" span saying which batch it
rode in and where.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from .profiling.spans import ENGINE_WAIT_SPAN_NS, INFERENCE, Span, SpanRecorder

# The dispatcher feeds the device in short steps between waits, and each time it takes the GIL back it queues behind
# the request threads' Python (decoding, legends, the web server) — up to the 5 ms default switch interval a turn.
# Process-wide, so only while some batcher has a backlog (requests queued when its batch ends: the engine is the
# bottleneck); otherwise the request threads and the web server run as in an unbatched session.
SWITCH_INTERVAL_S = 0.0005


class _SwitchInterval:
    """The process's GIL switch interval: SWITCH_INTERVAL_S while any batcher has a backlog, else what it was."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0  # batchers with a backlog
        self._idle_s = sys.getswitchinterval()

    def busy(self) -> None:
        with self._lock:
            if self._busy == 0:
                self._idle_s = sys.getswitchinterval()
                sys.setswitchinterval(min(self._idle_s, SWITCH_INTERVAL_S))
            self._busy += 1

    def idle(self) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy == 0:
                sys.setswitchinterval(self._idle_s)


_SWITCH = _SwitchInterval()


@dataclass
class _Request:
    item: Any  # what the batch function takes for this request
    spans: SpanRecorder
    queued_ns: int = field(default_factory=time.perf_counter_ns)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Ticket:
    """A request on its way to the batcher; released when it is submitted or goes elsewhere (safe twice), and done
    when the request ends (leaving its `with` block), whichever way it went."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher
        self._active: Batcher | None = batcher

    def release(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            with batcher._count_lock:
                batcher._upstream -= 1

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()  # no-op once submitted or released; covers a request that failed on its way
        batcher, self._active = self._active, None
        if batcher is not None:
            with batcher._count_lock:
                batcher._active -= 1


class Batcher:
    """Collects requests into batches for one batch function; `submit` blocks until the request's result is made."""

    def __init__(self, run: Callable[[list[Any], SpanRecorder], list[Any]], max_batch: int,
                 slot: Callable[[], AbstractContextManager], window_s: float) -> None:
        """`run(items, spans)` gives each item's result in order, or an exception that fails that request alone
        (one it raises fails the whole batch); `slot()` is the session's engine lock."""
        self.run, self.max_batch, self.slot, self.window_s = run, max_batch, slot, window_s
        self._upstream = 0  # tickets not yet released: requests that may still join a batch
        self._active = 0  # tickets not yet done: requests anywhere between their start and their end
        self._count_lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._numbers = itertools.count(1)
        self._thread = threading.Thread(target=self._serve, name="segdemo batcher", daemon=True)
        self._thread.start()

    def expect(self) -> Ticket:
        """Announce a request that may soon be submitted: batches wait for it (up to the window)."""
        with self._count_lock:
            self._upstream += 1
            self._active += 1
        return Ticket(self)

    def alone(self) -> bool:
        """Whether the asking request (holding a ticket) is the only one in flight — none other on its way, queued,
        batched or running unbatched: a batch of it alone would only add the hand-offs to the dispatcher and back
        (measured slower than the unbatched path)."""
        return self._active <= 1

    def submit(self, item: Any, spans: SpanRecorder, ticket: Ticket | None = None) -> Any:
        """Queue `item` (releasing its ticket) and wait for its result; the batch's errors are raised here."""
        request = _Request(item, spans)
        self._queue.put(request)
        if ticket is not None:
            ticket.release()  # after the put, so the dispatcher always sees it, on its way or queued
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _serve(self) -> None:
        backlog = False
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                self._collect(first)
                if backlog != (not self._queue.empty()):  # requests waited for that batch: the engine is the limit
                    backlog = not backlog
                    if backlog:
                        _SWITCH.busy()
                    else:
                        _SWITCH.idle()
        finally:
            if backlog:
                _SWITCH.idle()

    def _collect(self, first: _Request) -> None:
        """Gather a batch from `first` (and what joins within the window) and run it."""
        batch = [first]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            try:  # what is already queued joins at once
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._upstream == 0:
                    break
                try:
                    item = self._queue.get(timeout=min(remaining, 0.0005))
                except queue.Empty:
                    continue
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        number = next(self._numbers)
        shared = SpanRecorder()
        with self.slot():
            start = time.perf_counter_ns()
            try:
                results = self.run([r.item for r in batch], shared)
            except BaseException as exc:  # noqa: BLE001 — every request of the batch hears of it
                for request in batch:
                    request.error = exc
                    request.done.set()
                return
            duration = time.perf_counter_ns() - start
        thread = threading.current_thread().name
        for position, (request, result) in enumerate(zip(batch, results, strict=True)):
            waited = start - request.queued_ns
            if waited > ENGINE_WAIT_SPAN_NS:
                request.spans.add(Span("engine wait", INFERENCE, request.queued_ns, waited, thread))
            request.spans.add(Span("batch", INFERENCE, start, duration, thread,
                                   {"batch": number, "size": len(batch), "position": position}))
            request.spans.extend(shared.spans)
            if isinstance(result, BaseException):  # refused on its own (e.g. a corrupt upload): the others went on
                request.error = result
            else:
                request.result = result
            request.done.set()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
