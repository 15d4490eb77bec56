"""The backend contract: explicit capabilities, validated options, `with` releases."""

from __future__ import annotations

import pytest

from segdemo import backends
from segdemo.errors import SegdemoError
from segdemo.profiling.spans import SpanRecorder


def test_backends_follow_the_contract_and_refuse_unknown_options(session_factory):
    session = session_factory("random:tiny")
    assert isinstance(session.backend, backends.Backend)
    assert not isinstance(session.backend, backends.DeviceRenderer)  # the CPU backend runs the graph only
    assert "Engine cache" in session.backend.facts()
    with pytest.raises(SegdemoError, match="has no option precison — it takes precision, threads"):
        backends.create("onnxruntime", session.onnx_file, SpanRecorder(), precison="fp32")


def test_backends_and_sessions_close_when_their_block_ends(session_factory, build_dir):
    from segdemo.pipeline import Session

    onnx_file = session_factory("random:tiny").onnx_file
    with backends.create("onnxruntime", onnx_file, SpanRecorder(), threads=1) as backend:
        assert backend.session is not None and backend.threads == 1
    assert backend.session is None
    with Session("random:tiny", "onnxruntime", build_dir=build_dir) as session:
        assert session.backend.session is not None
    assert session.backend.session is None
