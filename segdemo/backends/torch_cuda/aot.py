"""torch-cuda's network made ahead of time and cached in build/compiled like the TensorRT plans (engine_cache's rules):
the exported program with its batch-1 TorchScript trace (default), or an AOTInductor package ($SEGDEMO_TORCH_AOT=1)."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import engine_cache
from ...artifacts import digest, lock_for, resolve_build_dir
from ...graph.export import normalisation
from ...profiling.spans import LOAD, SpanRecorder

if TYPE_CHECKING:
    import torch

    from ...model.source import ModelSource

log = logging.getLogger(__name__)

COMPILED_DIR = "compiled"
_CODE = ("model/network.py", "backends/torch_cuda/aot.py")  # the code whose output the package is: part of the key


def pixel_network(net: torch.nn.Module, precision: str) -> torch.nn.Module:
    """uint8 NHWC pixels → fp32 logits: the fused graph's normalisation, then `net` (fp16 under autocast, which
    keeps LayerNorm and Softmax in fp32, or fp32)."""
    import torch

    scale, shift = normalisation()

    class PixelNetwork(torch.nn.Module):
        scale: torch.Tensor  # buffers (torch types registered attributes as Tensor | Module)
        shift: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            device = next(net.parameters()).device
            self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1).to(device))
            self.register_buffer("shift", torch.from_numpy(shift).view(1, 3, 1, 1).to(device))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
            with torch.autocast(pixels.device.type, dtype=torch.float16, enabled=precision == "fp16",
                                cache_enabled=False):
                logits = self.net(x)
            return logits.float()

    return PixelNetwork().eval()


@dataclass(frozen=True)
class Format:
    """One kind of ahead-of-time artifact: how it is named, made from the eager network, and loaded."""

    name: str  # part of the key
    noun: str  # in span names: "find <noun>", "load <noun>"
    suffix: str
    # (the file's bytes, what `load` would give back or None): a made program is used as it is, not read back
    make: Callable[[torch.nn.Module, torch.Tensor, Path, SpanRecorder], tuple[bytes, Any]]
    load: Callable[[Path], Any]
    batch: int = 1  # the example's batch size: a trace replays only the shape it was traced at


MAX_BATCH = 64  # the exported program's batch dimension runs 1..MAX_BATCH


def _export(network: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool) -> Any:
    import torch

    dims = {"pixels": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if dynamic_batch else None
    with torch.inference_mode():
        return torch.export.export(network, (example,), dynamic_shapes=dims)


def _make_program(network: torch.nn.Module, example: torch.Tensor, folder: Path,
                  spans: SpanRecorder) -> tuple[bytes, Any]:
    import io

    import torch

    with spans.span("torch.export", LOAD, dynamic_batch=True):
        program = _export(network, example.expand(2, *example.shape[1:]).contiguous(), dynamic_batch=True)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    # The program in hand, not read back: deserialising it costs a first start 5–8 s (docs/benchmarks.md); a file
    # that does not load is found, and made again, on the next start.
    return buffer.getvalue(), program.module().to(memory_format=torch.channels_last)


def _load_program(path: Path) -> torch.nn.Module:
    import torch

    module = torch.export.load(str(path)).module()
    # Saved weights come back contiguous; channels-last is what cuDNN runs fastest here (see network).
    # Module.to takes memory_format at run time; torch's overloads leave it out
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _make_script(network: torch.nn.Module, example: torch.Tensor, folder: Path,
                 spans: SpanRecorder) -> tuple[bytes, Any]:
    import io

    import torch

    with spans.span("torch.jit.trace", LOAD), torch.inference_mode():
        traced = torch.jit.trace(network, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue(), None  # loaded from the file: a C++ load, and the check that it loads


def _load_script(path: Path) -> Callable:
    import torch

    script = torch.jit.load(str(path))

    def run(pixels: torch.Tensor) -> torch.Tensor:
        # As traced: no profiling runs and re-optimisation behind a CUDA graph's back.
        with torch.jit.optimized_execution(False):
            return script(pixels)

    return run


def _make_package(network: torch.nn.Module, example: torch.Tensor, folder: Path,
                  spans: SpanRecorder) -> tuple[bytes, Any]:
    import torch

    with spans.span("torch.export", LOAD):
        program = _export(network, example, dynamic_batch=False)
    with spans.span("aoti compile", LOAD) as attrs:
        made = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "network.pt2"))
        data = Path(made).read_bytes()
        attrs["bytes"] = len(data)
    return data, None


def _load_package(path: Path) -> Callable:
    import torch

    return torch._inductor.aoti_load_package(str(path))


# The exported program (torch.export, dynamic batch dimension, with its weights): batches and torch.compile use it.
PROGRAM = Format("exported-program-1", "exported network", ".program.pt2", _make_program, _load_program)
# The exported program traced at batch 1 into TorchScript: it loads in C++, far sooner than the program deserialises
# in Python (docs/benchmarks.md), so a restart is ready while the program itself loads in the background.
SCRIPT = Format("torchscript-1", "traced network", ".script.pt", _make_script, _load_script)
# The exported program compiled to kernels and a wrapper: no compilation at load, but opt-in (see network).
PACKAGE = Format("aoti-package-1", "compiled network", ".pt2", _make_package, _load_package)


def batch_script(size: int) -> Format:
    """The exported program traced at batch `size`: what a one-shot run's batch graph replays (a C++ load, like
    SCRIPT's, where the program's Python deserialisation would cost the run seconds)."""
    return replace(SCRIPT, name=f"torchscript-b{size}-1", noun=f"traced batch-{size} network",
                   suffix=f".b{size}.script.pt", batch=size)


def package_key(source: ModelSource, precision: str, device: torch.device, kind: Format = PACKAGE) -> dict[str, Any]:
    """Everything that makes one artifact different from another."""
    import torch

    root = Path(__file__).resolve().parents[2]  # segdemo/
    parts: dict[str, Any] = {
        "model": source.content_hash, "precision": precision, "input_size": list(source.input_size),
        "torch": torch.__version__, "cuda": torch.version.cuda, "device": device.type,
        "code": digest(*((root / name).read_bytes() for name in _CODE)),
        "format": kind.name,
    }
    if device.type == "cuda":
        parts["gpu"] = torch.cuda.get_device_name(device)
        parts["capability"] = list(torch.cuda.get_device_capability(device))
    return parts


def package_path(build_dir: Path, source: ModelSource, precision: str, device: torch.device, key: str,
                 kind: Format = PACKAGE) -> Path:
    """build/compiled/<model>-<precision>-<device>-<key><suffix>: readable name, content-addressed."""
    return build_dir / COMPILED_DIR / f"{source.name}-{precision}-{device.type}-{key[:16]}{kind.suffix}"


def compiled_network(source: ModelSource, precision: str, device: torch.device, build_dir: Path | None,
                     spans: SpanRecorder, make_network: Callable[[], torch.nn.Module],
                     progress: Callable[[float, str], None] | None = None,
                     kind: Format = PACKAGE) -> tuple[Any, dict[str, Any]]:
    """(the loaded artifact, facts): from the cache, else made from `make_network()` (the eager `pixel_network`) and
    stored; a missing, stale or corrupt artifact, or one that fails to load, is made again, never used."""
    # make_network is only called on a miss: it needs the model's weights, and so transformers.
    build_dir = resolve_build_dir(build_dir)
    parts = package_key(source, precision, device, kind)
    key = engine_cache.engine_key(parts)
    path = package_path(build_dir, source, precision, device, key, kind)
    with spans.span(f"find {kind.noun}", LOAD, file=path.name) as attrs:
        cached, why = engine_cache.lookup(path, key)
        attrs["cache"] = why
    if cached is not None:
        loaded = _load(kind, path, spans)
        if loaded is not None:
            return loaded, {"package": path, "cache_hit": True, "compile_s": cached.sidecar.get("compile_s")}
    elif path.exists():
        engine_cache.invalidate(path, why)
    with lock_for(path):
        cached, why = engine_cache.lookup(path, key)  # another process may have made it while we waited
        if cached is not None and (loaded := _load(kind, path, spans)) is not None:
            return loaded, {"package": path, "cache_hit": True, "compile_s": cached.sidecar.get("compile_s")}
        seconds, made = _make(kind, path, parts, key, spans, make_network, progress)
    loaded = made if made is not None else _load(kind, path, spans)
    if loaded is None:
        raise RuntimeError(f"the freshly made {kind.noun} {path} does not load")
    return loaded, {"package": path, "cache_hit": False, "compile_s": seconds}


def _make(kind: Format, path: Path, parts: dict[str, Any], key: str, spans: SpanRecorder,
          make_network: Callable[[], torch.nn.Module],
          progress: Callable[[float, str], None] | None) -> tuple[float, Any]:
    """Make and store the artifact: (seconds, the artifact in hand where its format keeps it, else None)."""
    import torch

    if progress is not None:
        progress(0.1, f"making the {kind.noun} (first start only; later starts load it from build/)")
    start = time.perf_counter()
    network = make_network()
    height, width = parts["input_size"]
    device = next(network.parameters()).device
    example = torch.randint(0, 256, (kind.batch, height, width, 3), dtype=torch.uint8, device=device)
    if progress is not None:
        progress(0.3, f"making the {kind.noun}: tracing{' and compiling' if kind is PACKAGE else ''}")
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        data, made = kind.make(network, example, Path(folder), spans)
    seconds = time.perf_counter() - start
    engine_cache.store(path, data, {"key": key, "parts": parts, "compile_s": round(seconds, 1)})
    log.info("made the %s in %.1f s → %s (%.1f MB); later starts load it", kind.noun, seconds, path,
             len(data) / 1e6)
    return seconds, made


def _load(kind: Format, path: Path, spans: SpanRecorder) -> Any | None:
    """The loaded artifact, or None (and the file discarded) if it fails to load."""
    with spans.span(f"load {kind.noun}", LOAD, file=path.name) as attrs:
        try:
            return kind.load(path)
        except Exception as exc:  # noqa: BLE001 — whatever the loader says, the artifact cannot be used
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            attrs["error"] = reason
            engine_cache.invalidate(path, f"it does not load ({reason})")
            return None


def describe(facts: dict[str, Any]) -> str:
    """One line for the Engine tab: the artifact and whether this start made it."""
    path = Path(facts["package"])
    how = "loaded from the cache" if facts["cache_hit"] else f"made this start in {facts['compile_s']:.0f} s"
    return f"{path} ({path.stat().st_size / 1e6:.0f} MB, {how})"
