"""The folded decode head computes the same logits as the transformers model it was folded from."""

from __future__ import annotations

import pytest
import torch

from segdemo.model.network import folded_logits
from segdemo.model.source import resolve


@pytest.mark.parametrize("spec", ["random:tiny", "random:b0"])
def test_folded_logits_equal_transformers_logits(spec):
    model = resolve(spec).load_model()
    bn = model.decode_head.batch_norm
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained BatchNorm statistics, so the fold of scale and shift is really exercised
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
        pixels = torch.randn(1, 3, 512, 512, generator=generator)
        expected = model(pixel_values=pixels).logits
        actual = folded_logits(model)(pixels)
    assert actual.shape == expected.shape == (1, 150, 128, 128)
    assert float((actual - expected).norm() / expected.norm()) < 1e-5
    assert float((actual.argmax(1) == expected.argmax(1)).float().mean()) > 0.9999
