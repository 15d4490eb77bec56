"""The app's MCP tool (`--mcp`, docs/mcp.md): one stateless call, an image in and the overlay and legend out,
described with this app's limits — and, at start-up, the only tool Gradio's MCP server offers."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from ..errors import SegdemoError
from ..image.decode import FORMAT_NAMES
from ..optional import require
from .components import ImageUpload
from .config import AppConfig
from .demo import Demo
from .hosting import gpu_function

log = logging.getLogger("segdemo.app")

TOOL = "segment_image"  # the endpoint's api_name and the tool's name (Gradio names a tool after its function)
# Gradio warns that a tool's gr.State never changes between calls; the page's endpoints that hold one are not tools.
STATE_WARNING = "This MCP server includes a tool that has a gr.State input"


def describe(config: AppConfig) -> str:
    """What an assistant reads about the tool: what it does, what it takes within which limits, what it returns."""
    limits = config.image_limits
    return (f"Semantic segmentation of one image into the 150 ADE20K classes (SegFormer). Takes the image as an "
            f"http(s) URL or a data: URL (base64): {FORMAT_NAMES}, at most {limits.bytes / 2**20:.0f} MB and "
            f"{limits.pixels / 1e6:.0f} megapixels (larger ones are refused with the reason); and the overlay's "
            f"opacity (0..1, default 0.5). Returns the overlay (JPEG, long side at most {config.display_side} px) and "
            f"the legend as JSON: {{model, backend, precision, random_weights, image_size [height, width], "
            f"display_size, infer_ms, classes: [{{id, name, color, pixels, share}}] largest share first}}. "
            f"Every call stands alone: nothing is kept for a later call.")


def parameters(config: AppConfig) -> str:
    """The tool function's docstring: Gradio reads each parameter's description from its Args: lines."""
    limits = config.image_limits
    return (f"Segment one image.\n\nArgs:\n"
            f"    image: the image as an http(s) URL or a data: URL (base64); {FORMAT_NAMES}, at most "
            f"{limits.bytes / 2**20:.0f} MB and {limits.pixels / 1e6:.0f} megapixels\n"
            f"    opacity: the overlay's opacity, 0 (the image alone) to 1 (the class colours alone)\n")


def add_tool(blocks: gr.Blocks, served: Demo) -> gr.Blocks:
    """`blocks` with the tool's endpoint when --mcp is on (hidden components: kept out of the page, and without --mcp
    out of the API)."""
    if not served.config.mcp:
        return blocks
    require("mcp", "gradio[mcp]", "the MCP server of --mcp")  # Gradio would only print its error and serve without
    warnings.filterwarnings("ignore", message=STATE_WARNING)
    with blocks:
        image = ImageUpload(type="filepath", label="Image", visible=False)
        image.max_bytes = served.config.image_limits.bytes  # an inline data: URL is held to the limit too
        opacity = gr.Slider(0, 1, value=0.5, label="Overlay opacity", visible=False)
        overlay = gr.Image(type="filepath", label="Overlay", visible=False)
        legend = gr.Textbox(label="Legend (JSON)", visible=False)

        def segment_image(image: Any, opacity: float, request: gr.Request) -> tuple[str, str]:
            try:  # a visitor of its own: its folder expires as any visitor's, and no other call can reach it
                response = served.answer(image, opacity, False, served.visitor(None, request))
            except SegdemoError as exc:
                raise gr.Error(str(exc)) from None
            return str(response.overlay), json.dumps(response.legend_json())

        segment_image.__doc__ = parameters(served.config)
        # Outside the queue, Gradio's MCP server calls it in-process with the caller's own request and a fresh state
        # (queued endpoints it calls through one loopback client, whose one session every MCP client would share), and
        # every client gets both outputs (through the queue only those that send a progress token do).
        gr.on([], gpu_function(segment_image), [image, opacity], [overlay, legend], api_name=TOOL,
              api_description=describe(served.config), queue=False)
    return blocks


def tools_only(blocks: gr.Blocks) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan for launch(): before the first request, Gradio's MCP server keeps the tool as its only one."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        server = blocks.mcp_server_obj
        if server is not None:
            # Gradio offers every public endpoint as a tool (no option keeps one out of MCP alone); the page's own
            # (/segment, /full_overlay, /segment_video) hold a gr.State all MCP clients would share, and answer their
            # several outputs only to clients that send a progress token.
            tools = server.tool_to_endpoint
            server.tool_to_endpoint = {name: endpoint for name, endpoint in tools.items() if endpoint == f"/{TOOL}"}
            if not server.tool_to_endpoint:
                log.warning("the MCP server has no %s tool (its tools: %s)", TOOL, ", ".join(tools) or "none")
        yield

    return lifespan
