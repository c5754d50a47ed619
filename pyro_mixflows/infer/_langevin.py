r"""The preconditioned Langevin proposal of :class:`~pyro_mixflows.infer.LatentMALA`.

A state holds, at the chains' points z (C, D), the log target of every component, its gradient
and the flows' images (and, for the pull-back metric, their Jacobians). From a state s at one
component, with step size γ and preconditioner M,

.. math:: z' \sim \mathcal{N}\big(z + \gamma M \nabla \log \pi(z),\ 2 \gamma M\big),

M the diagonal ``mass`` (D,), or :math:`(J^\top J)^{-1}` with J the Jacobian of the flow at z
when ``mass`` is None (the position-dependent metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def evaluate(log_targets: Callable, z: torch.Tensor, num_components: int, jacobian: bool) -> dict:
    """The state at z (C, D): log t_k (C, K), its gradient (C, K, D), x (C, K, D), and with
    ``jacobian`` the Jacobian of every flow (C, K, D, D), row d = dx_d / dz.

    Args:
        log_targets: zK (C, K, D) -> (log t (C, K), x (C, K, D), log|det J| (C, K)).
        z: (C, D).
        num_components: K.
        jacobian: also compute the Jacobians (D backward passes).
    """
    C, D = z.shape
    with torch.enable_grad():
        zK = z.detach().unsqueeze(-2).expand(C, num_components, D).clone().requires_grad_(True)
        lt, x, _ = log_targets(zK)  # (C, K), (C, K, D)
        (grad,) = torch.autograd.grad(lt.sum(), zK, retain_graph=jacobian)
        out = {"z": z.detach(), "lt": lt.detach(), "grad": grad.detach(), "x": x.detach()}
        if jacobian:
            rows = [
                torch.autograd.grad(x[..., d].sum(), zK, retain_graph=d < D - 1)[0]
                for d in range(D)
            ]
            out["jac"] = torch.stack(rows, -2)  # (C, K, D, D): [.., d, :] = dx_d / dz
    return out


def gather(t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """t (C, K, ...) at component c (C,) -> (C, ...)."""
    idx = c.view(-1, 1, *([1] * (t.dim() - 2))).expand(-1, 1, *t.shape[2:])
    return t.gather(1, idx).squeeze(1)


def at_component(ev: dict, c: torch.Tensor) -> dict:
    """The state ``ev`` of :func:`evaluate` at component c (C,): z, log t, gradient (, Jacobian)."""
    out = {"z": ev["z"], "lt": gather(ev["lt"], c), "grad": gather(ev["grad"], c)}
    if "jac" in ev:
        out["jac"] = gather(ev["jac"], c)
    return out


def proposal_mean(s: dict, step_size: float, mass: torch.Tensor | None) -> torch.Tensor:
    """z + γ M ∇ log π(z): (C, D)."""
    if mass is None:
        J = s["jac"]  # (C, D, D)
        drift = torch.linalg.solve(J.transpose(-1, -2) @ J, s["grad"].unsqueeze(-1))
        return s["z"] + step_size * drift.squeeze(-1)
    return s["z"] + step_size * mass * s["grad"]


def log_proposal(
    to: torch.Tensor, frm: dict, step_size: float, mass: torch.Tensor | None
) -> torch.Tensor:
    """log q(to | frm) up to the constant -D/2 log(4πγ), shared by both directions: (C,)."""
    r = to - proposal_mean(frm, step_size, mass)  # (C, D)
    if mass is None:
        J = frm["jac"]
        quad = (J @ r.unsqueeze(-1)).squeeze(-1).square().sum(-1)  # r^T (J^T J) r
        half_log_det_inv_m = torch.linalg.slogdet(J).logabsdet  # -1/2 log det M = log|det J|
    else:
        quad = (r.square() / mass).sum(-1)
        half_log_det_inv_m = -0.5 * mass.log().sum().expand(r.shape[0])
    return -quad / (4 * step_size) + half_log_det_inv_m


def propose(s: dict, step_size: float, mass: torch.Tensor | None) -> torch.Tensor:
    """A draw z' ~ q(· | s): (C, D)."""
    mean = proposal_mean(s, step_size, mass)
    xi = torch.randn_like(mean)
    if mass is None:
        noise = torch.linalg.solve(s["jac"], xi.unsqueeze(-1)).squeeze(-1)  # M^{1/2} xi
    else:
        noise = mass.sqrt() * xi
    return mean + math.sqrt(2 * step_size) * noise


def log_accept_ratio(
    s: dict, s_new: dict, step_size: float, mass: torch.Tensor | None
) -> torch.Tensor:
    """log [π(z') q(z | z')] - log [π(z) q(z' | z)] for states at the same component: (C,)."""
    forward = log_proposal(s_new["z"], s, step_size, mass)
    backward = log_proposal(s["z"], s_new, step_size, mass)
    return s_new["lt"] - s["lt"] + backward - forward
