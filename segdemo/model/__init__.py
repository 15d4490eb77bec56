"""The model: what `--model` names (hub id, local folder, `random:` preset) resolved into config, labels and
weights (`source`, with pickle checkpoints read restricted in `checkpoints`), the class names and palette (`labels`),
SegFormer's logits with the decode head folded (`network`), and the transformers pipeline as the reference for parity
and benchmarks (`reference`).
"""
