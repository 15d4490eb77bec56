"""--model: presets, local Hugging Face directories (safetensors, or pytorch_model.bin converted once), failures."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from segdemo.errors import ModelNotFoundError, SegdemoError
from segdemo.model.source import preset_for, resolve

from .conftest import photo

MARKER = Path("/tmp/PWNED-segdemo-test")


def test_presets_are_real_segformer_with_ade_labels():
    source = resolve("random:b0")
    assert source.config.model_type == "segformer"
    assert source.config.hidden_sizes == [32, 64, 160, 256]
    assert len(source.labels) == 150 and source.labels[:3] == ["wall", "building", "sky"]
    assert source.random_weights and "random weights" in source.notes[0]


def test_unknown_preset():
    with pytest.raises(SegdemoError, match="choose one of random:tiny"):
        resolve("random:b9")


def test_missing_local_directory_names_both_remedies(tmp_path):
    with pytest.raises(ModelNotFoundError, match="local.*random:b4"):
        resolve(str(tmp_path / "missing-model"))


def test_unreachable_hub_names_both_remedies(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache, so nothing can be found
    with pytest.raises(ModelNotFoundError) as err:
        resolve("nvidia/segformer-b2-finetuned-ade-512-512")
    message = str(err.value)
    assert "local directory" in message and "--model random:b2" in message


def test_other_pickle_formats_are_refused(tmp_path):
    resolve("random:tiny").config.save_pretrained(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not loaded")
    (tmp_path / "training_args.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotFoundError, match=r"never loads.*convert the checkpoint to safetensors"):
        resolve(str(tmp_path))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same random tiny SegFormer as model.safetensors and as pytorch_model.bin (torch.save of the same
    state dict, which is what save_pretrained(safe_serialization=False) wrote before transformers 5 dropped it)."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("twins")
    resolve("random:tiny").load_model().save_pretrained(root / "safe")
    (root / "pickle").mkdir()
    shutil.copy(root / "safe" / "config.json", root / "pickle" / "config.json")
    torch.save(load_file(root / "safe" / "model.safetensors"), root / "pickle" / "pytorch_model.bin")
    return root / "safe", root / "pickle"


def _pickle_dir(tmp_path, twins, payload: bytes) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(twins[1] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(payload)
    return folder


def test_pytorch_model_bin_is_converted_once_and_matches_safetensors(tmp_path, twins, monkeypatch, caplog):
    from segdemo.pipeline import Session

    safe, pickled = twins
    build = tmp_path / "build"
    monkeypatch.setenv("SEGDEMO_BUILD_DIR", str(build))  # where resolve() keeps converted checkpoints
    caplog.set_level(logging.INFO, logger="segdemo")
    image = photo("astronaut", (240, 320))

    with Session(str(pickled), "onnxruntime", build_dir=build) as session:
        from_pickle = session.segment(image).class_map
        content_hash = session.source.content_hash
    converted = list(build.glob("converted/*/model.safetensors"))
    assert len(converted) == 1 and converted[0].parent == session.source.weights_dir
    assert converted[0].parent.name == _sha256(pickled / "pytorch_model.bin")  # keyed by the checkpoint's sha256
    assert sorted(p.name for p in pickled.iterdir()) == ["config.json", "pytorch_model.bin"]  # model dir untouched
    lines = [r.getMessage() for r in caplog.records if "converted pytorch_model.bin to safetensors once" in r.message]
    assert len(lines) == 1 and str(converted[0]) in lines[0]

    with Session(str(safe), "onnxruntime", build_dir=build) as session:
        assert (session.segment(image).class_map == from_pickle).all()

    caplog.clear()
    mtime = converted[0].stat().st_mtime_ns
    again = resolve(str(pickled))
    assert again.weights_dir == converted[0].parent and again.content_hash == content_hash
    assert converted[0].stat().st_mtime_ns == mtime
    assert not [r for r in caplog.records if "converted" in r.getMessage()]  # the second load reads the file
    net = again.load_model()
    assert not net.training and sum(p.numel() for p in net.parameters()) > 0


def _sha256(path: Path) -> str:
    from segdemo.artifacts import file_sha256

    return file_sha256(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, twins, monkeypatch, writer):
    import io

    import torch

    MARKER.unlink(missing_ok=True)
    buffer = io.BytesIO()
    torch.save({"weight": _RunsCode()}, buffer)
    payload = buffer.getvalue() if writer == "torch.save" else pickle.dumps(_RunsCode())
    folder = _pickle_dir(tmp_path, twins, payload)
    monkeypatch.setenv("SEGDEMO_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(SegdemoError) as err:
        resolve(str(folder))
    message = str(err.value)
    assert not isinstance(err.value, ModelNotFoundError)  # a refusal, not "missing" (no random-weights fallback)
    assert f"refused to load '{folder / 'pytorch_model.bin'}' because unpickling it would run code" in message
    assert "posix.system" in message and "model.safetensors" in message and "\n" not in message
    assert not MARKER.exists()
    assert not list((tmp_path / "build").glob("converted/*/model.safetensors"))


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path, twins, monkeypatch, cut):
    data = (twins[1] / "pytorch_model.bin").read_bytes()
    folder = _pickle_dir(tmp_path, twins, data[: int(len(data) * cut)])
    monkeypatch.setenv("SEGDEMO_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(SegdemoError, match=r"is not a readable PyTorch checkpoint \(.+\): it is truncated, corrupt "
                                           r"or in an unsupported format — download it again") as err:
        resolve(str(folder))
    assert str(folder / "pytorch_model.bin") in str(err.value) and "\n" not in str(err.value)


def test_sharded_checkpoint_is_merged(tmp_path, twins, monkeypatch):
    import json

    import torch

    state = torch.load(twins[1] / "pytorch_model.bin", weights_only=True)
    names = sorted(state)
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(twins[1] / "config.json", folder / "config.json")
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        shard = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    monkeypatch.setenv("SEGDEMO_BUILD_DIR", str(tmp_path / "build"))
    merged = resolve(str(folder)).load_model().state_dict()
    reference = resolve(str(twins[0])).load_model().state_dict()
    assert merged.keys() == reference.keys() and all(torch.equal(merged[k], reference[k]) for k in merged)


def test_hub_repository_without_safetensors_fetches_the_pickle(tmp_path, twins, monkeypatch):
    """The download step asks for *.safetensors first and for pytorch_model*.bin only when there are none."""
    import fnmatch

    import huggingface_hub

    repo = {"config.json": twins[1] / "config.json", "pytorch_model.bin": twins[1] / "pytorch_model.bin",
            "training_args.bin": twins[1] / "config.json"}
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns, **kwargs):
        calls.append(allow_patterns)
        folder = tmp_path / "hub" / repo_id.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        for name, file in repo.items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                shutil.copy(file, folder / name)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("SEGDEMO_BUILD_DIR", str(tmp_path / "build"))
    source = resolve("someone/segformer-b0-old")
    assert calls == [["*.json", "*.safetensors"], ["*.json", "pytorch_model.bin", "pytorch_model-*.bin"]]
    assert not (Path(source.local_dir) / "training_args.bin").exists()
    assert source.weights_dir is not None and (source.weights_dir / "model.safetensors").is_file()


def test_local_directory_round_trip(tmp_path, session_factory):
    preset = resolve("random:tiny")
    preset.load_model().save_pretrained(tmp_path / "tiny", safe_serialization=True)
    local = resolve(str(tmp_path / "tiny"))
    assert not local.random_weights and local.labels == preset.labels and local.name == "tiny"
    from segdemo.pipeline import Session

    session = Session(str(tmp_path / "tiny"), "onnxruntime", build_dir=tmp_path / "build")
    image = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    same = session_factory("random:tiny").segment(image).class_map
    assert (session.segment(image).class_map == same).mean() > 0.999
    assert "notice" not in session.describe()


def test_preset_for_hub_ids():
    assert preset_for("nvidia/segformer-b4-finetuned-ade-512-512") == "random:b4"
    assert preset_for("someone/deeplab") is None


def test_a_prepared_folder_runs_as_model_without_weights(tmp_path, session_factory):
    """write_prepared records the model and its fused graph; --model <folder> reads labels, size and graph back, and
    refuses, in one sentence, what needs the weights."""
    from segdemo.graph.export import ensure_onnx
    from segdemo.model.source import PREPARED, write_prepared

    tiny = session_factory("random:tiny")
    folder = tmp_path / "deploy"
    (folder / "onnx").mkdir(parents=True)
    graph = folder / "onnx" / tiny.onnx_file.name
    shutil.copy2(tiny.onnx_file, graph)
    write_prepared(tiny.source, graph, folder)
    prepared = resolve(str(folder))
    assert prepared.graph == graph and prepared.prepared_from == "random:tiny"
    assert prepared.labels == tiny.source.labels and prepared.input_size == tiny.source.input_size
    assert prepared.content_hash == tiny.source.content_hash and prepared.random_weights
    assert ensure_onnx(prepared, tmp_path / "elsewhere") == (graph, True)
    assert not (tmp_path / "elsewhere").exists()  # found, not exported
    with pytest.raises(SegdemoError, match="prepared folder.*pass --model random:tiny"):
        prepared.load_model()
    graph.unlink()
    with pytest.raises(ModelNotFoundError, match="graph .* is missing — copy the whole folder"):
        resolve(str(folder))
    (folder / PREPARED).write_text("{")
    with pytest.raises(ModelNotFoundError, match="not a readable prepared-folder record"):
        resolve(str(folder))
