"""What serves the front ends of `--front-ends N`: the supervisor's engine tier, a remote one, or (where neither can
run) each front end's own model — decided from the options and the machine, each choice in one sentence."""

from __future__ import annotations

import pytest

from segdemo.serving.engine_tier import choose, front_end_config
from segdemo.web.config import AppConfig

NO_SERVER = "no tritonserver here: the nvidia-pytriton wheel bundles one — pip install --no-deps nvidia-pytriton==0.7.0"


def _config(**options) -> AppConfig:
    return AppConfig(model="random:tiny", front_ends=2, **options)


def test_the_cpu_backend_gets_the_local_engine_tier():
    for backend in ("auto", "onnxruntime"):
        tier = choose(_config(backend=backend, max_batch=4), 7001, None, has_gpu=False)
        assert tier.local and tier.backend == "triton://127.0.0.1:7001/segformer" and tier.max_batch == 8
        assert "share one engine tier" in tier.note and f"--backend {backend}" in tier.note
        assert "on the CPU" in tier.note
        front = front_end_config(_config(backend=backend, max_batch=4), tier)
        # Batches form in Triton, across front ends; the tier's session answers at its own precision.
        assert (front.backend, front.max_batch, front.precision) == (tier.backend, 1, "auto")


@pytest.mark.parametrize(("options", "batch"), [({"backend": "torch-cuda"}, 16), ({"backend": "auto"}, 16),
                                                ({"backend": "torch-cuda", "max_batch": 32}, 32)])
def test_a_gpu_gets_the_local_engine_tier_with_gpu_sized_batches(options, batch):
    """One engine per GPU: the front ends of a GPU machine share the tier's one session, batched up to 16 (more if
    --max-batch asks for more)."""
    tier = choose(_config(precision="fp16", **options), 7001, None, has_gpu=True)
    assert tier.local and tier.max_batch == batch and "on the GPU" in tier.note
    assert f"--backend {options['backend']} --precision fp16" in tier.note


def test_a_remote_engine_tier_is_used_as_given():
    url = "triton://gpu-1:8001/segformer"
    tier = choose(_config(backend=url, precision="fp16", max_batch=8), 7001, NO_SERVER, has_gpu=True)
    assert not tier.local and tier.backend == url and "none is started here" in tier.note
    front = front_end_config(_config(backend=url, precision="fp16", max_batch=8), tier)
    assert (front.backend, front.max_batch, front.precision) == (url, 1, "fp16")


def test_without_a_tritonserver_each_front_end_loads_its_own_model_and_the_log_says_why():
    config = _config()
    tier = choose(config, 7001, NO_SERVER, has_gpu=False)
    assert not tier.local and tier.backend == config.backend
    assert tier.note.startswith(f"no shared engine tier: {NO_SERVER}")
    assert "each front end loads its own copy" in tier.note
    assert "\n" not in tier.note
    assert front_end_config(config, tier) == config


def test_an_engine_tier_that_cannot_be_made_leaves_each_front_end_its_own_model(tmp_path, caplog):
    """The tier's export fails (a preset it does not know: the command line exits 2): one warning says so, and the
    front ends start with the operator's own backend instead of the tier's address."""
    import asyncio
    import logging

    from segdemo.serving.engine_tier import EngineTier
    from segdemo.serving.frontends import Fleet, free_ports

    config = AppConfig(model="random:nosuch", backend="onnxruntime", front_ends=2, build_dir=str(tmp_path))
    front, grpc = free_ports(2)

    async def start() -> Fleet:
        engine = EngineTier(config, grpc)
        fleet = Fleet(config, "app.py", str(tmp_path), [front], choose(config, grpc, None, False), engine)
        try:
            await fleet.start()
        finally:
            fleet.stop()
            await asyncio.gather(*fleet.runs, return_exceptions=True)
            engine.close()
        return fleet

    with caplog.at_level(logging.INFO, "segdemo.serving.frontends"):
        fleet = asyncio.run(start())
    assert fleet.engine is None and [f.config.backend for f in fleet.fronts] == ["onnxruntime"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("no shared engine tier: the engine tier's model export exited with code 2") and
               m.endswith("each front end loads its own copy of the model") for m in warned), warned


def test_the_tier_models_account_logs_a_period_from_its_first_execution(monkeypatch, caplog):
    """The engine tier's model says where its executions' time went: one line a period (counted from the period's
    first execution, so idle time starts none), with the mean batch and each part's mean milliseconds."""
    import logging

    from segdemo.profiling.spans import INFERENCE, SpanRecorder
    from segdemo.serving import engine_model

    clock = [1000.0]
    monkeypatch.setattr(engine_model.time, "monotonic", lambda: clock[0])
    account = engine_model.Account()
    spans = SpanRecorder()
    spans.add_device("gpu network", INFERENCE, 0, 3_000_000)
    clock[0] += 3600  # an hour idle: the next execution opens a period, it does not close one
    with caplog.at_level(logging.INFO, logger=engine_model.__name__):
        account.add(16, (1_000_000, 30_000_000, 2_000_000), spans)
        assert not caplog.records
        clock[0] += engine_model.Account.PERIOD_S
        account.add(8, (1_000_000, 20_000_000, 2_000_000), SpanRecorder())
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ("2 executions, mean batch 12.0; ms an execution: inputs 1.00, session 25.00 (GPU: network 1.50), "
                    "responses 2.00")
    assert account.executions == 0  # a new period
