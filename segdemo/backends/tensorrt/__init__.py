"""The TensorRT and TensorRT-RTX backends: the runner (`runner`, and `rtx` for TensorRT-RTX), the batched
runner (`batch`), the loader (`loader`: find or build the plan, deserialise, accuracy guard), the engine build
(`engine_build`, from the graphs in the form TensorRT takes: `batched_graphs`), the two distributions (`flavour`),
TensorRT's logger and progress callbacks (`callbacks`), per-layer timing (`timing`) and the GPU buffers, streams and
events the runners hold through a CUDA binding, not PyTorch (`cuda`).
"""
