"""Dynamic batching: requests that reach the engine close together share one engine call.

A dispatcher thread takes the first waiting request, then keeps collecting for up to `window` seconds — but only
while more requests are on their way (holding a ticket from `expect`: decoding or resizing), so a lone request never
waits — until
`max_batch` are together, and runs them through `BatchRunner.run_batch` while holding the session's engine slot.
Each request gets the batch's spans plus a "batch" span saying which batch it rode in and where.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from .backends import BatchRunner
from .preprocess import ModelInput
from .spans import ENGINE_WAIT_SPAN_NS, INFERENCE, Span, SpanRecorder


@dataclass
class _Request:
    model_input: ModelInput
    spans: SpanRecorder
    queued_ns: int = field(default_factory=time.perf_counter_ns)
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Ticket:
    """A request on its way to the batcher; released when it is submitted or goes elsewhere (safe twice)."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher

    def release(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            with batcher._count_lock:
                batcher._upstream -= 1


class Batcher:
    """Collects requests into batches for one BatchRunner; `submit` blocks until the request's class map is made."""

    def __init__(self, runner: BatchRunner, slot: Callable[[], AbstractContextManager], window_s: float) -> None:
        """`slot()` is the session's engine lock."""
        self.runner, self.slot, self.window_s = runner, slot, window_s
        self._upstream = 0  # tickets not yet released: requests that may still join a batch
        self._count_lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._numbers = itertools.count(1)
        self._thread = threading.Thread(target=self._serve, name="segdemo batcher", daemon=True)
        self._thread.start()

    def expect(self) -> Ticket:
        """Announce a request that may soon be submitted: batches wait for it (up to the window)."""
        with self._count_lock:
            self._upstream += 1
        return Ticket(self)

    def submit(self, model_input: ModelInput, spans: SpanRecorder, ticket: Ticket | None = None) -> np.ndarray:
        request = _Request(model_input, spans)
        self._queue.put(request)
        if ticket is not None:
            ticket.release()  # after the put, so the dispatcher always sees it, on its way or queued
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.runner.max_batch:
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
                maps = self.runner.run_batch([r.model_input for r in batch], shared)
            except BaseException as exc:  # noqa: BLE001 — every request of the batch hears of it
                for request in batch:
                    request.error = exc
                    request.done.set()
                return
            duration = time.perf_counter_ns() - start
        thread = threading.current_thread().name
        for position, (request, class_map) in enumerate(zip(batch, maps, strict=True)):
            waited = start - request.queued_ns
            if waited > ENGINE_WAIT_SPAN_NS:
                request.spans.add(Span("engine wait", INFERENCE, request.queued_ns, waited, thread))
            request.spans.add(Span("batch", INFERENCE, start, duration, thread,
                                   {"batch": number, "size": len(batch), "position": position}))
            request.spans.extend(shared.spans)
            request.result = class_map
            request.done.set()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
