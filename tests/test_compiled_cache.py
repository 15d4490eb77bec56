"""torch-cuda's compiled-network cache (AOTInductor packages in build/compiled), exercised for real on the CPU:
the same code path as on a GPU, with g++ in place of the CUDA compiler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segdemo.model.source import resolve
from segdemo.profiling.spans import SpanRecorder

from .conftest import corrupt_keeping_size

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # two AOTInductor compilations of random:tiny: about a minute each on 2 cores


def _compiled(build, spans, calls):
    from segdemo.backends.torch_cuda.aot import compiled_network, pixel_network
    from segdemo.model.network import folded_logits

    source = resolve("random:tiny")

    def make():
        calls.append(1)
        return pixel_network(folded_logits(source.load_model()), "fp32")

    return compiled_network(source, "fp32", torch.device("cpu"), build, spans, make)


def test_package_is_compiled_once_loaded_after_and_recompiled_when_corrupt(tmp_path, caplog):
    from segdemo.backends.torch_cuda.aot import pixel_network
    from segdemo.model.network import folded_logits

    calls: list[int] = []
    runner, facts = _compiled(tmp_path, SpanRecorder(), calls)
    assert not facts["cache_hit"] and calls == [1] and facts["package"].suffix == ".pt2"
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8))
    eager = pixel_network(folded_logits(resolve("random:tiny").load_model()), "fp32")
    with torch.inference_mode():
        expected = eager(pixels)
        got = runner(pixels)
    assert got.shape == expected.shape == (1, 150, 128, 128)
    assert torch.allclose(got, expected, atol=1e-4)
    sidecar = json.loads(facts["package"].with_suffix(".json").read_text())
    assert sidecar["parts"]["device"] == "cpu" and sidecar["parts"]["precision"] == "fp32"

    spans = SpanRecorder()
    again, facts2 = _compiled(tmp_path, spans, calls)
    assert facts2["cache_hit"] and calls == [1], "a sound package must be loaded, not compiled again"
    assert "aoti compile" not in [s.name for s in spans.spans]
    with torch.inference_mode():
        assert torch.equal(again(pixels), got)

    package = facts["package"]
    corrupt_keeping_size(package)
    caplog.set_level("WARNING")
    spans = SpanRecorder()
    rebuilt, facts3 = _compiled(tmp_path, spans, calls)
    assert not facts3["cache_hit"] and calls == [1, 1], "a corrupt package must be compiled again, never loaded"
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    with torch.inference_mode():
        assert torch.equal(rebuilt(pixels), got)
    names = [s.name for s in spans.spans]
    assert names.index("find compiled network") < names.index("aoti compile") < names.index("load compiled network")
