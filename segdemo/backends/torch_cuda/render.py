"""What a whole request makes on the GPU after the network — class maps, counts, display picture and overlay — and
their one download into pinned memory, timed by CUDA events."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, cast

import numpy as np

from ...image.classmap import nearest_indices
from ...image.visuals import blend_table, clamp_opacity, colour_table
from ...profiling.spans import INFERENCE, SpanRecorder
from ..contract import Rendered
from .ops import blend, class_counts, colourise, gather_nearest, resize_like_pil, rgb_to_i420

if TYPE_CHECKING:
    import torch

    from ..contract import RenderJob
    from .graphs import PostGraph

    # (job, upright image on the device, its host copy or None, class maps at the image's and the display size)
    Done = tuple[RenderJob, torch.Tensor, np.ndarray | None, tuple[torch.Tensor, torch.Tensor]]


class Pictures:
    """Class maps at any size, colours and overlays on the device; events 3–5 bracket the render and download."""

    def __init__(self, device: torch.device, stream: torch.cuda.Stream, events: list, colours: np.ndarray) -> None:
        import torch

        self.torch, self.cuda, self.stream, self.events = torch, device, stream, events
        self.lut = torch.from_numpy(colour_table(colours)).to(device)  # the session's palette (model.labels)
        self.blend_tables: dict[float, torch.Tensor] = {}

    def class_maps(self, entry: PostGraph, out_size: tuple[int, int], size: tuple[int, int],
                   display: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay `entry` (its grid uploaded): the class map at the image's size and at `display`."""
        entry.graph.replay()
        computed = entry.classes[:out_size[0], :out_size[1]]
        # Copies: the next replay overwrites the graph's output. One for both where the display is the image's size
        # (a video's frames): nothing writes to either.
        classes = self.nearest(computed, size)
        return classes, classes if display == size else self.nearest(computed, display)

    def render_and_download(self, done: list[Done]) -> list[Rendered]:
        """Counts, display picture and overlay of each request on the GPU, then one download of all and one wait
        (of an encoder_only job's, the counts and its overlay for the encoder alone)."""
        torch = self.torch
        self.events[3].record(self.stream)
        parts, counts, i420 = [], [], []
        for job, image, host_image, (classes, shown_map) in done:
            counts.append(class_counts(classes))
            same = job.display == tuple(image.shape[:2])
            shown = image if same else resize_like_pil(image, job.display)
            blended = blend(shown, colourise(shown_map, self.lut), self.blend_table(clamp_opacity(job.opacity)))
            planes = _i420(blended) if job.i420 or job.encoder_only else None
            if job.encoder_only:
                parts.append([] if planes is not None else [blended])
            else:
                parts.append([classes, shown_map, blended] + ([] if same and host_image is not None else [shown]))
            i420.append(planes)
        self.events[4].record(self.stream)
        # The counts as bytes at the block's start (aligned for int64 again on the host), then every picture.
        host = download([torch.stack(counts).view(torch.uint8)] + [part for image in parts for part in image] +
                        [planes for planes in i420 if planes is not None])
        self.events[5].record(self.stream)
        self.events[5].synchronize()
        host_counts, arrays = host[0].numpy().view(np.int64), iter(host[1:])
        rendered = []
        for index, ((job, _, host_image, _), downloaded) in enumerate(zip(done, parts, strict=True)):
            arrays_of_job = [next(arrays).numpy() for _ in downloaded]
            opacity = clamp_opacity(job.opacity)
            if job.encoder_only:  # the RGB overlay only where no I420 is made (see parts above)
                rgb = arrays_of_job[0] if arrays_of_job else None
                rendered.append(Rendered(None, host_counts[index], None, None, rgb, opacity))
                continue
            class_map, display_map, overlay, *display = arrays_of_job
            # no display picture downloaded: the host's image is the one shown (see parts above)
            display_image = display[0] if display else cast(np.ndarray, host_image)
            rendered.append(Rendered(class_map, host_counts[index], display_image, display_map, overlay, opacity))
        for index, planes in enumerate(i420):  # downloaded after every picture
            if planes is not None:
                rendered[index] = replace(rendered[index], overlay_i420=next(arrays).numpy())
        return rendered

    def nearest(self, class_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """classmap.restore_size on the device (always a new tensor)."""
        if tuple(class_map.shape) == size:
            return class_map.clone(memory_format=self.torch.contiguous_format)
        rows = _device_nearest(class_map.shape[0], size[0], self.cuda)
        columns = _device_nearest(class_map.shape[1], size[1], self.cuda)
        return gather_nearest(class_map, rows, columns)

    def blend_table(self, opacity: float) -> torch.Tensor:
        if opacity not in self.blend_tables:
            self.blend_tables[opacity] = self.torch.from_numpy(blend_table(opacity)).to(self.cuda)
        return self.blend_tables[opacity]

    def close(self) -> None:
        self.blend_tables.clear()
        self.lut = None  # type: ignore[assignment]  # closed: nothing uses it after close


def _i420(overlay: torch.Tensor) -> torch.Tensor | None:
    """The overlay's even-sided crop as I420 (what an H.264 encoder takes), or None where the height made even is
    no multiple of 4 (PyAV's yuv420p arrays need one): the encoder then converts the RGB overlay itself."""
    height, width = overlay.shape[0] & ~1, overlay.shape[1] & ~1
    if height % 4 or width < 2:
        return None
    return rgb_to_i420(overlay[:height, :width])


def download(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Asynchronous copies into one pinned block; the arrays handed out keep it alive, so no host copy."""
    import torch

    sizes = [part.numel() for part in parts]
    block = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
    views, offset = [], 0
    for part, size in zip(parts, sizes, strict=True):
        view = block[offset:offset + size].view(part.shape)
        view.copy_(part, non_blocking=True)
        views.append(view)
        offset += size
    return views


def device_spans(spans: SpanRecorder, events: list, host_start: int, names: tuple[str, ...], backend: str) -> None:
    """GPU times between consecutive events, placed on the host clock from when the first one was queued."""
    for begin, name in enumerate(names):
        start_ns = host_start + int(events[0].elapsed_time(events[begin]) * 1e6)
        duration_ns = int(events[begin].elapsed_time(events[begin + 1]) * 1e6)
        spans.add_device(f"gpu {name}", INFERENCE, start_ns, duration_ns, backend=backend)


@lru_cache(maxsize=64)
def _device_nearest(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """classmap.nearest_indices on `device`, uploaded once per size pair."""
    import torch

    return torch.from_numpy(nearest_indices(src, dst)).to(device)
