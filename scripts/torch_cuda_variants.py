"""Where the torch-cuda network time goes: graph-replay time, kernel count and argmax agreement per variant.

Run on a CUDA machine: python scripts/torch_cuda_variants.py [--model random:b4] [--compile]. Diagnostic only;
the numbers that count come from `segdemo bench`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from segdemo.model.network import folded_logits
from segdemo.model.source import resolve


def build(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    net = folded_logits(model).cuda()
    if variant.startswith("fp16"):
        net.half()
        if "autocast" in variant:
            for module in net.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.float()
    if "compile" in variant:
        net = torch.compile(net, dynamic=False)
    return net


def forward(net: torch.nn.Module, x: torch.Tensor, variant: str) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.float16, enabled="autocast" in variant, cache_enabled=False):
        return net(x if "autocast" in variant or variant.startswith("fp32") else x.half()).float()


def kernel_profile(net: torch.nn.Module, x: torch.Tensor, variant: str) -> tuple[int, list[tuple[str, float]]]:
    """Kernels one eager forward launches, and the four that take longest in total (ms)."""
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            forward(net, x, variant)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        by_name: dict[str, float] = {}
        for e in kernels:
            by_name[e.name[:40]] = by_name.get(e.name[:40], 0.0) + e.device_time / 1e3
        return len(kernels), sorted(by_name.items(), key=lambda kv: -kv[1])[:4]
    except Exception as exc:  # noqa: BLE001 — diagnostics must not stop the timing table
        return -1, [(f"profiler failed: {exc}"[:60], 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="random:b4")
    parser.add_argument("--compile", action="store_true", help="also the torch.compile variants")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = resolve(args.model).load_model()
    import skimage.data
    from PIL import Image

    from segdemo.graph.export import IMAGENET_MEAN, IMAGENET_STD

    image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((512, 512)), dtype=np.float32) / 255.0
    x = torch.from_numpy(((image - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)).permute(2, 0, 1)[None].cuda()
    with torch.inference_mode():
        reference = folded_logits(model).cuda()(x).argmax(1)
    variants = ["fp32", "fp16-autocast", "fp16-native"]
    if args.compile:
        variants += ["fp16-autocast-compile", "fp16-native-compile"]
    print(f"{'variant':24s} {'replay ms':>10s} {'kernels':>8s} {'agree':>8s}  top kernels")
    for variant in variants:
        start = time.perf_counter()
        net = build(model, variant)
        stream = torch.cuda.Stream()
        with torch.inference_mode():
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    forward(net, x, variant)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                out = forward(net, x, variant)
            torch.cuda.synchronize()
            setup = time.perf_counter() - start
            times = []
            for _ in range(100):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                graph.replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            agreement = float((out.argmax(1) == reference).float().mean())
            kernels, top = kernel_profile(net, x, variant)
        print(f"{variant:24s} {np.median(times):10.3f} {kernels:8d} {agreement:8.5f}  setup {setup:.0f} s; "
              + "; ".join(f"{n} {t:.2f}" for n, t in top), flush=True)


if __name__ == "__main__":
    main()
