import itertools
import math

import numpy as np
import pyro.distributions as pyro_dist
import pytest
import torch
from scipy.integrate import quad
from torch.distributions import Beta, kl_divergence

from pyro_mixflows.distributions import Kumaraswamy, kl_kumaraswamy_beta


def reference_kl(a: float, b: float, alpha: float, beta: float) -> float:
    """KL(Kumaraswamy(a, b) || Beta(α, β)) = ∫ q (log q - log p) by scipy quadrature.

    Independent of the implementation: the log-density ratio is integrated directly, in the
    variable s = -b log(1 - v^a) ~ Exp(1) (so 1 - v^a = e^{-s/b}), which spreads both ends of
    the unit interval over the half-line and keeps log v and log(1 - v) exact in float64.
    """
    log_beta_fn = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)

    def integrand(s):
        x = -s / b
        log_va = np.log(-np.expm1(x)) if x > -math.log(2) else np.log1p(-np.exp(x))  # log v^a
        log_v = log_va / a
        log1m_v = np.log(-np.expm1(log_v)) if log_v < 0 else -s / b - math.log(a)
        log_q = math.log(a * b) + (a - 1) * log_v - (b - 1) * s / b
        log_p = (alpha - 1) * log_v + (beta - 1) * log1m_v - log_beta_fn
        return math.exp(-s) * (log_q - log_p)

    cuts = sorted({0.0, *(b * c for c in (1e-6, 1e-3, 1e-1, 1.0, 10.0)), 1.0, 10.0, 80.0})
    cuts = [c for c in cuts if c <= 80.0]
    return sum(
        quad(integrand, lo, hi, limit=200, epsabs=1e-13, epsrel=1e-11)[0]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=False)
    )


A_GRID = (0.05, 0.5, 1.0, 3.0, 50.0)
B_GRID = (0.05, 0.3, 0.8, 1.0, 5.0, 50.0)
PRIORS = ((1.0, 0.5), (1.0, 3.0), (2.0, 2.0), (0.3, 0.05))


@pytest.mark.parametrize("prior", PRIORS, ids=str)
def test_kl_matches_quadrature_on_a_grid(float64, prior):
    ab = torch.tensor(list(itertools.product(A_GRID, B_GRID)))  # (G, 2)
    kl = kl_divergence(Kumaraswamy(ab[:, 0], ab[:, 1]), Beta(*map(torch.tensor, prior)))
    ref = torch.tensor([reference_kl(a, b, *prior) for a, b in ab.tolist()])
    # 1e-7: the quadrature rule's error is ~1e-9 relative; scipy's ~1e-11.
    assert torch.allclose(kl, ref, rtol=1e-7, atol=1e-7), (kl - ref).abs().max()


def test_kl_series_regime_b_below_one(float64):
    # The case: the 100-term series gave 0.2198 here.
    kl = kl_divergence(Kumaraswamy(3.0, 0.8), Beta(1.0, 0.5)).item()
    assert kl == pytest.approx(reference_kl(3.0, 0.8, 1.0, 0.5), abs=1e-8)
    assert kl == pytest.approx(0.1851, abs=1e-4)


def test_kl_is_zero_when_kumaraswamy_is_that_beta(float64):
    # Kumaraswamy(1, b) = Beta(1, b) and Kumaraswamy(a, 1) = Beta(a, 1).
    b = torch.tensor([0.05, 0.5, 1.0, 3.0, 60.0])
    kl = kl_divergence(Kumaraswamy(torch.ones(5), b), Beta(torch.ones(5), b))
    assert kl.abs().max().item() < 1e-8
    assert kl_divergence(Kumaraswamy(2.0, 1.0), Beta(2.0, 1.0)).abs().item() < 1e-12


def test_kl_gradients_flow_to_both_parameters(float64):
    a = torch.tensor([0.05, 0.7, 3.0, 40.0], requires_grad=True)
    b = torch.tensor([0.05, 0.3, 0.8, 20.0], requires_grad=True)
    prior = Beta(torch.tensor(1.0), torch.tensor(0.5))
    assert torch.autograd.gradcheck(
        lambda a, b: kl_kumaraswamy_beta(Kumaraswamy(a, b), prior), (a, b), eps=1e-7, atol=1e-5
    )
    kl_divergence(Kumaraswamy(a, b), prior).sum().backward()
    assert torch.isfinite(a.grad).all() and (a.grad != 0).all()
    assert torch.isfinite(b.grad).all() and (b.grad != 0).all()


def test_kl_is_finite_with_gradients_at_the_clamp_range(float64):
    a = torch.tensor([1e-4, 1e-4, 1e4, 1e4], requires_grad=True)
    b = torch.tensor([1e-4, 1e4, 1e-4, 1e4], requires_grad=True)
    kl = kl_divergence(Kumaraswamy(a, b), Beta(torch.tensor(1.0), torch.tensor(3.0)))
    kl.sum().backward()
    assert (
        torch.isfinite(kl).all() and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    )


def test_kl_broadcasts_and_keeps_the_dtype():
    q = Kumaraswamy(torch.rand(4, 3) + 0.5, torch.rand(4, 3) + 0.5)
    kl = kl_divergence(q, Beta(torch.tensor(1.0), torch.tensor(2.0)))
    assert kl.shape == (4, 3) and kl.dtype == torch.float32
    assert kl_divergence(q, Beta(torch.ones(2, 1, 3), 2.0)).shape == (2, 4, 3)


@pytest.mark.parametrize("family", [torch.distributions.Kumaraswamy, pyro_dist.Kumaraswamy])
def test_kl_is_registered_for_torch_and_pyro_kumaraswamy(float64, family):
    a, b = torch.tensor([3.0, 0.5, 1.0]), torch.tensor([0.8, 2.0, 0.05])
    prior = Beta(torch.tensor(1.0), torch.tensor(0.5))
    ours = kl_divergence(Kumaraswamy(a, b), prior)
    theirs = kl_divergence(family(a, b), prior)
    assert torch.equal(theirs, ours)
    # and the same under Pyro's Beta
    assert torch.equal(kl_divergence(family(a, b), pyro_dist.Beta(1.0, 0.5)), ours)


KL_CASES = {
    "dp_prior": (2.0, 3.0, 1.0, 5.0),
    "small_a": (0.5, 4.0, 1.0, 0.5),
    "symmetric": (3.0, 2.0, 2.0, 2.0),
    "near_uniform": (1.5, 2.0, 1.0, 3.0),
}


@pytest.mark.parametrize("case", KL_CASES.values(), ids=KL_CASES.keys())
def test_kl_matches_monte_carlo(float64, case):
    a, b, alpha, beta = (torch.tensor(c) for c in case)
    q, p = Kumaraswamy(a, b), Beta(alpha, beta)
    v = q.rsample((200_000,))
    mc = (q.log_prob(v) - p.log_prob(v)).mean()
    # 1%: the Monte Carlo standard error here is below 0.3%.
    assert kl_divergence(q, p).item() == pytest.approx(mc.item(), rel=0.01)


def test_kumaraswamy_density_normalizes_and_moments(float64):
    d = Kumaraswamy(torch.tensor([0.7, 2.0, 5.0]), torch.tensor([1.5, 3.0, 0.8]))
    v = torch.linspace(0, 1, 200_001)[1:-1].unsqueeze(-1)  # (M, 1)
    mass = torch.trapezoid(d.log_prob(v).exp(), v.squeeze(-1), dim=0)
    assert torch.allclose(mass, torch.ones(3), atol=2e-3)
    draws = d.rsample((100_000,))
    assert ((draws > 0) & (draws < 1)).all()
    assert torch.allclose(draws.mean(0), d.mean, atol=5e-3)  # ~5 standard errors
    assert torch.allclose(draws.var(0), d.variance, atol=5e-3)
    assert torch.allclose((draws <= 0.5).double().mean(0), d.cdf(torch.tensor(0.5)), atol=5e-3)
    assert torch.allclose(-d.log_prob(draws).mean(0), d.entropy(), atol=2e-2)


def test_kumaraswamy_rsample_has_gradients(float64):
    a = torch.tensor([1.5, 0.7], requires_grad=True)
    b = torch.tensor([2.0, 3.0], requires_grad=True)
    Kumaraswamy(a, b).rsample((10,)).sum().backward()
    assert a.grad.abs().min() > 0 and b.grad.abs().min() > 0
    with pytest.raises(ValueError):
        Kumaraswamy(torch.tensor(-1.0), torch.tensor(1.0), validate_args=True)
    assert Kumaraswamy(1.0, 2.0).expand([3]).sample().shape == (3,)
