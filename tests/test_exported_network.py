"""torch-cuda's exported network (a torch.export program with a dynamic batch, cached in build/compiled), made and
loaded for real on the CPU: exported once, loaded after without the model, made again when corrupt."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segdemo.model_source import resolve
from segdemo.spans import SpanRecorder

torch = pytest.importorskip("torch")


def _program(build, spans, calls):
    from segdemo.backends.torch_aot import PROGRAM, compiled_network, pixel_network
    from segdemo.network import folded_logits

    source = resolve("random:tiny")

    def make():
        calls.append(1)
        return pixel_network(folded_logits(source.load_model()), "fp32")

    return compiled_network(source, "fp32", torch.device("cpu"), build, spans, make, kind=PROGRAM)


def test_program_is_exported_once_loaded_after_and_exported_again_when_corrupt(tmp_path, caplog):
    from segdemo.backends.torch_aot import pixel_network
    from segdemo.network import folded_logits

    calls: list[int] = []
    module, facts = _program(tmp_path, SpanRecorder(), calls)
    assert not facts["cache_hit"] and calls == [1] and facts["package"].name.endswith(".program.pt2")
    eager = pixel_network(folded_logits(resolve("random:tiny").load_model()), "fp32")
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 512, 512, 3), dtype=np.uint8))
    with torch.inference_mode():
        for batch in (1, 3):  # one program for every batch bucket
            expected, got = eager(pixels[:batch]), module(pixels[:batch])
            assert got.shape == expected.shape == (batch, 150, 128, 128)
            assert torch.allclose(got, expected, atol=1e-4)
    sidecar = json.loads(facts["package"].with_suffix(".json").read_text())
    assert sidecar["parts"]["format"].startswith("exported-program")

    spans = SpanRecorder()
    again, facts2 = _program(tmp_path, spans, calls)
    assert facts2["cache_hit"] and calls == [1], "a sound program must be loaded, not exported again"
    assert "torch.export" not in [s.name for s in spans.spans]
    with torch.inference_mode():
        assert torch.equal(again(pixels), module(pixels))

    path = facts["package"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    caplog.set_level("WARNING")
    spans = SpanRecorder()
    rebuilt, facts3 = _program(tmp_path, spans, calls)
    assert not facts3["cache_hit"] and calls == [1, 1], "a corrupt program must be exported again, never loaded"
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    with torch.inference_mode():
        assert torch.equal(rebuilt(pixels), module(pixels))
    names = [s.name for s in spans.spans]
    assert names.index("find exported network") < names.index("torch.export") < names.index("load exported network")
