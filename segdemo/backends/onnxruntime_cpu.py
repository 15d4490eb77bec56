"""ONNX Runtime on the CPU: the backend that runs everywhere.

ONNX Runtime optimises a graph each time a session is made (~0.6 s for b4 on 2 cores) and parses the whole 250 MB
protobuf. The first session saves its optimised graph under build/ort/ with the weights as an external file, which
later sessions memory-map and load without optimising again (~0.35 s). The optimised graph is specific to the
ONNX Runtime version and the CPU's instruction set (ORT_ENABLE_ALL lays out for them), so both are in its key.
Precision int8 runs graph.int8's form of the network graph where its accuracy guard passes, fp32's otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..artifacts import cpu_signature, digest, lock_for, package_version
from ..graph.batched import ensure_batched_onnx, ensure_network_onnx
from ..graph.export import INPUT_IMAGE
from ..graph.int8 import ensure_int8_network
from ..image.preprocess import ModelInput
from ..image.upsample import UpsampleCounts, class_map
from ..optional import missing
from ..profiling.spans import INFERENCE, LAYER, LOAD, Span, SpanRecorder
from .contract import Backend, BatchRunner, LoadContext

log = logging.getLogger("segdemo")

SPIN_ENV = "SEGDEMO_ORT_SPIN"  # "0": no session spins (default: batched ones stop spinning when a run returns)
THREADS_ENV = "SEGDEMO_ORT_THREADS"  # intra-op threads where `threads` is not given (default: every core)


def unavailable_reason() -> str | None:
    return missing("onnxruntime", purpose="the CPU backend")


class OnnxRuntimeBackend(Backend, BatchRunner):
    """One InferenceSession of a network graph (uint8 pixels → channels-last logits), reused for every request, and
    the class map made on the host from each image's logits (image.upsample: the fused graph's Resize + ArgMax,
    pixel for pixel, without upsampling every class). The network graph is the fused graph's own network part
    (graph.batched.ensure_network_onnx), or with `max_batch` > 1 the batched network graph, which then serves every
    request, so a request gives the same pixels whatever batch it rides in."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_file: Path, spans: SpanRecorder, precision: str = "fp32", threads: int | None = None,
                 max_batch: int = 1, network: Path | None = None, accuracy_guard: str | None = None):
        """`network`: the network graph to run (int8's among them); `accuracy_guard`: what the int8 guard found,
        where int8 was asked for."""
        self.onnx_file = onnx_file
        self.max_batch = max_batch
        self.network = network or onnx_file
        self.batched = max_batch > 1
        if precision not in ("fp32", "int8"):
            log.warning("onnxruntime runs fp32 or int8 graphs; precision %s applies to GPU backends only", precision)
        self.precision = "int8" if precision == "int8" else "fp32"
        self.accuracy_guard = accuracy_guard
        self.threads = threads or _env_threads() or os.cpu_count() or 1
        self.optimized = optimized_folder(self.network)
        with spans.span("create ort session", LOAD, backend=self.name, file=self.network.name,
                        max_batch=max_batch) as attrs:
            self.session, attrs["optimized_cache"] = self._cached_session(self.network)
        self.logits_name = self.session.get_outputs()[0].name

    def _cached_session(self, graph: Path):
        """(session, how): from the saved optimised graph if there is a sound one, else optimise and save it."""
        cached = self.optimized / OPTIMIZED
        if _sound(self.optimized):
            try:
                return self._new_session(cached, optimise=False), "hit"
            except Exception as exc:  # noqa: BLE001 — any failure to load it means: make it again
                log.warning("the saved optimised graph %s could not be loaded (%s); optimising the graph again",
                            self.optimized, str(exc).splitlines()[0][:200])
        elif self.optimized.exists():
            log.warning("the saved optimised graph %s is incomplete or changed; optimising the graph again",
                        self.optimized)
        with lock_for(self.optimized):
            staging = Path(tempfile.mkdtemp(dir=self.optimized.parent, prefix=f".{self.optimized.name}."))
            staging.chmod(0o755)  # mkdtemp makes 0700; artifacts are ordinary folders
            try:
                session = self._new_session(graph, save_to=staging / OPTIMIZED)
                _seal(staging)
                shutil.rmtree(self.optimized, ignore_errors=True)
                os.replace(staging, self.optimized)  # a whole folder or none: the graph and its weights together
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return session, "saved"

    def _new_session(self, graph: Path, optimise: bool = True, save_to: Path | None = None,
                     profile_prefix: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        if os.environ.get(SPIN_ENV, "1") == "0":
            # The operator's choice for a small model under many visitors on a few cores: threads spinning for work
            # take the cores the app's other requests need, while a large model's runs get slower without it
            # (docs/benchmarks.md, "Measurements behind choices in the code").
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif self.batched or self.precision == "int8":
            # A run alternates with class maps on the host: threads still spinning after a run take the cores the
            # rest needs (docs/benchmarks.md). They spin within a run (fast hand-offs between its nodes) and stop when
            # it returns. Measured for a batch and for int8; fp32's single requests measured the same either way.
            options.add_session_config_entry("session.force_spinning_stop", "1")
        if save_to is not None:
            options.optimized_model_filepath = str(save_to)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             save_to.name + ".data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        if detailed:
            return self._run_profiled(model_input, spans)
        return self.run_batch([model_input], spans)[0]

    def run_batch(self, inputs: list[ModelInput], spans: SpanRecorder) -> list[np.ndarray]:
        with spans.span("execute", INFERENCE, backend=self.name, batch=len(inputs)):
            with spans.span("network", INFERENCE, batch=len(inputs)):
                logits = self._logits([model_input.pixels for model_input in inputs])
            return self._class_maps(logits, inputs, spans)

    def _logits(self, pixels: list[np.ndarray]) -> np.ndarray:
        """The network's logits of every image: one run for them all, except int8's — its activations are quantized
        at run time over the whole tensor, so a batch would change each image's result — one run an image."""
        if self.precision == "int8":
            return np.concatenate([self.session.run([self.logits_name], {INPUT_IMAGE: p})[0] for p in pixels])
        (logits,) = self.session.run([self.logits_name], {INPUT_IMAGE: np.concatenate(pixels)})
        return logits

    @staticmethod
    def _class_maps(logits: np.ndarray, inputs: list[ModelInput], spans: SpanRecorder) -> list[np.ndarray]:
        """Each image's class map from its logits, on the host (image.upsample)."""
        counts = UpsampleCounts()
        with spans.span("postprocess", INFERENCE, batch=len(inputs)) as attrs:
            maps = [class_map(logits[i], model_input.out_size, counts) for i, model_input in enumerate(inputs)]
            attrs.update(consensus_px=counts.consensus, candidate_px=counts.candidates, full_px=counts.full)
        return maps

    def _run_profiled(self, model_input: ModelInput, spans: SpanRecorder) -> np.ndarray:
        """Run once on a profiling session and turn ONNX Runtime's per-node events into layer spans."""
        with tempfile.TemporaryDirectory(prefix="segdemo-ort-") as folder:
            # Profiling is fixed at session creation and its file is only written when it ends,
            # so detailed mode uses a short-lived session of its own.
            with spans.span("create profiling session", INFERENCE, backend=self.name):
                cached = self.optimized / OPTIMIZED
                graph, optimise = (cached, False) if cached.is_file() else (self.network, True)
                session = self._new_session(graph, optimise, profile_prefix=str(Path(folder) / "ort"))
            with spans.span("execute", INFERENCE, backend=self.name, detailed=True,
                            out_size=list(model_input.out_size)):
                with spans.span("network", INFERENCE, batch=1):
                    (logits,) = session.run([self.logits_name], {INPUT_IMAGE: model_input.pixels})
                network = [s for s in spans.spans if s.name == "network"][-1]
                (classes,) = self._class_maps(logits, [model_input], spans)
            events = json.loads(Path(session.end_profiling()).read_text())
        spans.extend(layer_spans(events, network))
        return classes

    def close(self) -> None:
        self.session = None

    def facts(self) -> dict[str, object]:
        facts: dict[str, object] = {
            "Engine cache": f"optimised graph {self.optimized}",
            "Batching": f"up to {self.max_batch} requests per run (batched network graph)" if self.batched
                        else "off (one request per run)",
            "Class map": "on the host from the logits, only where neighbours disagree upsampled (exact)",
            "Threads": f"{self.threads} (intra-op)"}
        if self.accuracy_guard is not None:
            facts["Accuracy guard"] = self.accuracy_guard
        return facts


def _env_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


OPTIMIZED = "model.onnx"
SEAL = "sizes.json"


def optimized_folder(onnx_file: Path) -> Path:
    """Where the optimised graph of `onnx_file` lives for this ONNX Runtime and this CPU (build/ort/<graph>-<key>)."""
    key = digest(onnx_file.name, package_version("onnxruntime"), cpu_signature())[:12]
    return onnx_file.parent.parent / "ort" / f"{onnx_file.stem}-{key}"


def _seal(folder: Path) -> None:
    """Record the saved files' sizes: a folder whose files no longer match (truncated, replaced) is made again."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    (folder / SEAL).write_text(json.dumps(sizes))


def _sound(folder: Path) -> bool:
    try:
        sizes = json.loads((folder / SEAL).read_text())
        return bool(sizes) and all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, AttributeError):
        return False


def layer_spans(events: list[dict], execute: Span) -> list[Span]:
    """ORT profiler node events → layer spans, aligned so the model run starts with our span `execute` of it."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    if not runs or not nodes:
        return []
    run = runs[-1]
    offset_ns = execute.start_ns - int(run["ts"] * 1000)
    out = []
    for e in nodes:
        if not run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
            continue
        args = e.get("args", {})
        out.append(Span(
            name=e["name"].removesuffix("_kernel_time"), category=LAYER,
            start_ns=offset_ns + int(e["ts"] * 1000), duration_ns=int(e["dur"] * 1000),
            thread="onnxruntime layers",
            attrs={"op": args.get("op_name", ""), "provider": args.get("provider", ""),
                   "output_bytes": args.get("output_size", "")},
        ))
    return out


def create(onnx_file: Path, spans: SpanRecorder, context: LoadContext, precision: str = "fp32",
           threads: int | None = None, max_batch: int = 1, min_agreement: float | None = None) -> OnnxRuntimeBackend:
    """`threads`: ONNX Runtime's intra-op threads (default: every core); `max_batch` > 1: the batched network graph
    (exported once beside the fused graph; needs context.source), else the fused graph's network part; precision
    "int8": that network's int8 form (graph.int8) where its accuracy guard passes, at `min_agreement` if given."""
    if max_batch > 1:
        if context.source is None:
            raise ValueError("batching exports the batched graph from the model: pass a LoadContext with source=")
        with spans.span("batched onnx export", LOAD, max_batch=max_batch):
            network, _ = ensure_batched_onnx(context.source, onnx_file.parent.parent)
    else:
        with spans.span("network graph", LOAD):
            network = ensure_network_onnx(onnx_file)
    guard = None
    if precision == "int8":
        with spans.span("int8 graph", LOAD) as attrs:
            int8 = ensure_int8_network(network, context.progress)
            attrs.update(cache_hit=int8.cache_hit, lowest_agreement=int8.lowest)
        guard = int8.summary(min_agreement)
        if int8.passes(min_agreement):
            network = int8.path
        else:  # loud: int8 was asked for (or chosen by auto) and fp32 runs
            log.error("%s %s — falling back to fp32 %s", "!" * 20, guard, "!" * 20)
            precision = "fp32"
    return OnnxRuntimeBackend(onnx_file, spans, precision, threads, max_batch, network, guard)
