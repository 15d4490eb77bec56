"""The app's MCP server (`--mcp`) as an assistant meets it: a real app on loopback, driven by the `mcp` client library
over Gradio's streamable HTTP transport (and its SSE one)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import photo, running_app

pytest.importorskip("mcp", reason="the MCP client library comes with gradio[mcp]")

TOOL = "segment_image"


@pytest.fixture(scope="module")
def mcp_url(build_dir, tmp_path_factory):
    """An app with --mcp and small image limits (1 MB, 1 MP), so images over them are cheap to make."""
    log = tmp_path_factory.mktemp("mcp") / "app.log"
    with running_app(build_dir, log, "--mcp", "--image-mb", "1", "--image-mp", "1") as url:
        yield url + "gradio_api/mcp/"


def data_url(pixels: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def noise(height: int, width: int) -> np.ndarray:
    """Pixels PNG cannot compress: about 3 bytes each in the file."""
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


async def _session(url: str, work):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        return await work(session)


def tools(url: str):
    return asyncio.run(_session(url, lambda session: session.list_tools())).tools


def call(url: str, **arguments):
    """One tool call as most clients make it: no progress token."""
    return asyncio.run(_session(url, lambda session: session.call_tool(TOOL, arguments)))


def texts(result) -> list[str]:
    return [part.text for part in result.content if part.type == "text"]


def test_the_segment_tool_is_the_only_tool_and_states_its_limits(mcp_url):
    (tool,) = tools(mcp_url)  # the page's /segment, /full_overlay and /segment_video hold a session: not tools
    assert tool.name == TOOL
    for fact in ("ADE20K", "http(s) URL", "data: URL", "JPEG, PNG", "at most 1 MB and 1 megapixels",
                 "long side at most 1600 px", "classes: [{id, name, color, pixels, share}]"):
        assert fact in tool.description, fact
    schema = tool.inputSchema
    assert set(schema["properties"]) == {"image", "opacity"} and schema["required"] == ["image"]
    assert schema["properties"]["image"]["type"] == "string"
    assert "1 MB and 1 megapixels" in schema["properties"]["image"]["description"]
    assert schema["properties"]["opacity"]["type"] == "number" and schema["properties"]["opacity"]["default"] == 0.5
    assert schema["properties"]["opacity"]["description"]


def test_the_tool_segments_an_image_sent_inline(mcp_url):
    result = call(mcp_url, image=data_url(photo("coffee", (48, 64))), opacity=0.4)
    assert not result.isError, texts(result)
    (overlay,) = [part for part in result.content if part.type == "image"]
    with Image.open(io.BytesIO(base64.b64decode(overlay.data))) as picture:
        assert overlay.mimeType == "image/jpeg" and picture.size == (64, 48)
    legend = json.loads(texts(result)[-1])
    assert legend["image_size"] == [48, 64] and legend["random_weights"] is True
    assert legend["classes"] and all(isinstance(entry["name"], str) for entry in legend["classes"])
    assert sum(entry["pixels"] for entry in legend["classes"]) == 48 * 64
    assert abs(sum(entry["share"] for entry in legend["classes"]) - 1) < 1e-9
    shares = [entry["share"] for entry in legend["classes"]]
    assert shares == sorted(shares, reverse=True)


def test_each_call_stands_alone(mcp_url):
    """Two calls, two images: each answer is its own image's (no session carries one call's result to the next)."""
    first = json.loads(texts(call(mcp_url, image=data_url(photo("astronaut", (40, 30)))))[-1])
    second = json.loads(texts(call(mcp_url, image=data_url(photo("chelsea", (24, 56)), "JPEG")))[-1])
    assert (first["image_size"], second["image_size"]) == ([40, 30], [24, 56])


def test_images_over_the_limits_are_refused_with_the_reason(mcp_url):
    too_many_pixels = call(mcp_url, image=data_url(np.zeros((1000, 2000, 3), np.uint8)))  # 2 MP in a few kB
    assert too_many_pixels.isError and "limited to 1 MP" in texts(too_many_pixels)[0]
    too_many_bytes = call(mcp_url, image=data_url(noise(640, 640)))  # 1.2 MB, inside the request limit
    assert too_many_bytes.isError and "limited to 1 MB" in texts(too_many_bytes)[0]
    not_an_image = call(mcp_url, image="data:image/png;base64," + base64.b64encode(b"just some text").decode())
    assert not_an_image.isError and "not an image in an accepted format" in texts(not_an_image)[0]
    assert not call(mcp_url, image=data_url(photo("rocket", (32, 32)))).isError  # and the app keeps serving


def test_a_request_over_the_body_limit_gets_413_with_the_reason(mcp_url):
    """4 MB of base64 is more than the body limit (1 MB image inline, plus 1 MB): refused before Gradio reads it."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": TOOL, "arguments": {"image": data_url(noise(1000, 1000))}}}
    answer = httpx.post(mcp_url, json=message, headers={"accept": "application/json, text/event-stream"}, timeout=60)
    assert answer.status_code == 413 and "larger than this app accepts" in answer.json()["detail"]
    assert "http(s) URL" in answer.json()["detail"]
    assert not call(mcp_url, image=data_url(photo("rocket", (32, 32)))).isError


def test_the_sse_transport_serves_the_same_tool(mcp_url):
    from mcp import ClientSession
    from mcp.client.sse import sse_client

    async def listed():
        async with sse_client(mcp_url + "sse") as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return (await session.list_tools()).tools

    assert [tool.name for tool in asyncio.run(listed())] == [TOOL]


def test_without_mcp_no_endpoint_is_served(app_url):
    for path in ("gradio_api/mcp/", "gradio_api/mcp/schema", "gradio_api/mcp/sse"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(app_url + path, timeout=30)
        assert refused.value.code == 404, path
