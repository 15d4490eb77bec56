"""torch-cuda's compiled network, made once with AOTInductor and cached in build/compiled like the TensorRT plans.

`torch.compile` re-traces the network in every new process (16 s for b4 on an H100 even with warm kernel caches);
an AOTInductor package (`torch.export` + `aoti_compile_and_package`) holds the generated kernels, the compiled
wrapper and the weights, and loads in about a second without transformers. The package is keyed by the model's
content key, the precision, the input size, torch/CUDA versions, the device and the code that builds the network;
its sidecar carries its size and sha256 (engine_cache's rules): a missing, stale or corrupt package, or one that
fails to load, is compiled again, never used.

Opt-in ($SEGDEMO_TORCH_AOT=1, see torch_cuda): on the lent H100 (torch 2.11+cu130) `aoti_load_package` of a CUDA
package segfaulted inside `_load_aoti` ~45 s in, with and without PDL and with CUDA initialised first, while CPU
packages (tests/test_compiled_cache.py, torch 2.13) load in 10 ms.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import engine_cache
from ..artifacts import build_dir, digest, lock_for
from ..export import normalisation
from ..spans import LOAD, SpanRecorder

if TYPE_CHECKING:
    import torch

    from ..model_source import ModelSource

log = logging.getLogger(__name__)

COMPILED_DIR = "compiled"
_CODE = ("network.py", "backends/torch_aot.py")  # the code whose output the package is: part of the key


def pixel_network(net: torch.nn.Module, precision: str) -> torch.nn.Module:
    """uint8 NHWC pixels → fp32 logits: the fused graph's normalisation, then `net` (fp16 under autocast, which
    keeps LayerNorm and Softmax in fp32, or fp32)."""
    import torch

    scale, shift = normalisation()

    class PixelNetwork(torch.nn.Module):
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


def package_key(source: ModelSource, precision: str, device: torch.device) -> dict[str, Any]:
    """Everything that makes one compiled package different from another."""
    import torch

    root = Path(__file__).resolve().parent.parent
    parts: dict[str, Any] = {
        "model": source.content_hash, "precision": precision, "input_size": list(source.input_size),
        "torch": torch.__version__, "cuda": torch.version.cuda, "device": device.type,
        "code": digest(*((root / name).read_bytes() for name in _CODE)),
        "format": "aoti-package-1",
    }
    if device.type == "cuda":
        parts["gpu"] = torch.cuda.get_device_name(device)
        parts["capability"] = list(torch.cuda.get_device_capability(device))
    return parts


def package_path(build: Path, source: ModelSource, precision: str, device: torch.device, key: str) -> Path:
    """build/compiled/<model>-<precision>-<device>-<key>.pt2: readable name, content-addressed."""
    return build / COMPILED_DIR / f"{source.name}-{precision}-{device.type}-{key[:16]}.pt2"


def compiled_network(source: ModelSource, precision: str, device: torch.device, build: Path | None,
                     spans: SpanRecorder, make_network: Callable[[], torch.nn.Module],
                     progress: Callable[[float, str], None] | None = None) -> tuple[Callable, dict[str, Any]]:
    """(the loaded package's callable, facts): from the cache, else compiled from `make_network()` and stored.

    `make_network` returns the eager `pixel_network` on `device`; it is only called on a miss (it needs the
    model's weights, and so transformers)."""
    build = build_dir(build)
    parts = package_key(source, precision, device)
    key = engine_cache.engine_key(parts)
    path = package_path(build, source, precision, device, key)
    with spans.span("find compiled network", LOAD, file=path.name) as attrs:
        cached, why = engine_cache.lookup(path, key)
        attrs["cache"] = why
    if cached is not None:
        runner = _load(path, spans)
        if runner is not None:
            return runner, {"package": path, "cache_hit": True, "compile_s": cached.sidecar.get("compile_s")}
    elif path.exists():
        engine_cache.invalidate(path, why)
    with lock_for(path):
        cached, why = engine_cache.lookup(path, key)  # another process may have compiled it while we waited
        if cached is not None and (runner := _load(path, spans)) is not None:
            return runner, {"package": path, "cache_hit": True, "compile_s": cached.sidecar.get("compile_s")}
        seconds = _compile(path, parts, key, spans, make_network, progress)
    runner = _load(path, spans)
    if runner is None:
        raise RuntimeError(f"the freshly compiled network {path} does not load")
    return runner, {"package": path, "cache_hit": False, "compile_s": seconds}


def _compile(path: Path, parts: dict[str, Any], key: str, spans: SpanRecorder,
             make_network: Callable[[], torch.nn.Module], progress: Callable[[float, str], None] | None) -> float:
    import torch

    if progress is not None:
        progress(0.1, "compiling the network with AOTInductor (first start only; later starts load it from build/)")
    start = time.perf_counter()
    network = make_network()
    height, width = parts["input_size"]
    device = next(network.parameters()).device
    example = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8, device=device)
    with spans.span("torch.export", LOAD), torch.inference_mode():
        program = torch.export.export(network, (example,))
    if progress is not None:
        progress(0.3, "compiling the network with AOTInductor: generating and building kernels")
    with spans.span("aoti compile", LOAD) as attrs, tempfile.TemporaryDirectory(dir=path.parent) as folder:
        made = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(folder) / path.name))
        data = Path(made).read_bytes()
        attrs["bytes"] = len(data)
    seconds = time.perf_counter() - start
    engine_cache.store(path, data, {"key": key, "parts": parts, "compile_s": round(seconds, 1)})
    log.info("compiled the network with AOTInductor in %.1f s → %s (%.1f MB); later starts load it",
             seconds, path, len(data) / 1e6)
    return seconds


def _load(path: Path, spans: SpanRecorder) -> Callable | None:
    """The package's callable, or None (and the package discarded) if it fails to load."""
    import torch

    with spans.span("load compiled network", LOAD, file=path.name) as attrs:
        try:
            return torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # noqa: BLE001 — whatever the loader says, the package cannot be used
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            attrs["error"] = reason
            engine_cache.invalidate(path, f"it does not load ({reason})")
            return None


def describe(facts: dict[str, Any]) -> str:
    """One line for the Engine tab: the package and whether this start compiled it."""
    path = Path(facts["package"])
    how = "loaded from the cache" if facts["cache_hit"] else f"compiled this start in {facts['compile_s']:.0f} s"
    return f"{path} ({path.stat().st_size / 1e6:.0f} MB, {how})"

