"""The ONNX graphs made from the model, cached in the build folder: the fused graph (`export`: uint8 image in, uint8
class map out), its batched split (`batched`: network with a batch dimension + per-image post-processing) and the
fp16 forms TensorRT builds from (`fp16`).
"""
