"""Component-batched invertible layers.

Every layer acts on tensors of shape (K, M, D): K components, M points, D dimensions, and maps
in two directions:

- ``to_data(u) -> (x, log_det)``: base side to data side, ``log_det = log|det dx/du|``, (K, M);
- ``to_base(x) -> (u, log_det)``: data side to base side, ``log_det = log|det du/dx|``, (K, M).

Calling a layer is ``to_base``: ``layer(x) == layer.to_base(x)``, the direction of density
evaluation, so torch's hooks, ``compile()`` and ``torch.func.functional_call`` apply to it.

Implementer's checklist for a new layer: both directions exact inverses of each other; the
log-determinant sums only over the dimensions the layer changes; parameters carry a leading K
axis; no Python loop over components.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._nn import BatchedMLP, made_masks
from ._spline import packed_rational_quadratic_spline

# Affine log-scales are soft-clamped to (-SCALE_CLAMP, SCALE_CLAMP) per layer, for stability.
SCALE_CLAMP = 3.0


def _soft_clamp(s: torch.Tensor) -> torch.Tensor:
    return SCALE_CLAMP * torch.tanh(s / SCALE_CLAMP)


class BatchedLayer(nn.Module):
    """Base class of component-batched invertible layers (see the module docstring).

    Example::

        >>> layer = ElementwiseAffine(3, 2)
        >>> u, log_det = layer(torch.zeros(3, 5, 2))  # to_base: (K, M, D) -> (K, M, D), (K, M)
        >>> u.shape, log_det.shape
        (torch.Size([3, 5, 2]), torch.Size([3, 5]))
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base, ``to_base(x)``: x (K, M, D) -> u (K, M, D), log|det du/dx| (K, M)."""
        return self.to_base(x)

    def to_data(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data: u (K, M, D) -> x (K, M, D), log|det dx/du| (K, M)."""
        raise NotImplementedError

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base: x (K, M, D) -> u (K, M, D), log|det du/dx| (K, M)."""
        raise NotImplementedError


class ElementwiseAffine(BatchedLayer):
    """Per-component ``x = loc + exp(log_scale) * u``; places and sizes each component."""

    def __init__(self, num_components: int, dim: int) -> None:
        super().__init__()
        # loc and log_scale in one tensor: fewer parameter tensors, cheaper per-step bookkeeping
        self.params = nn.Parameter(torch.zeros(num_components, 2, dim))

    @property
    def loc(self) -> torch.Tensor:
        """(K, 1, D), a view of ``params``."""
        return self.params[:, :1]

    @property
    def log_scale(self) -> torch.Tensor:
        """(K, 1, D), a view of ``params``."""
        return self.params[:, 1:]

    def to_data(self, u):
        x = self.loc + u * self.log_scale.exp()
        return x, self.log_scale.sum(-1).expand(u.shape[:-1])

    def to_base(self, x):
        u = (x - self.loc) * torch.exp(-self.log_scale)
        return u, -self.log_scale.sum(-1).expand(x.shape[:-1])


class TriangularAffine(BatchedLayer):
    """Per-component full affine map ``x = loc + L u``, L lower-triangular with positive diagonal.

    With u ~ N(0, I), x ~ N(loc, L L^T): any full-covariance Gaussian, L its Cholesky factor.
    ``log|det dx/du| = sum_i log L_ii``. The data-to-base direction is one batched triangular
    solve over the K components.

    Parameters live in one tensor ``params`` of shape (K, D + 1, D): row 0 is ``loc``, rows 1..D
    hold L with its diagonal stored as ``log L_ii`` (the strictly upper part is unused, zero).
    All zeros is the identity map.
    """

    def __init__(self, num_components: int, dim: int) -> None:
        super().__init__()
        self.params = nn.Parameter(torch.zeros(num_components, dim + 1, dim))
        self.register_buffer("_lower", torch.ones(dim, dim).tril(-1))

    @property
    def loc(self) -> torch.Tensor:
        """(K, 1, D), a view of ``params``."""
        return self.params[:, :1]

    @property
    def log_diagonal(self) -> torch.Tensor:
        """log L_ii, (K, D)."""
        return self.params[:, 1:].diagonal(dim1=-2, dim2=-1)

    @property
    def scale_tril(self) -> torch.Tensor:
        """L, (K, D, D) lower-triangular with positive diagonal."""
        raw = self.params[:, 1:]
        return raw * self._lower + torch.diag_embed(self.log_diagonal.exp())

    def to_data(self, u):
        x = torch.baddbmm(self.loc, u, self.scale_tril.mT)
        return x, self.log_diagonal.sum(-1, keepdim=True).expand(u.shape[:-1])

    def to_base(self, x):
        # u L^T = x - loc, solved from the right with the upper-triangular L^T
        u = torch.linalg.solve_triangular(self.scale_tril.mT, x - self.loc, upper=True, left=False)
        return u, -self.log_diagonal.sum(-1, keepdim=True).expand(x.shape[:-1])

    @torch.no_grad()
    def set(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        """Set ``loc`` (K, D) and L (K, D, D), lower-triangular with a positive diagonal."""
        K, _, D = self.params.shape
        if loc.shape != (K, D) or scale_tril.shape != (K, D, D):
            raise ValueError(
                f"expected loc ({K}, {D}) and scale_tril ({K}, {D}, {D}), "
                f"got {tuple(loc.shape)} and {tuple(scale_tril.shape)}"
            )
        diag = scale_tril.diagonal(dim1=-2, dim2=-1)
        if not bool((diag > 0).all()):
            raise ValueError("expected scale_tril with a positive diagonal")
        self.params[:, :1].copy_(loc.unsqueeze(1))
        self.params[:, 1:].copy_(scale_tril.tril(-1) + torch.diag_embed(diag.log()))


class Permute(BatchedLayer):
    """A fixed permutation of the D coordinates, shared by all components (log|det| = 0)."""

    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def to_data(self, u):
        return u[..., self.permutation], u.new_zeros(u.shape[:-1])

    def to_base(self, x):
        return x[..., self.inverse_permutation], x.new_zeros(x.shape[:-1])


class _Coupling(BatchedLayer):
    """Coupling layer: half the coordinates condition an elementwise map of the other half."""

    def __init__(
        self,
        num_components: int,
        dim: int,
        hidden_dims: Sequence[int],
        *,
        flip: bool,
        activation: str,
        params_per_dim: int,
    ) -> None:
        super().__init__()
        self.params_per_dim = params_per_dim
        if dim < 2:
            raise ValueError(f"expected dim >= 2 for a coupling flow, got {dim}; use flow='maf'")
        half = dim // 2
        # Non-flipped: condition on x[:half], transform x[half:]; flipped: the other way round.
        self.split = half
        self.flip = flip
        n_cond = dim - half if flip else half
        self.n_trans = dim - n_cond
        self.net = BatchedMLP(
            num_components,
            n_cond,
            hidden_dims,
            self.n_trans * self.params_per_dim,
            activation=activation,
        )

    def _split(self, x):
        a, b = x[..., : self.split], x[..., self.split :]
        return (b, a) if self.flip else (a, b)  # (conditioner, transformed)

    def _join(self, cond, trans):
        return torch.cat([trans, cond] if self.flip else [cond, trans], dim=-1)

    def _elementwise(self, params, y, inverse):
        raise NotImplementedError

    def _couple(self, x, inverse):
        cond, trans = self._split(x)
        params = self.net(cond).unflatten(-1, (self.n_trans, self.params_per_dim))
        out, log_det = self._elementwise(params, trans, inverse)
        return self._join(cond, out), log_det.sum(-1)

    def to_base(self, x):
        return self._couple(x, inverse=False)

    def to_data(self, u):
        return self._couple(u, inverse=True)


class AffineCoupling(_Coupling):
    """RealNVP affine coupling (Dinh et al., 2017): ``u_b = x_b * exp(s(x_a)) + t(x_a)``."""

    def __init__(self, num_components, dim, hidden_dims, *, flip, activation):
        super().__init__(
            num_components, dim, hidden_dims, flip=flip, activation=activation, params_per_dim=2
        )

    def _elementwise(self, params, y, inverse):
        s, t = _soft_clamp(params[..., 0]), params[..., 1]
        if inverse:
            return (y - t) * torch.exp(-s), -s
        return y * torch.exp(s) + t, s


class SplineCoupling(_Coupling):
    """Neural-spline coupling (Durkan et al., 2019): rational-quadratic splines on [-bound, bound]."""

    def __init__(self, num_components, dim, hidden_dims, *, flip, activation, count_bins, bound):
        super().__init__(
            num_components,
            dim,
            hidden_dims,
            flip=flip,
            activation=activation,
            params_per_dim=3 * count_bins - 1,
        )
        self.count_bins = count_bins
        self.bound = bound

    def _elementwise(self, params, y, inverse):
        b = self.count_bins
        sizes, derivatives = params.split([2 * b, b - 1], dim=-1)
        return packed_rational_quadratic_spline(
            y,
            sizes.unflatten(-1, (2, b)),  # (K, M, T, 2, B): widths, heights
            derivatives,  # (K, M, T, B - 1)
            bound=self.bound,
            inverse=inverse,
        )


class MaskedAutoregressive(BatchedLayer):
    """MAF layer (Papamakarios et al., 2017): ``u_i = x_i * exp(s_i(x_<i)) + t_i(x_<i)``.

    Density evaluation (``to_base``) is one pass; sampling (``to_data``) takes D passes.
    """

    def __init__(self, num_components, dim, hidden_dims, *, activation):
        super().__init__()
        self.dim = dim
        self.net = BatchedMLP(
            num_components,
            dim,
            hidden_dims,
            2 * dim,
            activation=activation,
            masks=made_masks(dim, hidden_dims, 2),
        )

    def _params(self, x):
        params = self.net(x)
        return _soft_clamp(params[..., : self.dim]), params[..., self.dim :]

    def to_base(self, x):
        s, t = self._params(x)
        return x * torch.exp(s) + t, s.sum(-1)

    def to_data(self, u):
        x = torch.zeros_like(u)
        for _ in range(self.dim):
            s, t = self._params(x)
            x = (u - t) * torch.exp(-s)
        return x, -s.sum(-1)
