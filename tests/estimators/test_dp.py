"""The Dirichlet-process option's start: held-out pieces, joined along their ridgelines."""

import numpy as np
import pytest
import torch

from pyro_mixflows import VariationalFlowMixture
from pyro_mixflows.datasets import make_two_moons
from pyro_mixflows.diagnostics import adjusted_rand_index
from pyro_mixflows.estimators._dp import ridgeline_groups, ridgeline_log_dips
from pyro_mixflows.starts import Start


def _start(locs, scales, weights):
    locs = torch.tensor(locs, dtype=torch.float64)
    K, D = locs.shape
    tril = torch.stack([s * torch.eye(D, dtype=torch.float64) for s in scales])
    w = torch.tensor(weights, dtype=torch.float64)
    return Start("pieces", locs, tril, w / w.sum(), torch.zeros(10, dtype=torch.long))


def test_ridgeline_dips_of_two_gaussians(float64):
    # two unit Gaussians: unimodal up to a distance of 2, a dip beyond (equal weights)
    near = ridgeline_log_dips(_start([[0.0, 0], [1.5, 0]], [1, 1], [1, 1]))
    far = ridgeline_log_dips(_start([[0.0, 0], [6.0, 0]], [1, 1], [1, 1]))
    assert near[0, 1] == pytest.approx(0.0, abs=1e-9) and near[0, 0] == 0
    # at distance 6 the midpoint density is 2 N(3) vs N(0) + N(6) at the ends: log ratio known
    expected = np.log(2 * np.exp(-4.5)) - np.log(1 + np.exp(-18.0))
    assert far[0, 1].item() == pytest.approx(expected, rel=1e-3)


def test_ridgeline_groups_join_overlapping_pieces_not_separate_ones(float64):
    chain = _start([[0.0, 0], [1.5, 0], [3.0, 0], [12.0, 0]], [1, 1, 1, 1], [1, 1, 1, 1])
    assert ridgeline_groups(chain).tolist() == [0, 0, 0, 1]
    # a small, broad piece is unimodal towards everything: it joins one cluster, never chains two
    broad = _start([[0.0, 0], [12.0, 0], [6.0, 0]], [1, 1, 30], [1, 1, 0.01])
    groups = ridgeline_groups(broad).tolist()
    assert groups[0] != groups[1] and groups[2] in (groups[0], groups[1])


def test_moons_pieces_join_into_the_two_moons():
    X, y = make_two_moons(600, seed=0)
    model = VariationalFlowMixture(
        12, weights="dirichlet_process", random_state=0, num_layers=2, hidden_dims=(16,)
    ).fit(X)
    assert len(model.merge_groups_) > 2  # curved clusters took several Gaussian pieces
    assert model.effective_n_components_ == 2
    assert adjusted_rand_index(y, model.predict(X)) > 0.95
