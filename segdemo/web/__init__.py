"""The Gradio app's library (app.py only wires it): options and limits (`config`), the `Demo` it serves (`demo`:
background start-up, request handling), one answer's files (`response`), the Segment tab's picture (`view`), the
example photos (`examples`), the page's theme and accessibility fixes (`page`), the components (`components`), the
Engine tab (`engine_page`), Spaces hosting (`hosting`), visitors' folders (`visitors`), what is admitted before
decoding (`admission`, `bodylimit`), and the MCP tool of `--mcp` (`mcp_tool`).
"""
