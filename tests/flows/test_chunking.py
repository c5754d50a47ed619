"""component_log_probs in row chunks equals one unchunked pass."""

import torch

from pyro_mixflows import FlowComponents
from pyro_mixflows.flows import components as components_module

from ..conftest import perturb


def test_chunked_log_probs_equal_one_pass(monkeypatch, float64):
    comps = perturb(FlowComponents(3, 4, flow="spline_coupling", num_layers=2, hidden_dims=(8,)))
    x = 2 * torch.randn(2, 7, 4)
    whole = comps.component_log_probs(x)  # 42 rows: one chunk at the default size
    monkeypatch.setattr(components_module, "CHUNK_ROWS", 3 * 4)  # 4 points per chunk, 4 chunks
    chunked = comps.component_log_probs(x)
    assert chunked.shape == (2, 7, 3)
    assert torch.allclose(chunked, whole, atol=1e-12)
    u, log_det = comps.inverse(x.reshape(14, 1, 4))
    direct = comps.base_log_prob(u) + log_det  # (14, K), the unchunked inverse path
    assert torch.allclose(chunked.reshape(14, 3), direct, atol=1e-12)
