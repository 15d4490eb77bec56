"""Triton Inference Server: the model repository of the fused graph (`repository`, with the Python-backend model
`python_model`) and a local tritonserver from the nvidia-pytriton wheel (`server`). The client is
`backends.triton`."""
