"""The engine tier's model inside tritonserver's Python backend (the repository's `session` variant, whose model.py
imports `TritonPythonModel` from here): one segdemo session, warmed up before Triton reports the model ready, running
what Triton's dynamic batcher queued as batches. Its background work (torch-cuda: batch graphs, then compilation)
goes on after ready, as in the app: requests replay what is captured and never wait for a compilation.

Requests carry model inputs (resized pixels and an output size), as the `triton` backend sends them; each request
gets its own class maps whatever else rode in its batch, and a bad one fails alone. Tensors cross the stub through
DLPack, as in python_model.py (the stub's numpy bridge misreads numpy 2 arrays).
"""

from __future__ import annotations

import ctypes
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.contract import BatchRunner
from ..graph.export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from ..image.preprocess import MAX_OUTPUT_SIDE, ModelInput
from ..pipeline import Session
from ..profiling.spans import SpanRecorder
from ..triton.repository import (
    PARAM_BACKEND,
    PARAM_BUILD_DIR,
    PARAM_MODEL,
    PARAM_PRECISION,
    PARAM_SPEC,
    model_key,
    parameters,
)

log = logging.getLogger(__name__)


class ServedSession:
    """A session made from the model config's parameters; `execute` answers one `execute` call of the stub."""

    def __init__(self, args: dict[str, str]) -> None:
        if not logging.getLogger().handlers:  # the stub's own process: its log goes to tritonserver's output
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        config = json.loads(args["model_config"])
        params = parameters(config)
        build_dir = Path(params[PARAM_BUILD_DIR]) if params.get(PARAM_BUILD_DIR) else None
        self.session = Session(params[PARAM_SPEC], backend=params[PARAM_BACKEND], precision=params[PARAM_PRECISION],
                               build_dir=build_dir, max_batch=max(1, int(config.get("max_batch_size", 1))),
                               warm_up="now", encoded_images=False)
        if model_key(self.session.source) != params.get(PARAM_MODEL):
            raise ValueError(f"{params[PARAM_SPEC]} changed since this repository was exported — export it again")
        backend = self.session.backend
        self.batch = backend.max_batch if isinstance(backend, BatchRunner) else 1
        self.input_size = self.session.source.input_size
        log.info("serving %s on %s (%s), batches of up to %d", params[PARAM_SPEC], backend.name, backend.precision,
                 self.batch)
        self.account = Account()

    def execute(self, requests: list[Any], pb_utils: Any) -> list[Any]:
        """One response per request, in order: its class maps [B, H, W] uint8, or the sentence saying why not."""
        start, spans = time.perf_counter_ns(), SpanRecorder()
        owners: list[int] = []  # the request each model input came from
        inputs: list[ModelInput] = []
        failed: dict[int, str] = {}
        for number, request in enumerate(requests):
            try:
                mine = self._inputs(request, pb_utils)
            except ValueError as exc:
                failed[number] = str(exc)
                continue
            owners += [number] * len(mine)
            inputs += mine
        maps: dict[int, list[np.ndarray]] = defaultdict(list)
        read = time.perf_counter_ns()
        for first in range(0, len(inputs), self.batch):
            chunk, whose = inputs[first:first + self.batch], owners[first:first + self.batch]
            try:
                results = self._run(chunk, spans)
            except Exception as exc:  # noqa: BLE001 — the requests of this batch hear of it; the others go on
                failed.update((number, f"segdemo session: {exc}") for number in whose)
                continue
            for number, class_map in zip(whose, results, strict=True):
                maps[number].append(class_map)
        ran = time.perf_counter_ns()
        responses = [self._response(pb_utils, failed.get(number), maps.get(number, []))
                     for number in range(len(requests))]
        self.account.add(len(inputs), (read - start, ran - read, time.perf_counter_ns() - ran), spans)
        return responses

    def _inputs(self, request: Any, pb_utils: Any) -> list[ModelInput]:
        images = _array(pb_utils, request, INPUT_IMAGE)
        sizes = _array(pb_utils, request, INPUT_SIZE).astype(np.int64)
        height, width = self.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise ValueError(f"image must be uint8 [B, {height}, {width}, 3], not {images.dtype} {list(images.shape)}")
        if sizes.shape != (images.shape[0], 2) or (sizes < 1).any() or (sizes > MAX_OUTPUT_SIDE).any():
            raise ValueError(f"out_size must be (height, width) per image with each side 1 to {MAX_OUTPUT_SIDE} "
                             f"pixels, not {sizes.tolist()}")
        if len({tuple(size) for size in sizes.tolist()}) > 1:
            raise ValueError("the images of one request must share one out_size; send them as separate requests")
        return [ModelInput(images[i:i + 1], (int(h), int(w)), (int(h), int(w))) for i, (h, w) in enumerate(sizes)]

    def _run(self, inputs: list[ModelInput], spans: SpanRecorder) -> list[np.ndarray]:
        backend = self.session.backend
        if isinstance(backend, BatchRunner) and len(inputs) > 1:
            return backend.run_batch(inputs, spans)
        return [backend.run(model_input, spans) for model_input in inputs]

    @staticmethod
    def _response(pb_utils: Any, error: str | None, maps: list[np.ndarray]) -> Any:
        if error is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(error))
        classes = np.ascontiguousarray(np.stack(maps))
        capsule = classes.__dlpack__()
        tensor = pb_utils.Tensor.from_dlpack(OUTPUT_CLASSES, capsule)
        _mark_used(capsule)
        return pb_utils.InferenceResponse([tensor])

    def close(self) -> None:
        if self.account.executions:
            log.info("%s", self.account.summary())
        self.session.close()


class Account:
    """Where the model's executions spent their time, logged PERIOD_S after a period's first execution (on the next
    one) and at the end: reading the inputs, the session (its GPU's share, where the backend times it), writing the
    responses."""

    PERIOD_S = 30.0

    def __init__(self) -> None:
        self._start_period()

    def _start_period(self) -> None:
        self.since = time.monotonic()
        self.executions = self.images = 0
        self.host_ns = [0, 0, 0]  # inputs, session, responses
        self.gpu_ns: dict[str, int] = defaultdict(int)  # the backend's device spans ("gpu network", …)

    def add(self, images: int, host_ns: tuple[int, int, int], spans: SpanRecorder) -> None:
        if self.executions == 0:  # a period starts with its first execution: idle time is nobody's
            self.since = time.monotonic()
        self.executions, self.images = self.executions + 1, self.images + images
        for i, ns in enumerate(host_ns):
            self.host_ns[i] += ns
        for span in spans.spans:
            if span.name.startswith("gpu "):
                self.gpu_ns[span.name[4:]] += span.duration_ns
        if time.monotonic() - self.since >= self.PERIOD_S:
            log.info("%s", self.summary())
            self._start_period()

    def summary(self) -> str:
        """One line: executions, mean batch and the mean milliseconds of each part of an execution."""
        n = max(1, self.executions)
        inputs, session, responses = (ns / n / 1e6 for ns in self.host_ns)
        gpu = ", ".join(f"{name} {ns / n / 1e6:.2f}" for name, ns in self.gpu_ns.items())
        return (f"{self.executions} executions, mean batch {self.images / n:.1f}; ms an execution: inputs "
                f"{inputs:.2f}, session {session:.2f}" + (f" (GPU: {gpu})" if gpu else "") +
                f", responses {responses:.2f}")


def _array(pb_utils: Any, request: Any, name: str) -> np.ndarray:
    """A request's input as a contiguous numpy view of Triton's shared memory, valid while this `execute` runs
    (nothing keeps it longer): the backend copies the pixels once, into its batch, instead of twice."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"the request has no input '{name}'")
    return np.ascontiguousarray(np.from_dlpack(tensor))


class TritonPythonModel:
    """What the Python backend's stub calls: one ServedSession per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        self.served = ServedSession(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # the stub's own module: it exists only there

        return self.served.execute(requests, pb_utils)

    def finalize(self) -> None:
        self.served.close()



# DLPack's name for a capsule its consumer took over. The stub renames the capsules it takes to "used_dlpack", which
# numpy's capsule destructor does not know: it then fails to read a "dltensor" and prints that ValueError with a
# traceback, once a response. Renamed as DLPack says, numpy leaves it to the stub, as it does anyway. A module global:
# PyCapsule_SetName keeps the pointer, not a copy.
_USED = b"used_dltensor"


def _mark_used(capsule: Any) -> None:
    set_name = ctypes.pythonapi.PyCapsule_SetName
    set_name.argtypes, set_name.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_int
    set_name(capsule, _USED)
