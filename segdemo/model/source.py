"""Resolve `--model` (hub id, local directory, `random:` preset, or a prepared folder) into config, labels and weights.

Resolving imports neither transformers nor torch: labels, input size and the content key come from config.json (or
the preset's table) and the weights' hashes, so a start from cached artifacts never pays for those imports. The
transformers config object is made on first use (export, torch-cuda, the reference pipeline). A prepared folder
(`write_prepared`: the build folder `segdemo build`/`export` wrote, with PREPARED naming its model and fused graph)
brings the graph instead of weights, so the TensorRT path runs from it where torch is not installed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import atomic_write, memo_sha256, package_version, resolve_build_dir
from ..errors import ModelNotFoundError, SegdemoError
from . import checkpoints
from .labels import ADE20K_LABELS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "nvidia/segformer-b4-finetuned-ade-512-512"
DEFAULT_INPUT_SIZE = 512
RANDOM_SEED = 0

# SegFormer MiT encoder variants as published (Xie et al., 2021); decoder width 256 for b0/b1, 768 above.
_MIT = {
    "tiny": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], decoder_hidden_size=64),
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}
PRESETS = tuple(f"random:{name}" for name in _MIT)
PREPARED = "segdemo-model.json"  # in a build folder: the model it was prepared for and that model's fused graph
MODEL_HELP = f"Hugging Face id, local directory, or one of {', '.join(PRESETS)} (default {DEFAULT_MODEL})"


@dataclass
class ModelSource:
    """Everything needed to build the graph, known before any weights are loaded."""

    spec: str  # what the user passed
    name: str  # short, filesystem-safe name for artifacts
    config_dict: dict[str, Any]  # the SegformerConfig's fields (config.json, or the preset's)
    labels: list[str]
    input_size: tuple[int, int]  # (height, width) the network sees
    random_weights: bool
    content_hash: str  # changes whenever the weights or config change
    local_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    # Where the safetensors weights are read from when not local_dir: a pytorch_model.bin converted once.
    weights_dir: Path | None = None
    graph: Path | None = None  # a prepared folder's fused graph (made elsewhere): no weights here, nothing to export
    prepared_from: str | None = None  # a prepared folder's: the --model it was prepared from

    @cached_property
    def config(self) -> Any:
        """The transformers SegformerConfig (imports transformers on first use)."""
        from transformers import SegformerConfig

        return SegformerConfig.from_dict(self.config_dict)

    def load_model(self) -> torch.nn.Module:
        """Instantiate the transformers model in eval mode (weights from safetensors only, never pickle)."""
        if self.graph is not None:
            raise SegdemoError(f"'{self.spec}' is a prepared folder: it brings the fused graph of "
                               f"{self.prepared_from} but not its weights — pass --model {self.prepared_from} "
                               f"for what needs the network itself (torch-cuda, batching, the reference)")
        from transformers import SegformerForSemanticSegmentation

        if self.random_weights:
            import torch

            torch.manual_seed(RANDOM_SEED)
            return SegformerForSemanticSegmentation(self.config).eval()
        if self.weights_dir is not None:  # only model.safetensors lives there; the config is the model's own
            return SegformerForSemanticSegmentation.from_pretrained(
                str(self.weights_dir), config=self.config, use_safetensors=True, local_files_only=True
            ).eval()
        return SegformerForSemanticSegmentation.from_pretrained(
            str(self.local_dir), use_safetensors=True, local_files_only=True
        ).eval()


def preset_for(spec: str) -> str | None:
    """The `random:` preset with the architecture a hub id names (e.g. segformer-b4 → random:b4)."""
    match = re.search(r"segformer-(b[0-5])", spec.lower())
    return f"random:{match.group(1)}" if match else None


def resolve(spec: str, build_dir: Path | None = None) -> ModelSource:
    """Resolve a model spec; raises ModelNotFoundError with both remedies if it cannot be found.

    A model with only pytorch_model.bin is converted once to safetensors under `build_dir` (else $SEGDEMO_BUILD_DIR,
    else ./build) by segdemo.model.checkpoints; a checkpoint that would run code is refused with a SegdemoError."""
    if spec.startswith("random:"):
        return _random_source(spec)
    path = Path(spec).expanduser()
    if (path / PREPARED).is_file():
        return _prepared_source(spec, path)
    if path.is_dir():
        return _local_source(spec, path, build_dir)
    if _looks_like_path(spec):
        raise ModelNotFoundError(
            f"no local model directory '{spec}' — pass an existing directory in Hugging Face layout "
            f"or a preset such as --model random:b4"
        )
    return _local_source(spec, _download(spec), build_dir)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1 or os.sep == "\\" and "\\" in spec


def _random_source(spec: str) -> ModelSource:
    variant = spec.split(":", 1)[1]
    if variant not in _MIT:
        raise SegdemoError(f"unknown preset '{spec}' — choose one of {', '.join(PRESETS)}")
    labels = list(ADE20K_LABELS)
    config = {
        "model_type": "segformer",
        "num_labels": len(labels),
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        **_MIT[variant],
    }
    # Random init depends on the seed and on the torch/transformers init code, so all are in the hash (versions read
    # from package metadata: importing torch to ask would cost a second).
    identity = {
        "preset": variant,
        "seed": RANDOM_SEED,
        "config": config,
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
    }
    return ModelSource(
        spec=spec,
        name=f"random-{variant}",
        config_dict=config,
        labels=labels,
        input_size=(DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE),
        random_weights=True,
        content_hash=_sha256(json.dumps(identity, sort_keys=True).encode()),
        notes=[f"random weights ({spec}): the masks are meaningless; pass a trained model to get real results"],
    )


def write_prepared(source: ModelSource, graph: Path, build_dir: Path | None = None) -> Path:
    """Record in the build folder that it is prepared for `source`, whose fused graph is `graph` (in that folder), so
    `--model <folder>` runs it without the weights, torch or transformers."""
    folder = resolve_build_dir(build_dir)
    manifest = {
        "model": source.prepared_from or source.spec, "name": source.name, "content_hash": source.content_hash,
        "config": source.config_dict, "input_size": list(source.input_size), "random_weights": source.random_weights,
        "notes": source.notes, "graph": graph.resolve().relative_to(folder.resolve()).as_posix(),
        "prepared_with": {name: package_version(name) for name in ("segdemo", "torch", "transformers", "onnx")},
    }
    path = folder / PREPARED
    atomic_write(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def _prepared_source(spec: str, folder: Path) -> ModelSource:
    """The model a prepared folder names, its labels from the recorded config and its graph from the folder."""
    manifest_file = folder / PREPARED
    try:
        manifest = json.loads(manifest_file.read_text())
        config, graph = dict(manifest["config"]), folder / manifest["graph"]
        height, width = manifest["input_size"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"'{manifest_file}' is not a readable prepared-folder record ({exc!r}) — prepare "
                                 f"the folder again with `segdemo build --build-dir {folder}`") from None
    if not graph.is_file():
        raise ModelNotFoundError(f"'{spec}' is prepared for {manifest.get('model')} but its graph {graph} is missing "
                                 f"— copy the whole folder, onnx/ and engines/ included")
    return ModelSource(
        spec=spec,
        name=str(manifest.get("name", _slug(spec))),
        config_dict=config,
        labels=_labels(config, manifest_file),
        input_size=(int(height), int(width)),
        random_weights=bool(manifest.get("random_weights", False)),
        content_hash=str(manifest.get("content_hash", "")),
        notes=list(manifest.get("notes", [])),
        graph=graph,
        prepared_from=str(manifest.get("model", spec)),
    )


def _config_identity(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in ("transformers_version", "_name_or_path")}


def _download(repo_id: str) -> Path:
    """Fetch (or reuse from the local Hugging Face cache) the config and safetensors weights.

    A repository without safetensors (older ones carry only pytorch_model.bin) gets a second pass for the
    pickle checkpoint, which _local_source reads with the restricted unpickler and converts once."""
    folder = _snapshot(repo_id, ["*.json", "*.safetensors"])
    if not any(folder.glob("*.safetensors")) and not checkpoints.complete(folder):
        folder = _snapshot(repo_id, ["*.json", *checkpoints.HUB_PATTERNS])
    return folder


def _snapshot(repo_id: str, patterns: list[str]) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=5)
    except Exception as exc:  # noqa: BLE001 — hub errors come in many types; all mean "not available"
        log.debug("hub download of %s failed: %r", repo_id, exc)
        raise ModelNotFoundError(
            f"model '{repo_id}' could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}) and there is no local directory '{repo_id}' — "
            f"pass a local directory in Hugging Face layout or a preset such as "
            f"--model {preset_for(repo_id) or 'random:b4'}"
        ) from None
    return Path(folder)


def _local_source(spec: str, folder: Path, build_dir: Path | None = None) -> ModelSource:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"'{folder}' has no config.json — pass a directory in Hugging Face layout")
    weights = sorted(folder.glob("*.safetensors"))
    # safetensors preferred; else pytorch_model.bin
    pickled = None if weights else checkpoints.find(folder, build_dir)
    if not weights and pickled is None:
        other = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = f" (found pickle weights {other}, which segdemo never loads)" if other else ""
        raise ModelNotFoundError(
            f"'{spec}' has no .safetensors weights or pytorch_model.bin{hint} — convert the checkpoint to safetensors"
        )
    config = _read_config(config_file, spec)
    labels = _labels(config, config_file)
    digest = hashlib.sha256(json.dumps(_config_identity(config), sort_keys=True).encode())
    for file in weights:
        digest.update(f"{file.name}:{memo_sha256(file, build_dir)}".encode())
    weights_dir = None
    if pickled is not None:  # the .bin's own sha256 (not the converted file's), so the key is known before converting
        for name, sha in pickled.hashes:
            digest.update(f"pickle:{name}:{sha}".encode())
        weights_dir = checkpoints.converted(pickled, build_dir)
    return ModelSource(
        spec=spec,
        name=_slug(spec),
        config_dict=config,
        labels=labels,
        input_size=_input_size(folder),
        random_weights=False,
        content_hash=digest.hexdigest(),
        local_dir=folder,
        weights_dir=weights_dir,
    )


def _read_config(config_file: Path, spec: str) -> dict[str, Any]:
    """config.json as a dict, checked to be a SegFormer's (the transformers object is made only when needed)."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"'{config_file}' is not a readable config ({exc})") from None
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"'{config_file}' is not a SegFormer config (not a JSON object)")
    if config.get("model_type") != "segformer":
        raise ModelNotFoundError(f"'{spec}' is a '{config.get('model_type')}' model, not SegFormer")
    return config


def _labels(config: dict[str, Any], config_file: Path) -> list[str]:
    """Class names in id order from id2label (JSON keys are strings); num_labels if given, else id2label's size."""
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels", len(id2label)) or len(id2label))
    try:
        return [str(id2label[str(i)] if str(i) in id2label else id2label[i]).strip() for i in range(count)]
    except (KeyError, TypeError):
        raise ModelNotFoundError(f"'{config_file}' has no label for every class id 0..{count - 1} (id2label) — "
                                 f"fix the model's config.json") from None


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _input_size(folder: Path) -> tuple[int, int]:
    """The resize target of the model's image processor (512×512 for the ADE checkpoints)."""
    try:
        size = json.loads((folder / "preprocessor_config.json").read_text()).get("size", {})
    except (OSError, ValueError):
        return (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    if isinstance(size, dict) and "height" in size and "width" in size:
        return (int(size["height"]), int(size["width"]))
    return (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.strip("/").split("/")[-1] if "/" in spec else spec)[:64]
