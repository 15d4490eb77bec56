"""ASGI middleware that bounds request bodies before the app reads them: uploads to the larger of the per-kind limits,
every other request (an image inline as a data: URL in JSON, say) to the image limit."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_SUFFIX = "/upload"  # Gradio's upload route, whatever the root path


class BodyLimit:
    """Answers 413 with one sentence to a body over its limit: declared (Content-Length) or found while reading."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"].endswith(UPLOAD_SUFFIX) else self.limit
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, limit)
            return
        state = {"read": 0, "over": False, "started": False}

        async def counted() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:  # a chunked body that kept going: the app sees the client leave
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, counted, watched)
        if state["over"] and not state["started"]:
            await _refuse(send, limit)


def sentence(limit: int) -> str:
    return (f"the request is larger than this app accepts ({limit / 2**20:.0f} MB) — send a smaller image, as a "
            f"file upload (to the MCP tool: as an http(s) URL)")


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps({"detail": sentence(limit), "error": sentence(limit)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
