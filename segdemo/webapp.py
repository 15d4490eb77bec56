"""What the Gradio app calls: session start-up in the background, request handling, plain return values."""

from __future__ import annotations

import html
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelNotFoundError, SegdemoError
from .model_source import DEFAULT_MODEL, preset_for
from .pipeline import Segmentation, Session
from .visuals import class_map_png

log = logging.getLogger("segdemo.app")


@dataclass
class AppConfig:
    """Options of `python app.py`, each also settable through a SEGDEMO_* environment variable."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    precision: str = "fp32"
    build_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AppConfig:
        env = os.environ if environ is None else environ
        return cls(
            model=env.get("SEGDEMO_MODEL", cls.model),
            backend=env.get("SEGDEMO_BACKEND", cls.backend),
            precision=env.get("SEGDEMO_PRECISION", cls.precision),
            build_dir=env.get("SEGDEMO_BUILD_DIR") or None,
            host=env.get("SEGDEMO_HOST", env.get("GRADIO_SERVER_NAME", cls.host)),
            port=int(env.get("SEGDEMO_PORT", env.get("GRADIO_SERVER_PORT", cls.port))),
            share=env.get("SEGDEMO_SHARE", "").lower() in ("1", "true", "yes"),
        )


@dataclass
class Demo:
    """The app's one shared session, loaded in the background so the page is up at once."""

    config: AppConfig
    banner: str = ""
    error: str | None = None
    session: Session | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Demo:
        threading.Thread(target=self._load, name="session-load", daemon=True).start()
        return self

    def _load(self) -> None:
        cfg = self.config
        build = Path(cfg.build_dir) if cfg.build_dir else None
        try:
            try:
                self.session = Session(cfg.model, cfg.backend, cfg.precision, build)
            except ModelNotFoundError as exc:
                fallback = preset_for(cfg.model) if cfg.model == DEFAULT_MODEL else None
                if fallback is None:
                    raise
                # The README's plain `python app.py` must serve a working demo even offline.
                log.warning("%s; serving %s instead", exc, fallback)
                self.banner = (
                    f"⚠️ **Random weights.** The weights of `{cfg.model}` could not be fetched, so this demo runs "
                    f"the same architecture with random weights (`{fallback}`): the masks are meaningless. "
                    f"Fix: give this machine access to the Hugging Face hub, or start it with "
                    f"`python app.py --model /path/to/local/model`."
                )
                self.session = Session(fallback, cfg.backend, cfg.precision, build)
            if self.session.random_weights and not self.banner:
                self.banner = f"⚠️ **Random weights** (`{cfg.model}`): the masks are meaningless — a demo of the " \
                              f"pipeline, not of the model. Start with a trained model to get real results."
        except SegdemoError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 — the page must say why instead of hanging
            log.exception("session load failed")
            self.error = f"the model could not be loaded: {exc}"
        finally:
            self._ready.set()

    def wait(self, timeout: float | None = None) -> Session:
        """The loaded session; raises SegdemoError if loading failed or is still running after timeout."""
        if not self._ready.wait(timeout):
            raise SegdemoError("the model is still loading (exporting and building the engine) — try again shortly")
        if self.session is None:
            raise SegdemoError(self.error or "the model failed to load")
        return self.session

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def segment(self, image: Any) -> Segmentation:
        """Segment one upload; raises SegdemoError with a user-facing sentence on bad input."""
        if image is None:
            raise SegdemoError("no image was given — upload, paste or pick an example first")
        return self.wait(timeout=600).segment(image)


def status_line(result: Segmentation) -> str:
    """Backend, precision, size, time — and the random-weights notice where it applies."""
    info = result.info
    height, width = info["image_size"]
    line = (f"**{info['backend']}** ({info['device']}, {info['precision']}) · {width}×{height} px · "
            f"{info['infer_ms']:.0f} ms · {len(result.legend)} classes")
    if info.get("random_weights"):
        line += " · ⚠️ random weights: masks are meaningless"
    return line


def legend_html(result: Segmentation, limit: int = 40) -> str:
    """Swatch, name and share of each class present, largest first."""
    rows = []
    for entry in result.legend[:limit]:
        rows.append(
            f"<tr><td><span style='display:inline-block;width:1.1em;height:1.1em;border-radius:3px;"
            f"background:{entry.color};vertical-align:middle'></span></td>"
            f"<td>{html.escape(entry.name)}</td><td style='text-align:right'>{entry.share * 100:.1f} %</td></tr>"
        )
    more = len(result.legend) - limit
    tail = f"<tr><td></td><td colspan=2><i>… and {more} more under 0.1 %</i></td></tr>" if more > 0 else ""
    return f"<table class='segdemo-legend'><thead><tr><th></th><th>class</th><th>share</th></tr></thead>" \
           f"<tbody>{''.join(rows)}{tail}</tbody></table>"


def download_files(result: Segmentation) -> tuple[str, str]:
    """classes.png (palette PNG of ids) and legend.json in a fresh temp folder, for the download buttons."""
    folder = Path(tempfile.mkdtemp(prefix="segdemo-"))
    classes = folder / "classes.png"
    classes.write_bytes(class_map_png(result.class_map, result.colours))
    legend = folder / "legend.json"
    legend.write_text(json.dumps(result.legend_json(), indent=2))
    return str(classes), str(legend)


def annotations(result: Segmentation, limit: int = 20) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """(image, [(mask, label)]) for gr.AnnotatedImage: hovering a class highlights it."""
    return result.image, [((result.class_map == e.id).astype(np.float32), e.name) for e in result.legend[:limit]]
