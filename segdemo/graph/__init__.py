"""The ONNX graphs made from the model, cached in the build folder: the fused graph (`export`: uint8 image in, uint8
class map out), its batched split (`batched`: network with a batch dimension + per-image post-processing), the
fp16 forms TensorRT builds from (`fp16`) and the int8 network the CPU runs where it agrees with fp32 (`int8`).
"""
