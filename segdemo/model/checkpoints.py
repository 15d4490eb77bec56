"""Pickle checkpoints (pytorch_model.bin): read once with PyTorch's restricted unpickler, kept as safetensors.

Only `pytorch_model.bin` and its shards (`pytorch_model.bin.index.json` + `pytorch_model-*.bin`) are read, with
`torch.load(..., weights_only=True)`, which refuses anything that would run code (any global outside
PyTorch's tensor-rebuilding allowlist). The tensors are written once to
`<build_dir>/converted/<sha256>/model.safetensors` (the build folder, never the model's own directory or the Hugging
Face cache); later loads read that file.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write, digest, lock_for, memo_sha256, resolve_build_dir
from ..errors import SegdemoError

log = logging.getLogger(__name__)

PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
HUB_PATTERNS = [PICKLE_WEIGHTS, "pytorch_model-*.bin"]  # what to fetch from a repository without safetensors
CONVERTED = "model.safetensors"
_SCAN_LIMIT = 64 << 20  # bytes of pickle stream scanned to name what a refused checkpoint would have called


@dataclass(frozen=True)
class PickleCheckpoint:
    """A pytorch_model.bin (or its shards) found in a model folder, with the sha256 of each file."""

    files: tuple[Path, ...]  # the .bin files, in the order their tensors are merged
    hashes: tuple[tuple[str, str], ...]  # (file name, sha256) of every file that defines the weights, index included
    key: str  # names the converted folder: the .bin's sha256, or a digest of the index and shards


def complete(folder: Path) -> bool:
    """Whether `folder` holds a whole pickle checkpoint (cheap: no hashing)."""
    if (folder / PICKLE_WEIGHTS).is_file():
        return True
    try:
        return (folder / PICKLE_INDEX).is_file() and all((folder / n).is_file() for n in _shard_names(folder))
    except SegdemoError:
        return False


def find(folder: Path, build_dir: Path | None = None) -> PickleCheckpoint | None:
    """The folder's pytorch_model.bin (preferred) or sharded pytorch_model-*.bin, hashed (hashes remembered under
    `build_dir`); None if it has neither."""
    single = folder / PICKLE_WEIGHTS
    if single.is_file():
        sha = memo_sha256(single, build_dir)
        return PickleCheckpoint((single,), ((single.name, sha),), sha)
    index = folder / PICKLE_INDEX
    if not index.is_file():
        return None
    shards = []
    for name in _shard_names(folder):
        if not (folder / name).is_file():
            raise SegdemoError(f"'{index}' lists the shard '{name}', which is missing from '{folder}' — "
                               f"download the model again")
        shards.append(folder / name)
    hashes = ((index.name, memo_sha256(index, build_dir)),
              *((shard.name, memo_sha256(shard, build_dir)) for shard in shards))
    return PickleCheckpoint(tuple(shards), hashes, digest(*(f"{name}:{sha}" for name, sha in hashes)))


def _shard_names(folder: Path) -> list[str]:
    index = folder / PICKLE_INDEX
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SegdemoError(f"'{index}' is not a readable shard index ({type(exc).__name__}) — "
                           f"download the model again") from None
    for name in names:  # plain file names beside the index only: no paths out of the folder, no other formats
        if not isinstance(name, str) or Path(name).name != name or not re.fullmatch(r"pytorch_model[\w.-]*\.bin", name):
            raise SegdemoError(f"'{index}' lists '{name}', which is not a pytorch_model shard in the same folder")
    if not names:
        raise SegdemoError(f"'{index}' lists no shards — download the model again")
    return names


def converted(checkpoint: PickleCheckpoint, build_dir: Path | None = None) -> Path:
    """The folder holding the checkpoint as model.safetensors, converting it on first use (atomically, locked)."""
    target = resolve_build_dir(build_dir) / "converted" / checkpoint.key / CONVERTED
    if target.is_file():
        return target.parent
    with lock_for(target):
        if target.is_file():  # another process converted it while we waited
            return target.parent
        tensors: dict[str, Any] = {}
        for file in checkpoint.files:
            tensors.update(load_state_dict(file))
        from safetensors.torch import save

        atomic_write(target, save(_storable(tensors), metadata={"format": "pt"}))
    source = checkpoint.files[0].name if len(checkpoint.files) == 1 else f"{len(checkpoint.files)} pytorch_model shards"
    log.info("converted %s to safetensors once: %s → %s (%d tensors, %.1f MB); later loads read the converted file",
             source, checkpoint.files[0].parent, target, len(tensors), target.stat().st_size / 1e6)
    return target.parent


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of one pickle checkpoint via the restricted unpickler; SegdemoError (one sentence) if it refuses."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says what matters
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        calls = re.findall(r"GLOBAL ([\w.]+)", str(exc)) or [g for g in pickle_globals(path) if not _harmless(g)]
        if calls:
            raise SegdemoError(
                f"refused to load '{path}' because unpickling it would run code "
                f"({', '.join(dict.fromkeys(calls[:3]))}); PyTorch's restricted unpickler stopped before anything "
                f"ran — ask the model's publisher for safetensors weights (model.safetensors), or convert the "
                f"checkpoint to safetensors yourself only if you trust where it came from"
            ) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # noqa: BLE001 — truncated zip, EOF, bad magic…: all mean "not a readable checkpoint"
        raise _unreadable(path, exc) from None
    if not (isinstance(state, dict) and state and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise SegdemoError(f"'{path}' holds a {type(state).__name__}, not a state dict of named tensors — "
                           f"provide the model's weights as model.safetensors")
    return state


def _unreadable(path: Path, exc: BaseException) -> SegdemoError:
    return SegdemoError(f"'{path}' is not a readable PyTorch checkpoint ({_reason(exc)}): it is truncated, corrupt "
                        f"or in an unsupported format — download it again or provide model.safetensors")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip().startswith(("Unsupported", "Trying to load")):
            return line.strip()
    if not text:
        return "unexpected end of file" if isinstance(exc, EOFError) else type(exc).__name__
    first = text.splitlines()[0].split(". ")[0]
    return f"{type(exc).__name__}: {first[:160]}"


def pickle_globals(path: Path) -> list[str]:
    """The globals (module.name) a pickle checkpoint imports, found by parsing its opcodes; nothing is executed."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((i for i in archive.infolist() if i.filename.endswith("data.pkl")), None)
                if member is None or member.file_size > _SCAN_LIMIT:
                    return []
                data = archive.read(member)
        else:
            with path.open("rb") as fh:
                data = fh.read(_SCAN_LIMIT)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    found: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    try:
        for _ in range(5):  # the legacy format is several pickles in a row (magic, version, sys info, object)
            if stream.tell() >= len(data):
                break
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 — a garbled or truncated stream: keep what was found before it
        pass
    return list(dict.fromkeys(found))


def _harmless(name: str) -> bool:
    """Globals a plain tensor checkpoint uses; anything else would run code when unpickled."""
    return name.startswith("torch.") or name in ("collections.OrderedDict", "_codecs.encode")


def _storable(tensors: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors that own their memory (safetensors refuses tensors sharing storage)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out
