"""torch-cuda: SegFormer replayed from CUDA graphs with PyTorch on GPUs without TensorRT, each request whole on the GPU.

Rooms: `backend` (the Backend and its request paths), `network` (loading, background compilation, graph swaps),
`aot` (the network's artifacts in build/compiled), `graphs` (capture; network and post-processing graphs), `render`
(pictures and downloads), `prepare` (decode and resize before the network), `jpeg` + `nvjpeg` (GPU JPEG decode),
`ops` (the host's arithmetic as bit-exact torch ops).
"""

from .backend import BACKGROUND_DONE, READS_GRAPH, TorchCudaBackend, create, unavailable_reason
from .network import COMPILE_ENV

__all__ = ["BACKGROUND_DONE", "COMPILE_ENV", "READS_GRAPH", "TorchCudaBackend", "create", "unavailable_reason"]
