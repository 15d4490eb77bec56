"""Diagnostics for the torch-cuda request path on a CUDA machine (not a test; numbers for the closing notes).

  python scripts/gpu_explore.py info                 versions, attention implementation, transformers source
  python scripts/gpu_explore.py net ATTN MODE        replay ms + argmax agreement of the b4 network graph
                                                     (ATTN eager|sdpa, MODE eager|default|max-autotune-no-cudagraphs)
  python scripts/gpu_explore.py decode               PIL vs nvJPEG (torchvision) decode time and pixel differences
"""

from __future__ import annotations

import inspect
import io
import sys
import time

import numpy as np
import torch
from PIL import Image


def info() -> None:
    import transformers
    from transformers.models.segformer import modeling_segformer as m

    from segdemo.model_source import resolve

    print("torch", torch.__version__, "transformers", transformers.__version__)
    try:
        import torchvision

        print("torchvision", torchvision.__version__)
    except ImportError as exc:
        print("torchvision missing", exc)
    model = resolve("random:b4").load_model()
    print("attn implementation", getattr(model.config, "_attn_implementation", None))
    print("supports sdpa", getattr(m.SegformerPreTrainedModel, "_supports_sdpa", None))
    for name in ("SegformerEfficientSelfAttention", "SegformerAttention"):
        cls = getattr(m, name, None)
        if cls is not None:
            print(f"--- {name}.forward")
            print(inspect.getsource(cls.forward)[:2500])


def photo(size: tuple[int, int], name: str = "astronaut") -> np.ndarray:
    import skimage.data

    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.Resampling.BICUBIC))


def net(attn: str, mode: str) -> None:
    from segdemo.export import normalisation
    from segdemo.model_source import resolve
    from segdemo.network import folded_logits

    torch.backends.cudnn.benchmark = True
    model = resolve("random:b4").load_model()
    model.config._attn_implementation = attn
    for module in model.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation = attn
    scale, shift = (torch.from_numpy(v).view(1, 3, 1, 1).cuda() for v in normalisation())
    pixels = torch.from_numpy(photo((512, 512))).cuda()[None]
    reference_net = folded_logits(model).cuda()
    with torch.inference_mode():
        x32 = pixels.permute(0, 3, 1, 2).float() * scale + shift
        reference = reference_net(x32).argmax(1)
    net16 = folded_logits(model).cuda().half()
    for module in net16.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    start = time.perf_counter()
    run = net16 if mode == "eager" else torch.compile(net16, dynamic=False, mode=None if mode == "default" else mode)

    def forward() -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() * scale + shift
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            return run(x).float()

    stream = torch.cuda.Stream()
    with torch.inference_mode():
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                forward()
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = forward()
        torch.cuda.synchronize()
        setup = time.perf_counter() - start
        times = []
        for _ in range(200):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        agreement = float((out.argmax(1) == reference).float().mean())
    print(f"net attn={attn} mode={mode}: replay p50 {np.median(times):.3f} ms (min {min(times):.3f}), "
          f"agreement with fp32 eager {agreement:.5f}, setup {setup:.0f} s", flush=True)


def decode() -> None:
    import torchvision
    from torchvision.io import decode_jpeg

    for size in ((512, 512), (1024, 768)):
        for name in ("astronaut", "coffee"):
            buffer = io.BytesIO()
            Image.fromarray(photo(size, name)).save(buffer, format="JPEG", quality=90)
            data = buffer.getvalue()
            pil_times, gpu_times = [], []
            for _ in range(30):
                t = time.perf_counter()
                with Image.open(io.BytesIO(data)) as img:
                    host = np.asarray(img.convert("RGB"))
                pil_times.append((time.perf_counter() - t) * 1e3)
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            for _ in range(30):
                t = time.perf_counter()
                dev = decode_jpeg(raw, device="cuda")
                torch.cuda.synchronize()
                gpu_times.append((time.perf_counter() - t) * 1e3)
            gpu = dev.permute(1, 2, 0).cpu().numpy()
            diff = np.abs(gpu.astype(int) - host.astype(int))
            print(f"decode {size} {name} {len(data)} B: PIL {np.median(pil_times):.2f} ms, nvJPEG "
                  f"{np.median(gpu_times):.2f} ms (torchvision {torchvision.__version__}); |diff| max {diff.max()} "
                  f"mean {diff.mean():.3f}, share >1: {(diff > 1).mean():.4f}", flush=True)
    # progressive and greyscale JPEGs: does nvJPEG take them?
    colour = Image.fromarray(photo((512, 512)))
    for kind, img in (("progressive", colour), ("grey", colour.convert("L"))):
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=90, progressive=kind == "progressive")
        try:
            out = decode_jpeg(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8), device="cuda",
                              mode=torchvision.io.ImageReadMode.RGB)
            print(f"decode {kind}: ok {tuple(out.shape)}")
        except Exception as exc:  # noqa: BLE001
            print(f"decode {kind}: failed {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    {"info": info, "net": net, "decode": decode}[sys.argv[1]](*sys.argv[2:])
