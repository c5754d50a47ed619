"""StickBreaking: exact density through the Jacobian, moments, support, shapes and errors."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import StickBreakingTransform

from pyro_mixflows import StickBreaking, StickWeights
from pyro_mixflows.distributions import sticks_to_weights, weights_to_sticks


def _weights_by_loop(v):
    """pi_t = v_t prod_{j<t}(1 - v_j), pi_T = prod(1 - v): written independently of the package."""
    out, rest = [], torch.ones(())
    for t in range(v.shape[-1]):
        out.append(v[t] * rest)
        rest = rest * (1 - v[t])
    return torch.stack(out + [rest])


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("T", [2, 3, 6])
def test_log_prob_is_beta_density_through_the_jacobian(alpha, T, float64):
    d = StickBreaking(torch.tensor(alpha), T)
    v = dist.Beta(1.0, alpha).sample((T - 1,)).clamp(0.02, 0.98)  # sticks away from the edges
    w = _weights_by_loop(v)
    # The map from the T-1 sticks to the first T-1 weights; the last weight is 1 - their sum.
    jac = torch.autograd.functional.jacobian(lambda s: _weights_by_loop(s)[:-1], v)
    expected = dist.Beta(1.0, alpha).log_prob(v).sum() - jac.det().abs().log()
    assert torch.allclose(d.log_prob(w), expected, rtol=1e-12, atol=1e-12)


def test_finite_form_is_symmetric_dirichlet(float64):
    alpha, T = torch.tensor([0.4, 1.0, 3.0]), 5
    d = StickBreaking(alpha, T, finite=True)
    w = dist.Dirichlet(torch.ones(3, T)).sample((7,))  # (7, 3, T)
    expected = dist.Dirichlet(alpha.unsqueeze(-1).expand(3, T)).log_prob(w)
    assert torch.allclose(d.log_prob(w), expected, rtol=1e-12, atol=1e-10)
    # ... and its draws have the Dirichlet mean 1/T (tolerance: 4 Monte Carlo standard errors).
    draws = d.sample((20000,))  # (20000, 3, T)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - 1 / T).abs() < 4 * se).all()


def test_mean_matches_closed_form_from_samples(float64):
    alpha, T, S = 1.5, 6, 100_000
    draws = StickBreaking(torch.tensor(alpha), T).sample((S,))  # (S, T)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    closed = alpha ** (t - 1) / (1 + alpha) ** t
    closed[-1] = (alpha / (1 + alpha)) ** (T - 1)  # the remainder of a truncated stick
    # Tolerance: 5 Monte Carlo standard errors per coordinate (a false alarm has odds ~ 1e-6).
    se = draws.std(0) / math.sqrt(S)
    assert ((draws.mean(0) - closed).abs() < 5 * se).all()
    assert torch.allclose(StickBreaking(torch.tensor(alpha), T).mean, closed, rtol=1e-12)


@pytest.mark.parametrize("finite", [False, True])
def test_samples_lie_on_the_simplex(finite, float64):
    w = StickBreaking(torch.tensor([0.1, 1.0, 10.0]), 15, finite=finite).sample((2000,))
    assert (w >= 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-12)
    assert torch.isfinite(StickBreaking(torch.tensor([0.1, 1.0, 10.0]), 15).log_prob(w)).all()


def test_stick_map_agrees_with_torch_stick_breaking_transform(float64):
    v = torch.rand(4, 7) * 0.9 + 0.05
    T = v.shape[-1] + 1
    offset = torch.arange(T - 1, 0, -1, dtype=v.dtype)  # torch's shift: logit v_t + log(T - t)
    via_torch = StickBreakingTransform()(v.logit() + offset.log())
    assert torch.allclose(sticks_to_weights(v), via_torch, atol=1e-12)
    back, _ = weights_to_sticks(sticks_to_weights(v))
    assert torch.allclose(back, v, atol=1e-12)


@pytest.mark.parametrize("sample_shape", [(), (3,), (2, 4)])
@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_shapes(sample_shape, batch_shape):
    T = 4
    d = StickBreaking(torch.full(batch_shape, 0.7), T)
    assert d.batch_shape == batch_shape and d.event_shape == (T,)
    x = d.rsample(sample_shape)
    assert x.shape == sample_shape + batch_shape + (T,)
    assert d.log_prob(x).shape == sample_shape + batch_shape


def test_expand_keeps_the_distribution(float64):
    d = StickBreaking(torch.tensor(0.8), 5)
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2) and e.event_shape == (5,)
    w = d.sample((3, 2))
    assert torch.allclose(e.log_prob(w), d.log_prob(w))
    assert e.sample().shape == (3, 2, 5)
    f = StickBreaking(torch.tensor(0.8), 5, finite=True).expand((4,))
    assert f.finite and torch.allclose(
        f.log_prob(w[0, 0]), dist.Dirichlet(torch.full((5,), 0.8)).log_prob(w[0, 0])
    )


def test_rsample_is_pathwise_in_the_concentration():
    alpha = torch.tensor(1.2, requires_grad=True)
    StickBreaking(alpha, 6).rsample((10,))[..., 0].sum().backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad) and alpha.grad != 0


def test_truncation_one_is_a_point_mass():
    d = StickBreaking(2.0, 1)
    assert torch.equal(d.sample((3,)), torch.ones(3, 1))
    assert d.log_prob(torch.ones(1)) == 0


@pytest.mark.parametrize("T", [0, -2, 2.5, True])
def test_truncation_below_one_is_refused(T):
    with pytest.raises(ValueError, match="expected truncation to be an int >= 1"):
        StickBreaking(1.0, T)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_non_positive_concentration_is_refused_when_validating(alpha):
    with pytest.raises(ValueError, match="concentration"):
        StickBreaking(torch.tensor(alpha), 5, validate_args=True)


def test_values_off_the_simplex_are_refused_when_validating():
    with pytest.raises(ValueError, match="support"):
        StickBreaking(torch.tensor(1.0), 3, validate_args=True).log_prob(
            torch.tensor([0.5, 0.6, 0.1])
        )


def test_stick_weights_with_kumaraswamy_sticks(float64):
    a, b = torch.tensor([0.7, 2.0, 1.3]), torch.tensor([1.5, 0.9, 3.0])
    kuma = dist.Independent(dist.Kumaraswamy(a, b), 1)
    d = StickWeights(kuma)
    v = torch.tensor([0.3, 0.6, 0.2])
    w = _weights_by_loop(v)
    jac = torch.autograd.functional.jacobian(lambda s: _weights_by_loop(s)[:-1], v)
    expected = kuma.log_prob(v) - jac.det().abs().log()
    assert torch.allclose(d.log_prob(w), expected, rtol=1e-12)
    assert d.has_rsample and d.rsample((2,)).shape == (2, 4)


def test_stick_weights_refuses_scalar_sticks():
    with pytest.raises(ValueError, match="expected sticks with event shape"):
        StickWeights(dist.Beta(torch.ones(3), torch.ones(3)))
    with pytest.raises(TypeError, match="expected sticks to be a torch Distribution"):
        StickWeights(torch.ones(3))


def test_weights_that_underflow_still_get_a_finite_density():
    # float32 sticks at extreme Beta parameters put exact zeros in the tail of the weights
    d = StickWeights(dist.Independent(dist.Beta(torch.full((3,), 0.01), torch.full((3,), 0.01)), 1))
    w = d.rsample((2000,))
    assert (w == 0).any()
    assert torch.isfinite(d.log_prob(w)).all()
