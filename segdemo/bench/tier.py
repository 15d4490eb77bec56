"""The engine tier from a load client's side: `EngineCaller` sends one image's model input over tritonclient gRPC, as
perf_analyzer would, and `TierCounters` reads Triton's own statistics, so that a run can say where a request's time
went inside the server (queue, the backend's input, execute, output) and what batches formed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..optional import require


class EngineCaller:
    """One tritonclient gRPC client of an engine tier (`triton://host:port/model`) with the model inputs of the
    load's images, made once: each call sends one image's input and returns its class map."""

    def __init__(self, url: str, paths: list[str]) -> None:
        from ..backends.triton import parse_url
        from ..graph.export import INPUT_IMAGE
        from ..image.decode import decode
        from ..image.preprocess import prepare

        endpoint = parse_url(url)
        grpc = require("tritonclient.grpc", "tritonclient[grpc,http]", "--load-targets engine")
        self.grpc, self.model = grpc, endpoint.model
        self.client = grpc.InferenceServerClient(endpoint.address)
        config = self.client.get_model_config(self.model, as_json=True)["config"]
        dims = next(tensor["dims"] for tensor in config["input"] if tensor["name"] == INPUT_IMAGE)
        size = (int(dims[0]), int(dims[1]))
        self.inputs = {path: prepare(decode(path), size) for path in paths}

    def infer(self, path: str) -> np.ndarray:
        from ..graph.export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES

        model_input, grpc = self.inputs[path], self.grpc
        image = grpc.InferInput(INPUT_IMAGE, list(model_input.pixels.shape), "UINT8")
        image.set_data_from_numpy(model_input.pixels)
        out_size = grpc.InferInput(INPUT_SIZE, [1, 2], "INT64")
        out_size.set_data_from_numpy(np.array([model_input.out_size], np.int64))
        result = self.client.infer(self.model, [image, out_size], outputs=[grpc.InferRequestedOutput(OUTPUT_CLASSES)])
        return result.as_numpy(OUTPUT_CLASSES)[0]

    def counters(self) -> TierCounters:
        """Triton's cumulative statistics of the model now (its statistics extension)."""
        stats = self.client.get_inference_statistics(self.model).model_stats[0]
        inference = stats.inference_stats
        batches = {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in stats.batch_stats}
        return TierCounters(
            requests=inference.success.count, executions=stats.execution_count, inferences=stats.inference_count,
            ns={phase: getattr(inference, phase).ns
                for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output")},
            batches=batches)


@dataclass(frozen=True)
class TierCounters:
    """Triton's cumulative counts and nanoseconds for one model; `since` makes a run's share of them."""

    requests: int
    executions: int
    inferences: int
    ns: dict[str, int]  # summed over requests: success (the whole request in the server), queue, compute_*
    batches: dict[int, tuple[int, int]]  # batch size → (executions, nanoseconds in the model's execute)

    def since(self, before: TierCounters) -> dict[str, Any]:
        """What happened between `before` and these counters: mean ms a request spent in each phase inside the
        server, executions, mean batch, and each batch size's executions and mean execute ms."""
        requests = self.requests - before.requests
        executions = self.executions - before.executions
        if requests <= 0 or executions <= 0:
            return {"requests": 0}
        per_request = {f"{phase}_ms": round((self.ns[phase] - before.ns[phase]) / requests / 1e6, 2)
                       for phase in self.ns}
        sizes = {}
        for size, (count, ns) in sorted(self.batches.items()):
            old_count, old_ns = before.batches.get(size, (0, 0))
            if count > old_count:
                sizes[size] = {"executions": count - old_count,
                               "execute_ms": round((ns - old_ns) / (count - old_count) / 1e6, 2)}
        return {"requests": requests, "executions": executions,
                "mean_batch": round((self.inferences - before.inferences) / executions, 2),
                "per_request": per_request, "batch_sizes": sizes}
