"""`segdemo triton export`: a Triton model repository per variant of the fused graph, each serving one model.

Every request has its own output size (`out_size`), and the fused graph upsamples to one size per execution, so
Triton's dynamic batcher must never concatenate two requests into one execution of the graph. Each variant keeps
that true in its own way:

- `python` (CPU): `max_batch_size` > 0 with dynamic batching, so Triton hands the Python model every queued request
  in one `execute`; the model runs the fused graph with ONNX Runtime once per request (the Python backend never
  concatenates requests), which makes its class maps bit-identical to the local `onnxruntime` backend.
- `onnxruntime` (`onnxruntime_onnx`) and `tensorrt` (`tensorrt_plan`): `max_batch_size: 0` — the graph's own
  batch-1 shapes, one request per execution — with several instances (`instance_group`) running requests side by
  side. Dynamic batching needs a batch dimension every request shares, which the per-request output size rules
  out; the plan is the one segdemo's engine cache already holds (batch 1, `out_size` a shape tensor).

- `session` (any machine segdemo runs on): the Python backend again, but its model is segdemo's own session
  (`segdemo.serving.engine_model`) on the backend the operator chose — torch-cuda's CUDA graphs on a GPU, ONNX
  Runtime (int8 by default) on a CPU — so the requests Triton's dynamic batcher queues run as one batch. It needs
  segdemo and that backend's packages where it is served: the engine tier of `--front-ends N` serves it there.

Each variant is its own repository (`OUT/<variant>/<name>/…`), so clients use one model name whichever runs.
The configs carry the model's identity as `parameters`, which the `triton` backend checks when it connects.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts import digest, file_sha256
from ..engine_cache import ENGINE_DIR
from ..errors import SegdemoError
from ..graph.export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from .server import PATH_ENV

if TYPE_CHECKING:
    from ..model.source import ModelSource

log = logging.getLogger(__name__)

VARIANTS = ("python", "onnxruntime", "tensorrt", "session")
DEFAULT_VARIANTS = VARIANTS[:3]  # what serves anywhere (NVIDIA's container too); `session` needs segdemo installed
DEFAULT_NAME = "segformer"
# Parameters every exported config carries: what the client checks (model, graph) and shows (spec, precision…).
PARAM_MODEL, PARAM_GRAPH, PARAM_SPEC = "segdemo_model", "segdemo_graph", "segdemo_spec"
PARAM_PRECISION, PARAM_VARIANT, PARAM_CLASSES = "segdemo_precision", "segdemo_variant", "segdemo_classes"
PARAM_BACKEND, PARAM_BUILD_DIR = "segdemo_backend", "segdemo_build_dir"  # the session variant's backend and caches
BATCHED = ("python", "session")  # the variants whose requests carry a batch dimension (dynamic batching)
_PLATFORM = {"python": 'backend: "python"', "onnxruntime": 'platform: "onnxruntime_onnx"',
             "tensorrt": 'platform: "tensorrt_plan"', "session": 'backend: "python"'}
# The session variant places its own work (torch-cuda on GPU 0): KIND_CPU keeps Triton from handing the Python
# backend CUDA tensors or needing its own view of the GPU.
_KIND = {"python": "KIND_CPU", "onnxruntime": "KIND_AUTO", "tensorrt": "KIND_GPU", "session": "KIND_CPU"}
_MODEL_FILE = {"python": "model.onnx", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}
# The session variant's model.py: segdemo's folders on the stub's path (it embeds the system's libpython and ignores
# PYTHONPATH; server.PATH_ENV names them), then the engine tier's model.
SESSION_MODEL_PY = f"""import os, sys
sys.path[:0] = [p for p in os.environ.get({PATH_ENV!r}, "").split(os.pathsep) if p and p not in sys.path]
from segdemo.serving.engine_model import TritonPythonModel  # noqa: E402,F401
"""


@dataclass(frozen=True)
class Exported:
    """One variant's outcome: the repository folder to serve (None when skipped) and what to tell the user."""

    variant: str
    repository: Path | None
    note: str


def parameters(config: dict) -> dict[str, str]:
    """The `parameters` of a served model's config (JSON, as Triton gives it): what export wrote, by name."""
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def model_key(source: ModelSource) -> str:
    """What identifies the model a server must run: weights and config (content hash) and the input size."""
    return digest(source.content_hash, str(source.input_size))[:16]


def config_text(variant: str, name: str, source: ModelSource, graph_sha256: str, precision: str = "fp32",
                max_batch: int = 8, instances: int = 1, extra: dict[str, str] | None = None) -> str:
    """The config.pbtxt of one variant (Triton's ModelConfig in protobuf text format)."""
    if variant not in VARIANTS:
        raise SegdemoError(f"unknown Triton variant '{variant}' — choose from {', '.join(VARIANTS)}")
    height, width = source.input_size
    batched = variant in BATCHED
    lead = [] if batched else [1]  # max_batch_size 0: the dims are the graph's own, batch 1 included
    shape_tensor = "\n    is_shape_tensor: true" if variant == "tensorrt" else ""
    params = {PARAM_MODEL: model_key(source), **({PARAM_GRAPH: graph_sha256} if graph_sha256 else {}),
              PARAM_SPEC: source.spec,
              PARAM_PRECISION: precision, PARAM_VARIANT: variant, PARAM_CLASSES: str(len(source.labels)),
              **(extra or {})}
    lines = [
        f'name: "{name}"',
        _PLATFORM[variant],
        f"max_batch_size: {max_batch if batched else 0}",
        "input [",
        _tensor(INPUT_IMAGE, "TYPE_UINT8", [*lead, height, width, 3]) + ",",
        _tensor(INPUT_SIZE, "TYPE_INT64", [2], shape_tensor),
        "]",
        "output [",
        _tensor(OUTPUT_CLASSES, "TYPE_UINT8", [*lead, -1, -1]),
        "]",
    ]
    if batched:
        # Only what is already queued is grouped: waiting for more would add latency and save no compute.
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 0\n}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {_KIND[variant]}\n  }}\n]")
    lines += [f'parameters {{\n  key: "{key}"\n  value {{ string_value: {json.dumps(value, ensure_ascii=False)} }}\n}}'
              for key, value in params.items()]
    return "\n".join(lines) + "\n"


def _tensor(name: str, data_type: str, dims: list[int], extra: str = "") -> str:
    return (f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {", ".join(map(str, dims))} ]'
            f"{extra}\n  }}")


def export_repository(source: ModelSource, onnx_file: Path | None, out: Path,
                      variants: tuple[str, ...] = DEFAULT_VARIANTS, name: str = DEFAULT_NAME, max_batch: int = 8,
                      instances: int = 1, build_dir: Path | None = None, precision: str = "fp16",
                      served: tuple[str, str] = ("auto", "auto")) -> list[Exported]:
    """Write `out/<variant>/<name>/` for each variant; `precision` picks the TensorRT plan (python and onnxruntime
    are fp32); `served`: the session variant's (backend, precision), resolved when it is served."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SegdemoError(f"unknown Triton variant {', '.join(unknown)} — choose from {', '.join(VARIANTS)}")
    if max_batch < 1 or instances < 1:
        raise SegdemoError("--max-batch and --instances must be at least 1")
    if onnx_file is None and set(variants) - {"session"}:
        raise ValueError("only the session variant is exported without the fused graph")
    graph_sha = file_sha256(onnx_file) if onnx_file else ""  # none for a session whose backend builds from the model
    done = []
    for variant in variants:
        extra: dict[str, str] = {}
        artifact: Path | None = onnx_file
        variant_precision = "fp32"
        if variant == "session":
            artifact, variant_precision = None, served[1]
            extra = {PARAM_BACKEND: served[0], PARAM_BUILD_DIR: str(build_dir.resolve()) if build_dir else ""}
        elif variant == "tensorrt":
            assert onnx_file is not None  # checked above
            found = find_plan(onnx_file, precision, build_dir if build_dir is not None else onnx_file.parent.parent)
            if found is None:
                done.append(Exported(variant, None, _no_plan(source, precision)))
                continue
            artifact, meta = found
            variant_precision = precision
            extra = {"segdemo_tensorrt": str(meta.get("tensorrt", "")),
                     "segdemo_plan_gpu": str((meta.get("built_on") or {}).get("gpu") or "")}
        repository = out / variant
        model_dir = repository / name
        if model_dir.exists():
            shutil.rmtree(model_dir)  # a previous export of another model must not leave files behind
        (model_dir / "1").mkdir(parents=True)
        if artifact is not None:
            _link_or_copy(artifact, model_dir / "1" / _MODEL_FILE[variant])
        if variant == "python":
            shutil.copyfile(Path(__file__).with_name("python_model.py"), model_dir / "1" / "model.py")
        elif variant == "session":
            (model_dir / "1" / "model.py").write_text(SESSION_MODEL_PY)
        (model_dir / "config.pbtxt").write_text(
            config_text(variant, name, source, graph_sha, variant_precision, max_batch, instances, extra))
        done.append(Exported(variant, repository, f"{variant:12s} {model_dir}  ({variant_precision})"))
    return done


def find_plan(onnx_file: Path, precision: str, build_dir: Path) -> tuple[Path, dict] | None:
    """The newest TensorRT (not TensorRT-RTX: Triton's backend runs full TensorRT) plan of this graph in the cache."""
    found = []
    for sidecar in sorted((build_dir / ENGINE_DIR).glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        plan = sidecar.with_suffix(".plan")
        # The batched pair's plans (graph "batched network", "post-processing") serve --max-batch sessions, not
        # Triton; sidecars from before they existed have no "graph" and are fused plans.
        if (meta.get("backend") == "tensorrt" and meta.get("precision") == precision and plan.is_file()
                and (meta.get("onnx") or {}).get("fused_fp32") == onnx_file.name
                and meta.get("graph", "fused") == "fused"):
            found.append((str(meta.get("built_at", "")), plan, meta))
    if not found:
        return None
    _, plan, meta = max(found, key=lambda item: item[0])
    return plan, meta


def _no_plan(source: ModelSource, precision: str) -> str:
    return (f"tensorrt     skipped: no {precision} TensorRT plan of this graph in the engine cache — build one on a "
            f"GPU machine whose TensorRT matches the Triton container's (segdemo build --backend tensorrt "
            f"--model {source.spec} --precision {precision}), then export again with the same --build-dir")


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link when on the same file system (graphs and plans can be hundreds of MB), else copy.

    Safe against later cache writes: those replace files by rename, which leaves the linked copy as it was."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
