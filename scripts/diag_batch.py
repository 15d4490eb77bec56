"""GPU diagnosis of torch-cuda batches (random:b0, fp32, uncompiled): batched network logits against single runs, and
each batched map against its single run. `python3 scripts/diag_batch.py` on a CUDA machine, from the repo root."""

import os

os.environ["SEGDEMO_TORCH_COMPILE"] = "0"

from segdemo.image.preprocess import prepare  # noqa: E402
from segdemo.pipeline import Session  # noqa: E402
from segdemo.profiling.spans import SpanRecorder  # noqa: E402
from tests.conftest import photo  # noqa: E402

session = Session("random:b0", "torch-cuda", "fp32", build="/tmp/diag", max_batch=2, warm_up="off")
backend = session.backend
inputs = [prepare(photo("astronaut", (300, 400)), (512, 512)), prepare(photo("coffee", (512, 512)), (512, 512))]
single, single_logits = [], []
for model_input in inputs:
    single.append(backend.run(model_input, SpanRecorder()))
    single_logits.append(backend.logits.clone())
maps = backend.run_batch(inputs, SpanRecorder())
entry = backend.batch_graphs[2]
print("batch logits − single, max", [float((entry["logits"][k] - single_logits[k][0]).abs().max()) for k in range(2)])
print("maps agree with single runs", [float((m == s).mean()) for m, s in zip(maps, single, strict=True)])
