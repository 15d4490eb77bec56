"""Plotly figures of the spans: a timeline (one lane per category and nesting level) and a summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .spans import CATEGORIES, DEVICE_THREAD, LAYER, Span

if TYPE_CHECKING:
    import plotly.graph_objects as go

COLOURS = {"load": "#4C78A8", "inference": "#F58518", "layer": "#54A24B", "device": "#B279A2"}
GAP_MS = 50.0  # gap drawn between the session load and the request when the real gap is elided
LABEL_MIN_SHARE = 0.05  # bars narrower than this share of the axis carry no label (hover still names them)


def _depths(spans: list[Span]) -> list[int]:
    """Nesting level of each span among the spans of its own thread and category."""
    depths: list[int] = []
    stacks: dict[tuple[str, str], list[int]] = {}
    for s in spans:
        stack = stacks.setdefault((s.thread, s.category), [])
        while stack and s.start_ns >= stack[-1]:
            stack.pop()
        depths.append(len(stack))
        stack.append(s.start_ns + s.duration_ns)
    return depths


def _lane(s: Span, depth: int) -> str:
    if s.thread == DEVICE_THREAD:
        return f"{s.category} · GPU"
    if s.category == LAYER:
        return "layers"
    return s.category + (" ›" * depth)


def _hover(s: Span, start_ms: float) -> str:
    attrs = "".join(f"<br>{k}: {v}" for k, v in s.attrs.items() if k != "clock")
    return f"<b>{s.name}</b><br>{s.duration_ms:.2f} ms ({s.attrs.get('clock', 'host')})" \
           f"<br>starts at {start_ms:.1f} ms<br>thread: {s.thread}{attrs}"


def timeline_figure(load: list[Span], request: list[Span] | None = None) -> go.Figure:
    """Load spans of the session and the spans of the last request on one axis (ms)."""
    import plotly.graph_objects as go

    load = sorted(load, key=lambda s: (s.start_ns, -s.duration_ns))
    request = sorted(request or [], key=lambda s: (s.start_ns, -s.duration_ns))
    origin = min((s.start_ns for s in load + request), default=0)
    shift_ns, note = 0, ""
    if load and request:
        load_end = max(s.start_ns + s.duration_ns for s in load)
        req_start = min(s.start_ns for s in request)
        if req_start - load_end > GAP_MS * 1e6:
            # The request may come minutes after start-up; draw it right after the load instead.
            shift_ns = req_start - load_end - int(GAP_MS * 1e6)
            note = f"request started {(req_start - load_end) / 1e9:.1f} s after the load ended (gap not to scale)"
    rows: dict[str, list[Any]] = {}
    spans = [(s, 0) for s in load] + [(s, shift_ns) for s in request]
    for (s, shift), depth in zip(spans, _depths([s for s, _ in spans]), strict=True):
        colour_key = "device" if s.thread == DEVICE_THREAD else s.category
        start_ms = (s.start_ns - shift - origin) / 1e6
        row = rows.setdefault(colour_key, [[], [], [], [], []])
        row[0].append(_lane(s, depth))
        row[1].append(start_ms)
        row[2].append(max(s.duration_ms, 0.001))
        row[3].append(s.name)
        row[4].append(_hover(s, start_ms))
    fig = go.Figure()
    extent = max((b + w for r in rows.values() for b, w in zip(r[1], r[2], strict=True)), default=1.0)
    for key, (lanes, starts, widths, names, hovers) in rows.items():
        # Labels are decided here, not by Plotly's uniformtext, which hides every label of a plot
        # drawn while its tab is hidden (zero width) and never brings them back.
        labels = [n if w >= LABEL_MIN_SHARE * extent else "" for n, w in zip(names, widths, strict=True)]
        fig.add_trace(go.Bar(
            y=lanes, x=widths, base=starts, orientation="h", name=key, text=labels, textangle=0,
            textposition="inside", insidetextanchor="middle", hovertext=hovers, hoverinfo="text",
            marker={"color": COLOURS.get(key, "#888"), "line": {"color": "white", "width": 0.5}},
        ))
    lanes_order = _lane_order([lane for r in rows.values() for lane in r[0]])
    fig.update_layout(
        barmode="overlay", height=max(320, 90 + 44 * len(lanes_order)),
        margin={"l": 10, "r": 10, "t": 40 if note else 10, "b": 40},
        legend={"orientation": "h", "y": -0.25}, xaxis_title="ms (drag to zoom into the request)", bargap=0.25,
        plot_bgcolor="white",
    )
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(lanes_order)))
    fig.update_xaxes(gridcolor="#eee", zeroline=False)
    if note:
        fig.add_annotation(text=note, xref="paper", yref="paper", x=1, y=1.0, yanchor="bottom", showarrow=False,
                           xanchor="right", font={"size": 11, "color": "#666"})
    return fig


def _lane_order(lanes: list[str]) -> list[str]:
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    unique = list(dict.fromkeys(lanes))
    return sorted(unique, key=lambda lane: (rank.get(lane.split(" ")[0], 1 if lane == "layers" else 9), lane))


def summary_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """p50 bars with p95 whiskers per span name over the recent requests."""
    import plotly.graph_objects as go

    rows = [r for r in rows if r["category"] != "load"]
    names = [f"{r['span']} ({r['clock']})" if r["clock"] != "host" else r["span"] for r in rows]
    fig = go.Figure(go.Bar(
        x=[r["p50_ms"] for r in rows], y=names, orientation="h", name="p50",
        error_x={"type": "data", "symmetric": False, "array": [r["p95_ms"] - r["p50_ms"] for r in rows]},
        marker={"color": [COLOURS["device"] if r["clock"] == "device" else COLOURS["inference"] for r in rows]},
        hovertext=[f"{n}: p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms over {r['count']} requests"
                   for n, r in zip(names, rows, strict=True)], hoverinfo="text",
    ))
    fig.update_layout(height=max(240, 80 + 28 * len(rows)), margin={"l": 10, "r": 10, "t": 30, "b": 40},
                      xaxis_title="ms (bar p50, whisker p95)", plot_bgcolor="white")
    fig.update_yaxes(autorange="reversed")
    return fig


def live_figure(names: list[str], frames: list[dict[str, float]], fps: float = 0.0) -> go.Figure:
    """Where each recent live frame's time went: one stacked bar per frame, one colour per span (ms)."""
    import plotly.graph_objects as go

    x = list(range(-len(frames) + 1, 1))
    fig = go.Figure()
    for name in names:
        fig.add_trace(go.Bar(x=x, y=[f.get(name, 0.0) for f in frames], name=name,
                             hovertemplate=f"{name}: %{{y:.2f}} ms<extra>frame %{{x}}</extra>"))
    title = f"last {len(frames)} live frames" + (f" · {fps:.1f} fps now" if fps else "")
    fig.update_layout(barmode="stack", bargap=0.1, height=320, margin={"l": 10, "r": 10, "t": 40, "b": 40},
                      title={"text": title, "font": {"size": 13}}, xaxis_title="frame (0 = newest)",
                      yaxis_title="ms", plot_bgcolor="white", legend={"orientation": "h", "y": -0.3})
    fig.update_yaxes(gridcolor="#eee")
    return fig


def share_figure(times: list[float], shares: list[list[float]], names: list[str], colours: list[str]) -> go.Figure:
    """Each class's share of the frame over time (one line per class; shares in %)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, (name, colour) in enumerate(zip(names, colours, strict=True)):
        fig.add_trace(go.Scatter(x=times, y=[row[k] * 100 for row in shares], name=name, mode="lines",
                                 line={"color": colour, "width": 2},
                                 hovertemplate=f"{name}: %{{y:.1f}} %<extra>%{{x:.2f}} s</extra>"))
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 30, "b": 40}, xaxis_title="s",
                      yaxis_title="share of the frame (%)", plot_bgcolor="white", hovermode="x unified")
    fig.update_yaxes(gridcolor="#eee", rangemode="tozero")
    return fig
