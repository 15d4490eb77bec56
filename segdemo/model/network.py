"""SegFormer logits with the decode head folded: the same function, a fraction of the arithmetic.

The decode head projects each encoder stage to D channels, upsamples them to 1/4 resolution, concatenates
(4·D channels) and mixes them with a 1×1 conv followed by BatchNorm. Projection, conv and BatchNorm are all
linear and bilinear upsampling commutes with any per-pixel linear map, so they fold into one D×C_i projection per
stage applied *before* upsampling. For b4 at 512² this removes the 3072→768 conv at 128² (~77 GFLOP of ~190).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def folded_logits(model: torch.nn.Module) -> torch.nn.Module:
    """A module mapping pixel_values [1,3,H,W] to the logits of `model` (SegformerForSemanticSegmentation)."""
    import torch
    from torch.nn import functional

    segformer: Any = model  # its submodules by name (torch types nn.Module attributes as Tensor | Module)
    head = segformer.decode_head
    config = head.config
    if getattr(config, "reshape_last_stage", True) is False:
        raise ValueError("folding needs reshape_last_stage=True (the layout of every published SegFormer)")
    stages = len(head.linear_projections)
    width = config.decoder_hidden_size
    with torch.no_grad():
        bn = head.batch_norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        fuse = head.linear_fuse.weight[:, :, 0, 0]  # [D, stages·D]; the concat is in reverse stage order
        weights = []
        for i, mlp in enumerate(head.linear_projections):
            part = fuse[:, (stages - 1 - i) * width:(stages - i) * width]
            weights.append((scale[:, None] * (part @ mlp.proj.weight))[:, :, None, None].contiguous())
            # Upsampling keeps a constant map constant, so every projection bias lands in one sum.
            bias = bias + scale * (part @ mlp.proj.bias)

    class FoldedSegformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = segformer.segformer
            self.projections = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in weights])
            self.bias = torch.nn.Parameter(bias[None, :, None, None].contiguous(), requires_grad=False)
            self.classifier = head.classifier

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            states = self.encoder(pixel_values, output_hidden_states=True).hidden_states
            size = states[0].shape[2:]
            mixed: torch.Tensor = self.bias
            for state, weight in zip(states, self.projections, strict=True):
                projected = functional.conv2d(state, weight)
                if projected.shape[2:] != size:
                    projected = functional.interpolate(projected, size=size, mode="bilinear", align_corners=False)
                mixed = mixed + projected
            return self.classifier(torch.relu(mixed))

    return FoldedSegformer().eval()
