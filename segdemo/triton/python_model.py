"""Triton Python-backend model of segdemo's fused graph, copied as `model.py` next to `model.onnx` by
`segdemo triton export`; it imports numpy, onnxruntime and Triton's own utilities, never segdemo.

Triton hands `execute` every queued request at once (dynamic batching); the fused graph then runs once per request
with ONNX Runtime, so each request gets its own output size and exactly the local `onnxruntime` backend's class map.
Tensors cross the stub through DLPack, not `as_numpy()`/`Tensor(name, array)`: the stub's pybind11 reads numpy 2
arrays wrongly (inputs come out as zeros, outputs empty), and DLPack works with numpy 1 and 2 alike.
"""

import ctypes
import json
import os
import sys

# The stub embeds the system's libpython and ignores PYTHONPATH; `segdemo triton serve` names the client
# environment's site-packages here so numpy and onnxruntime come from it.
PATH_ENV = "SEGDEMO_TRITON_PYTHONPATH"
sys.path[:0] = [p for p in os.environ.get(PATH_ENV, "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

# segdemo's MAX_OUTPUT_SIDE (this file cannot import segdemo; a test keeps the two equal): every backend upsamples to
# at most this many pixels a side, as the TensorRT profile does — a client's larger out_size would ask ONNX Runtime for
# gigabytes (the logits of every class at every output pixel).
MAX_SIDE = 2048


class TritonPythonModel:
    """One ONNX Runtime session per model instance, created once."""

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        options = ort.SessionOptions()
        # The local backend's settings; the cores are shared between instances.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, (os.cpu_count() or 1) // instances)
        options.log_severity_level = 3
        graph = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # one bad request must not fail the others batched with it
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"segdemo model: {exc}")))
        return responses

    def _one(self, request):
        images = _array(request, "image")  # [B, H, W, 3] uint8
        sizes = _array(request, "out_size").astype(np.int64)  # [B, 2]
        if sizes.ndim != 2 or sizes.shape[1] != 2 or (sizes < 1).any() or (sizes > MAX_SIDE).any():
            raise ValueError(f"out_size must be (height, width) with each side 1 to {MAX_SIDE} pixels, not "
                             f"{sizes.tolist()}")
        maps = [self.session.run(["classes"], {"image": images[i:i + 1], "out_size": sizes[i]})[0]
                for i in range(images.shape[0])]
        if len({m.shape for m in maps}) > 1:
            raise ValueError("the images of one request must share one out_size; send them as separate requests")
        classes = np.ascontiguousarray(np.concatenate(maps))
        capsule = classes.__dlpack__()
        tensor = pb_utils.Tensor.from_dlpack("classes", capsule)
        _mark_used(capsule)
        return pb_utils.InferenceResponse([tensor])

    def finalize(self):
        self.session = None


def _array(request, name):
    """A request's input as a contiguous numpy view of Triton's shared memory, valid while this `execute` runs
    (nothing keeps it longer): ONNX Runtime reads it where it is."""
    return np.ascontiguousarray(np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name)))


# The stub renames the DLPack capsules it takes over to "used_dlpack", which numpy's capsule destructor does not know
# (it then prints a ValueError traceback, once a response); DLPack's own name tells numpy the stub owns it, as it does
# anyway (segdemo.serving.engine_model does the same). A module global: PyCapsule_SetName keeps the pointer.
_USED = b"used_dltensor"


def _mark_used(capsule):
    set_name = ctypes.pythonapi.PyCapsule_SetName
    set_name.argtypes, set_name.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_int
    set_name(capsule, _USED)
