"""TensorRT's callback interfaces adapted to ours: its log to Python logging, its build phases to one progress bar."""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from ...graph.fp16 import ProgressFn


@functools.cache  # TensorRT keeps the first logger it sees; a second one only earns a warning
def trt_logger(trt: Any) -> Any:  # trt: the tensorrt or tensorrt_rtx module
    """A TensorRT logger that speaks through Python logging (warnings and errors only, unless -v)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg: str) -> None:
            level = {
                trt.ILogger.INTERNAL_ERROR: logging.ERROR, trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING, trt.ILogger.INFO: logging.DEBUG,
            }.get(severity, logging.DEBUG)
            if "has Int64 binding" in msg:  # the parser's reminder about out_size; the session binds int64
                level = logging.DEBUG
            logging.getLogger(trt.__name__).log(level, "%s", msg)

    return Logger()


def progress_monitor(trt: Any, progress: ProgressFn) -> Any:
    """An IProgressMonitor turning TensorRT's nested build phases into one fraction for `progress`."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several of its threads
            self._phases: dict[str, list] = {}  # name → [parent, steps, done]

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._phases[phase_name] = [parent_phase, max(1, num_steps), 0]
            self._emit(phase_name)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                if phase_name in self._phases:
                    self._phases[phase_name][2] = step + 1
            self._emit(phase_name)
            return True

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._phases.pop(phase_name, None)

        def _emit(self, phase_name: str) -> None:
            with self._lock:
                chain, name = [], phase_name
                while name in self._phases:  # innermost → outermost
                    chain.append(self._phases[name])
                    name = self._phases[name][0]
                fraction, scale = 0.0, 1.0
                for _, steps, done in reversed(chain):  # each level subdivides one step of its parent
                    fraction += scale * min(done, steps) / steps
                    scale /= steps
            progress(min(fraction, 1.0), phase_name)

    return Monitor()
