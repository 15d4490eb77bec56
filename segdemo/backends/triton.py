"""A Triton Inference Server as the backend: `--backend triton://host:8001/segformer` (gRPC) or
`triton+http://host:8000/segformer`, so any number of front ends share inference servers.

The server runs a repository made by `segdemo triton export`; at load the backend checks that its model is this
model (the config's `parameters`). A request that the server cannot answer (down, died, too slow) fails with one
sentence and drops the connection; the next request connects afresh, so serving resumes when the server returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..artifacts import file_sha256
from ..errors import EngineUnavailableError, SegdemoError
from ..graph.export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from ..image.preprocess import ModelInput
from ..optional import missing, require
from ..profiling.spans import INFERENCE, LOAD, SpanRecorder
from ..triton.repository import (
    DEFAULT_NAME,
    PARAM_GRAPH,
    PARAM_MODEL,
    PARAM_PRECISION,
    PARAM_SPEC,
    PARAM_VARIANT,
    model_key,
    parameters,
)
from .contract import Backend, LoadContext

log = logging.getLogger("segdemo")

SCHEMES = {"triton": "grpc", "triton+grpc": "grpc", "triton+http": "http"}
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
EXAMPLE = "triton://host:8001/segformer"
START_TIMEOUT = 5.0  # seconds for each check at load (gRPC)
# Seconds to keep trying at load while the server is not up or its model not ready (default 0: fail at once); the
# --front-ends supervisor sets it for its front ends, whose shared engine tier may be (re)starting.
WAIT_ENV = "SEGDEMO_TRITON_WAIT_S"
WAIT_POLL_S = 1.0


class NotServing(EngineUnavailableError):
    """The server did not answer, or has no ready model of that name: it may yet come up."""


@dataclass(frozen=True)
class Endpoint:
    """Where the model is served: protocol ("grpc" or "http"), host, port and model name."""

    protocol: str
    host: str
    port: int
    model: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        scheme = "triton" if self.protocol == "grpc" else "triton+http"
        return f"{scheme}://{self.address}/{self.model}"


def is_url(name: str) -> bool:
    """Whether a --backend value names a Triton server."""
    return name.split("://", 1)[0] in SCHEMES and "://" in name


def parse_url(url: str) -> Endpoint:
    """triton[+grpc|+http]://host[:port][/model] → Endpoint (ports default to Triton's 8001 and 8000)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise SegdemoError(f"'{url}' is not a Triton address — write e.g. {EXAMPLE} (gRPC) or "
                           f"triton+http://host:8000/segformer")
    protocol = SCHEMES[parts.scheme]
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise SegdemoError(f"'{url}' has no valid port — write e.g. {EXAMPLE}") from None
    return Endpoint(protocol, parts.hostname, port, parts.path.strip("/") or DEFAULT_NAME)


READS_GRAPH = False  # the server runs the model; a session's source names it (model_key), no graph needed


def unavailable_reason() -> str | None:
    return missing("tritonclient.grpc", "tritonclient[grpc,http]", "the triton backend")


class TritonBackend(Backend):
    """One client per thread (the HTTP client is not thread-safe), made lazily and dropped after a failure."""

    name = "triton"
    device = "triton"
    concurrent = True  # the server queues requests and its dynamic batcher groups them

    def __init__(self, endpoint: Endpoint, onnx_file: Path | None, context: LoadContext, spans: SpanRecorder,
                 precision: str = "auto", timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._module = require(f"tritonclient.{endpoint.protocol}", "tritonclient[grpc,http]", "the triton backend")
        self._local = threading.local()
        with spans.span("connect to triton", LOAD, server=str(endpoint)):
            config = self._waited_config(onnx_file, context, float(os.environ.get(WAIT_ENV) or 0))
        params = parameters(config)
        self.variant = params.get(PARAM_VARIANT, "?")
        self.precision = params.get(PARAM_PRECISION, "fp32")
        self.served_spec = params.get(PARAM_SPEC, "?")
        if precision not in ("auto", self.precision):
            raise SegdemoError(f"the Triton model {endpoint} runs {self.precision}, not {precision} — drop "
                               f"--precision, or serve a repository exported at {precision}")
        self.batched = int(config.get("max_batch_size", 0)) > 0  # the python and session variants: a batch dim
        self.device = f"triton {self.variant} @ {endpoint.address}"

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.endpoint.protocol == "grpc":
                client = self._module.InferenceServerClient(self.endpoint.address)
            else:
                client = self._module.InferenceServerClient(self.endpoint.address, connection_timeout=self.timeout,
                                                            network_timeout=self.timeout)
            self._local.client = client
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken connection may fail again; it is being dropped anyway
                pass

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """A client call whose failure (no server, a dead one, a timeout) becomes one sentence."""
        if self.endpoint.protocol == "grpc":
            # Load-time checks are quick calls: a server that is not there is reported within seconds.
            kwargs["client_timeout"] = self.timeout if method == "infer" else min(self.timeout, START_TIMEOUT)
        try:
            return getattr(self._client(), method)(*args, **kwargs)
        except Exception as exc:  # grpc, gevent and socket errors alike: the server did not answer
            self._drop_client()
            raise NotServing(f"the Triton server at {self.endpoint.address} did not answer {what} "
                               f"({_cause(exc)}) — check that it runs (segdemo triton serve REPOSITORY) and that "
                               f"--backend {self.endpoint} names it") from None

    def _waited_config(self, onnx_file: Path | None, context: LoadContext, wait_s: float) -> dict[str, Any]:
        """`_checked_config`, tried again for up to `wait_s` seconds while the server is not serving the model."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._checked_config(onnx_file, context)
            except NotServing as exc:
                if time.monotonic() >= deadline:
                    raise
                log.info("waiting for %s (up to %.0f s more): %s", self.endpoint, deadline - time.monotonic(), exc)
                time.sleep(WAIT_POLL_S)

    def _checked_config(self, onnx_file: Path | None, context: LoadContext) -> dict[str, Any]:
        """The served model's config, after checking that the server is up and the model is ours."""
        self._call("at start", "is_server_live")
        model = self.endpoint.model
        if not self._call("at start", "is_model_ready", model):
            index = self._call("at start", "get_model_repository_index")
            names = sorted({m["name"] if isinstance(m, dict) else m.name for m in _models(index)})
            raise NotServing(f"the Triton server at {self.endpoint.address} has no ready model '{model}' (it has "
                               f"{', '.join(names) or 'none'}) — serve a repository made by segdemo triton export")
        if self.endpoint.protocol == "grpc":
            config = self._call("at start", "get_model_config", model, as_json=True)["config"]
        else:
            config = self._call("at start", "get_model_config", model)
        params = parameters(config)
        if context.source is not None:
            ours, theirs, what = model_key(context.source), params.get(PARAM_MODEL), context.source.spec
        elif onnx_file is None:
            raise ValueError("the triton backend checks the served model against the model source or its graph")
        else:
            ours, theirs, what = file_sha256(onnx_file), params.get(PARAM_GRAPH), onnx_file.name
        if theirs != ours:
            served = params.get(PARAM_SPEC) or "a model segdemo did not export"
            raise SegdemoError(f"the Triton model {self.endpoint} serves {served}, not {what} — export this model "
                               f"(segdemo triton export --model {what}) and serve that repository")
        return config

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        height, width = model_input.out_size
        size = np.array(model_input.out_size, dtype=np.int64)
        with spans.span("triton infer", INFERENCE, backend=self.name, server=str(self.endpoint),
                        out_size=[height, width]):
            inputs = [self._input(INPUT_IMAGE, model_input.pixels, "UINT8"),
                      self._input(INPUT_SIZE, size[None] if self.batched else size, "INT64")]
            outputs = [self._module.InferRequestedOutput(OUTPUT_CLASSES)]
            result = self._call("this request", "infer", self.endpoint.model, inputs, outputs=outputs)
            classes = result.as_numpy(OUTPUT_CLASSES)
        if classes is None or classes.dtype != np.uint8 or classes.shape != (1, height, width):
            shape = None if classes is None else (classes.dtype, classes.shape)
            raise SegdemoError(f"the Triton model {self.endpoint} answered {shape}, not a uint8 class map of "
                               f"{height}×{width} — serve a repository made by segdemo triton export")
        return classes[0]

    def _input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        tensor = self._module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        return tensor

    def close(self) -> None:
        self._drop_client()

    def facts(self) -> dict[str, object]:
        return {"Server": str(self.endpoint), "Served model": f"{self.served_spec} ({self.variant} variant)",
                "Engine cache": "on the server (its model repository)", "Timeout": f"{self.timeout:g} s"}


def _models(index: Any) -> list[Any]:
    """Models of a repository index, from the HTTP client (a list of dicts) or gRPC (a protobuf message)."""
    return index if isinstance(index, list) else list(index.models)


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "…"


def create(onnx_file: Path | None, spans: SpanRecorder, context: LoadContext, url: str | None = None,
           precision: str = "auto", timeout: float = 30.0) -> TritonBackend:
    """`url`: the server and model, e.g. triton://host:8001/segformer; `timeout`: seconds per call."""
    if not url:
        raise SegdemoError(f"the triton backend needs the server's address: --backend {EXAMPLE}")
    return TritonBackend(parse_url(url), onnx_file, context, spans, precision, timeout)
