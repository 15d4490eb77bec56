"""The transformers pipeline as a user would write it: the reference for parity and benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .source import ModelSource


class TransformersPipeline:
    """SegformerImageProcessor + model + post_process_semantic_segmentation, eager."""

    def __init__(self, source: ModelSource, device: str = "cpu") -> None:
        import torch
        from transformers import SegformerImageProcessor

        self.torch = torch
        self.device = device
        self.processor = SegformerImageProcessor(
            size={"height": source.input_size[0], "width": source.input_size[1]}
        )
        self.model = source.load_model().to(device)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB H×W×3 → uint8 class map H×W."""
        from PIL import Image

        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            outputs = self.model(**inputs)
        (seg,) = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])
        return seg.to(self.torch.uint8).cpu().numpy()
