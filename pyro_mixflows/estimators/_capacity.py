"""The candidates of one capacity: models built from starts, trained, and scored on held-out rows."""

from __future__ import annotations

import torch

from ..flows import FlowComponents
from ..infer import FitResult
from ..models.vmonf import VMoNF
from ..starts import Start
from ..starts._em import EM_STARTS
from ._candidates import CandidateMixtures
from ._data import Data, Settings
from ._select import Candidate
from ._train import Budget, race, train_vmonf

# The Gaussian start itself, as a capacity: no flow layers.
GAUSSIAN = {"num_layers": 0}


def build(data: Data, K: int, arch: dict, settings: Settings) -> VMoNF:
    """A ``VMoNF`` of K components (full affine maps under ``arch``'s flow layers)."""
    components = FlowComponents(K, data.xs.shape[1], affine="full", **arch)
    vm = VMoNF(
        components,
        weights=settings.weights,
        concentration=settings.weight_concentration,
        assignment=settings.assignment,
    )
    return vm.to(device=data.xs.device, dtype=data.xs.dtype)


def place(vm: VMoNF, start: Start, concentration: float) -> None:
    """Set the components' affine maps and the mixture weights of ``vm`` from a start.

    Weights: "learned" logits = log weights; "dirichlet" q = Dirichlet(alpha + n_k); Dirichlet
    process: q(v) = the sticks' conjugate posterior given the start's labels,
    Beta(1 + n_k, alpha + n_{k+1} + ... + n_K) (a small alpha puts the prior's sticks so close
    to 1 that float32 draws and their gradients break).
    """
    start.place(vm.components)
    K = start.num_components
    counts = torch.bincount(start.labels, minlength=K).to(start.loc.dtype)
    with torch.no_grad():
        if vm.weights == "learned":
            vm.weight_logits.copy_(start.logits)
        elif vm.weights == "dirichlet":
            vm.weight_concentration_q = concentration + counts
        elif vm.weights == "dirichlet_process":
            after = counts.flip(0).cumsum(0).flip(0)[1:]  # n_{k+1} + ... + n_K for k < K
            vm.stick_a = 1.0 + counts[:-1]
            vm.stick_b = (concentration + after).clamp_min(1.0)


def flow_parameters(vm: VMoNF) -> int:
    return sum(p.numel() for p in vm.components.layers.parameters())


@torch.no_grad()
def scored(vm: VMoNF, capacity: dict, name: str, data: Data, **fields) -> Candidate:
    vm.eval()
    x_val = data.x_val
    lp = vm.mixture().log_prob(x_val) if len(x_val) else x_val.new_zeros(0)
    return Candidate(name, dict(capacity), vm, lp, flow_parameters=flow_parameters(vm), **fields)


def _batched(settings: Settings) -> bool:
    """Whether the candidates train side by side (``CandidateMixtures``): point-estimate or fixed
    weights and z summed out in the model."""
    return settings.weights in ("learned", "uniform") and settings.assignment == "enumerate"


def _progress(settings: Settings, what: str) -> bool | str:
    return what if settings.verbose else False


def train_capacity(
    data: Data,
    starts: list[Start],
    capacity: dict,
    settings: Settings,
    budget: Budget,
    built: list[Candidate],
) -> list[Candidate]:
    """The flows of one capacity trained from every start: one batched race when the settings
    allow it (``_batched``), else one ``VMoNF`` per start."""
    if not starts:
        return []
    arch = settings.architecture_of(capacity)
    K = starts[0].num_components
    y_train = data.y_train
    n_train = int(data.train_mask.sum())
    final = torch.full((n_train,), -1, dtype=torch.long, device=data.xs.device)
    if y_train is not None:
        final = torch.where(y_train >= 0, y_train, final)
    pretrain = [0 if s.name in EM_STARTS else budget.pretrain_steps for s in starts]
    if not _batched(settings):
        found = []
        for start, steps in zip(starts, pretrain, strict=True):
            vm = build(data, K, arch, settings)
            place(vm, start, settings.weight_concentration)
            labels = torch.where(final >= 0, final, start.labels) if steps else None
            result = train_vmonf(
                vm, data.x_train, y_train, data.x_val, budget, labels,
                _progress(settings, f"{start.name} start, {_describe(arch)}"),
            )  # fmt: skip
            stop = "patience" if result.converged else "max_steps"
            found.append(
                scored(
                    vm, capacity, start.name, data, result=result, steps=result.num_steps, stop=stop
                )  # fmt: skip
            )
        return found
    C = len(starts)
    components = FlowComponents(C * K, data.xs.shape[1], affine="full", **arch)
    components = components.to(device=data.xs.device, dtype=data.xs.dtype)
    components.set_gaussian(
        torch.cat([s.loc for s in starts]), torch.cat([s.scale_tril for s in starts])
    )
    learned = settings.weights == "learned"
    logits = torch.stack([s.logits for s in starts]) if learned else torch.zeros(C, K)
    labels = torch.stack(
        [torch.where(final >= 0, final, s.labels) if p else final for s, p in zip(starts, pretrain, strict=True)]
    )  # fmt: skip
    module = CandidateMixtures(components, C, logits.to(data.xs), labels, learn_weights=learned)
    rivals = [(c.val_log_probs, c.gaussian) for c in built]
    entries = race(
        module, data.x_train, data.x_val, budget, rivals, pretrain, final.expand(C, -1),
        _progress(settings, f"{_describe(arch)} from {', '.join(s.name for s in starts)}"),
    )  # fmt: skip
    found = []
    for start, entry in zip(starts, entries, strict=True):
        vm = build(data, K, arch, settings)
        with torch.no_grad():
            for name, p in vm.components.named_parameters():
                p.copy_(entry.best_state[name])
            if learned:
                vm.weight_logits.copy_(entry.best_state["logits"])
        result = _history(entry, len(data.val_idx))
        found.append(
            scored(
                vm, capacity, start.name, data, result=result, steps=entry.steps, stop=entry.stop
            )  # fmt: skip
        )
    return found


def _describe(arch: dict) -> str:
    return f"{arch['num_layers']} {arch['flow']} layers {tuple(arch['hidden_dims'])}"


def _history(entry, n_val: int) -> FitResult:
    """A ``FitResult`` of one raced candidate (held-out losses as sums over the held-out rows)."""
    steps = [s for s, _ in entry.history]
    val = [-m * max(n_val, 1) for _, m in entry.history]
    return FitResult(
        losses=list(entry.losses),
        val_losses=val,
        val_steps=steps,
        best_step=entry.best_step,
        best_loss=-entry.best_mean * max(n_val, 1) if entry.best_lp is not None else None,
        converged=entry.stop in ("patience", "cannot win"),
        num_steps=entry.steps,
        stop_reason=entry.stop or "num_steps",
    )
