"""torch-cuda's exported network (a torch.export program with a dynamic batch, cached in build/compiled), made and
loaded for real on the CPU: exported once, loaded after without the model, made again when corrupt."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segdemo.model.source import resolve
from segdemo.profiling.spans import SpanRecorder

from .conftest import corrupt_keeping_size

torch = pytest.importorskip("torch")


def _program(build, spans, calls):
    from segdemo.backends.torch_cuda.aot import PROGRAM, compiled_network, pixel_network
    from segdemo.model.network import folded_logits

    source = resolve("random:tiny")

    def make():
        calls.append(1)
        return pixel_network(folded_logits(source.load_model()), "fp32")

    return compiled_network(source, "fp32", torch.device("cpu"), build, spans, make, kind=PROGRAM)


def test_program_is_exported_once_loaded_after_and_exported_again_when_corrupt(tmp_path, caplog):
    from segdemo.backends.torch_cuda.aot import pixel_network
    from segdemo.model.network import folded_logits

    calls: list[int] = []
    spans = SpanRecorder()
    module, facts = _program(tmp_path, spans, calls)
    assert not facts["cache_hit"] and calls == [1] and facts["package"].name.endswith(".program.pt2")
    # The first start runs the program it made; it is not read back (seconds of Python deserialisation).
    assert "load exported network" not in [s.name for s in spans.spans]
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
    corrupt_keeping_size(path)
    caplog.set_level("WARNING")
    spans = SpanRecorder()
    rebuilt, facts3 = _program(tmp_path, spans, calls)
    assert not facts3["cache_hit"] and calls == [1, 1], "a corrupt program must be exported again, never loaded"
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    with torch.inference_mode():
        assert torch.equal(rebuilt(pixels), module(pixels))
    names = [s.name for s in spans.spans]
    assert names == ["find exported network", "torch.export"]  # found corrupt by its digest, made, not read back


def test_trace_of_the_program_starts_without_the_program_and_gives_its_pixels(tmp_path):
    """The batch-1 TorchScript trace (what a restart replays first) is made from the exported program once, then
    loaded alone, and computes exactly what the program does."""
    from segdemo.backends.torch_cuda.aot import SCRIPT, compiled_network

    calls: list[int] = []
    source = resolve("random:tiny")
    program, _ = _program(tmp_path, SpanRecorder(), calls)

    def from_program():
        calls.append(2)
        return program

    script, facts = compiled_network(source, "fp32", torch.device("cpu"), tmp_path, SpanRecorder(), from_program,
                                     kind=SCRIPT)
    assert not facts["cache_hit"] and calls == [1, 2] and facts["package"].name.endswith(".script.pt")
    spans = SpanRecorder()
    again, facts2 = compiled_network(source, "fp32", torch.device("cpu"), tmp_path, spans, from_program, kind=SCRIPT)
    assert facts2["cache_hit"] and calls == [1, 2] and "torch.jit.trace" not in [s.name for s in spans.spans]
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8))
    with torch.inference_mode():
        assert torch.equal(again(pixels), program(pixels))
