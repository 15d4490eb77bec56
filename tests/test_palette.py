"""Class colours: ADE20K's standard palette for ADE20K's label set (however a config spells it), generated colours for
any other; unique per class id either way (the hover view reads a pixel's class back from its colour)."""

from __future__ import annotations

import json

import numpy as np

from segdemo.model.labels import ADE20K_LABELS, ADE20K_PALETTE, generated_palette, is_ade20k, palette
from segdemo.model.source import resolve

# id2label as some ADE20K checkpoints spell it: CSAIL's object150_info names (all synonyms), a stray trailing space
# (mmsegmentation's "bed "), capitals.
SPELLED_OTHERWISE = {0: "Wall", 1: "building, edifice", 2: "sky", 3: "floor;flooring", 7: "bed ",
                     12: "person, individual, someone, somebody, mortal, soul"}
CITYSCAPES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def _unique_rows(colours: np.ndarray) -> int:
    return len({tuple(int(v) for v in row) for row in colours})


def test_the_standard_table_is_the_published_one():
    assert ADE20K_PALETTE[:5] == ((120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3))
    assert ADE20K_PALETTE[-1] == (92, 0, 255) and len(ADE20K_PALETTE) == 150
    assert ADE20K_PALETTE[6] == ADE20K_PALETTE[48] == (140, 140, 140)  # road and skyscraper share one grey there


def test_ade20k_labels_get_the_standard_colours_each_unique():
    colours = palette(ADE20K_LABELS)
    assert colours.shape == (150, 3) and colours.dtype == np.uint8
    differ = [i for i in range(150) if tuple(colours[i]) != ADE20K_PALETTE[i]]
    assert differ == [48]  # skyscraper only: moved off road's grey
    assert _unique_rows(colours) == 150
    assert not (colours == 0).all(axis=1).any()  # black stays for ids past the palette


def test_other_label_sets_get_generated_colours():
    assert np.array_equal(palette(CITYSCAPES), generated_palette(len(CITYSCAPES)))
    reordered = list(ADE20K_LABELS)
    reordered[0], reordered[1] = reordered[1], reordered[0]
    for other in (reordered, ADE20K_LABELS[:149], [*ADE20K_LABELS, "extra"]):
        assert not is_ade20k(other)
        assert np.array_equal(palette(other), generated_palette(len(other)))
    assert _unique_rows(generated_palette(150)) == 150


def _local_model(folder, labels):
    folder.mkdir()
    config = {"model_type": "segformer", "num_labels": len(labels),
              "id2label": {str(i): name for i, name in enumerate(labels)}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights are not read to resolve a model")
    return folder


def test_a_model_knows_its_palette_from_its_labels(tmp_path):
    """The preset and a checkpoint whose id2label names ADE20K's classes get ADE20K's colours; another label set
    (here Cityscapes') gets generated ones."""
    ade = [SPELLED_OTHERWISE.get(i, name) for i, name in enumerate(ADE20K_LABELS)]
    for source in (resolve("random:tiny"), resolve(str(_local_model(tmp_path / "ade", ade)), tmp_path / "build")):
        assert np.array_equal(palette(source.labels), palette(ADE20K_LABELS)), source.spec
    cityscapes = resolve(str(_local_model(tmp_path / "cityscapes", CITYSCAPES)), tmp_path / "build")
    assert np.array_equal(palette(cityscapes.labels), generated_palette(19))


def test_a_session_draws_in_its_labels_palette(session_factory):
    session = session_factory("random:tiny")
    assert np.array_equal(session.colours, palette(ADE20K_LABELS))
    assert tuple(session.colours[0]) == (120, 120, 120)  # wall
