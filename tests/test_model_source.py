"""--model: presets, local Hugging Face directories (safetensors only), and clear failures."""

from __future__ import annotations

import numpy as np
import pytest

from segdemo.errors import ModelNotFoundError, SegdemoError
from segdemo.model_source import preset_for, resolve


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


def test_pickle_only_directory_is_refused(tmp_path):
    resolve("random:tiny").config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotFoundError, match="never loads"):
        resolve(str(tmp_path))


def test_local_directory_round_trip(tmp_path, session_factory):
    preset = resolve("random:tiny")
    preset.load_model().save_pretrained(tmp_path / "tiny", safe_serialization=True)
    local = resolve(str(tmp_path / "tiny"))
    assert not local.random_weights and local.labels == preset.labels and local.name == "tiny"
    from segdemo.pipeline import Session

    session = Session(str(tmp_path / "tiny"), "onnxruntime", build=tmp_path / "build")
    image = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    same = session_factory("random:tiny").segment(image).class_map
    assert (session.segment(image).class_map == same).mean() > 0.999
    assert "notice" not in session.describe()


def test_preset_for_hub_ids():
    assert preset_for("nvidia/segformer-b4-finetuned-ade-512-512") == "random:b4"
    assert preset_for("someone/deeplab") is None
