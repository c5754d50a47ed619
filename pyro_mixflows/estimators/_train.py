"""Training the estimator's candidates: step budgets that follow the data, and a held-out race.

Candidates of one architecture train together (:class:`~._candidates.CandidateMixtures`) through
:func:`~pyro_mixflows.infer.fit`, whose per-step callback is the :class:`Race`: every ``eval_every``
steps it scores the held-out rows under every candidate, keeps each candidate's best state, and
stops a candidate once it stops improving (``patience``) or once it cannot catch the best model
built so far within its remaining steps, even improving at its best recent rate (a learning-curve
rule). Stopped candidates leave the batch, so the rest trains at the cost of fewer components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from ..infer import FitResult, fit
from ._candidates import CandidateMixtures
from ._select import TIE_STANDARD_ERRORS, paired_standard_error

# Training rows up to which every step is a full batch (above: minibatches of MINIBATCH_ROWS).
FULL_BATCH_ROWS = 1024
MINIBATCH_ROWS = 256
# Adam's step size: exact gradients take larger steps than noisy ones.
LEARNING_RATE = {"full": 2e-3, "minibatch": 1e-3}
# Steps between held-out evaluations, and steps without improvement before a candidate stops.
EVAL_EVERY = {"full": 10, "minibatch": 10}
PATIENCE = {"full": 50, "minibatch": 150}
# Steps on the start's hard labels before the mixture's likelihood (partition starts only).
PRETRAIN_STEPS = {"full": 50, "minibatch": 50}
# Steps every candidate trains before the learning-curve rule may stop it.
PROBE_STEPS = {"full": 10, "minibatch": 50}
# Steps at most.
MAX_STEPS = {"full": 1500, "minibatch": 3000}
# Evaluations the learning-curve rule takes its slope over.
SLOPE_WINDOW = 3
# A candidate behind another that is still training must be able to catch it within this many
# patience windows at their recent rates.
CATCH_UP_PATIENCES = 2
# The last candidate running, once it stops improving, goes on from its best state for another
# patience window at this fraction of the step size (minibatches: their noise sets the plateau).
REFINE_LR_FACTOR = 0.1
REFINE = {"full": False, "minibatch": True}
# ... or as soon as this many evaluations in a row fall this many standard errors below its best.
DIVERGED_EVALUATIONS = 3
DIVERGED_STANDARD_ERRORS = 3.0


@dataclass
class Budget:
    """How a candidate trains: derived from the training rows, unless the user set it."""

    batch_size: int | None
    learning_rate: float
    max_steps: int
    eval_every: int
    patience: int
    pretrain_steps: int
    probe_steps: int
    weight_decay: float = 0.0

    def describe(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "max_steps": self.max_steps,
        }


def plan_budget(
    n_train: int,
    *,
    max_steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
) -> Budget:
    """The step budget of a fit on ``n_train`` training rows.

    Full-batch steps up to ``FULL_BATCH_ROWS`` rows (the gradient is exact and cheap there, and an
    evaluation every few steps costs little), minibatches of ``MINIBATCH_ROWS`` above; at most
    ``MAX_STEPS`` steps. ``max_steps``, ``batch_size`` and ``learning_rate`` override.
    """
    if batch_size is not None and batch_size >= n_train:
        batch_size = None
    if batch_size is None and n_train > FULL_BATCH_ROWS and max_steps is None:
        batch_size = MINIBATCH_ROWS
    mode = "full" if batch_size is None else "minibatch"
    if max_steps is None:
        max_steps = MAX_STEPS[mode]
    return Budget(
        batch_size=batch_size,
        learning_rate=LEARNING_RATE[mode] if learning_rate is None else float(learning_rate),
        max_steps=int(max_steps),
        eval_every=min(EVAL_EVERY[mode], max_steps),
        patience=PATIENCE[mode],
        pretrain_steps=min(PRETRAIN_STEPS[mode], max_steps // 4),
        probe_steps=PROBE_STEPS[mode],
    )


@dataclass
class Entry:
    """One candidate in the race: its best held-out state and where it stands."""

    name: int
    pretrain: int  # steps on its start's labels before the likelihood
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, mean held-out LL)
    losses: list[float] = field(default_factory=list)  # training loss per step
    best_mean: float = -math.inf
    best_lp: torch.Tensor | None = None
    best_state: dict | None = None
    best_step: int = 0
    steps: int = 0
    stop: str | None = None
    refined: bool = False  # went on from its best state at a lower step size once
    last_lp: torch.Tensor | None = None  # the held-out log-densities of the last evaluation


class Race:
    """``fit``'s callback for a :class:`CandidateMixtures` (see the module docstring).

    Args:
        module: the candidates being trained.
        x_val: held-out rows (n_val, D).
        budget: the step budget.
        rivals: held-out per-row log-densities of models already built (the Gaussian starts,
            candidates of other architectures), as ``(lp, gaussian)``; a Gaussian must be beaten
            by more than ``TIE_STANDARD_ERRORS`` paired standard errors.
        pretrain: (C,) steps of hard-label training per candidate (0 for EM starts).
        final_labels: (C, N) the labels after pre-training (semi-supervised rows, else -1).
    """

    def __init__(self, module, x_val, budget: Budget, rivals, pretrain, final_labels) -> None:
        self.module = module
        self.mode = "full" if budget.batch_size is None else "minibatch"
        self.optim = None  # the driver's pyro.optim optimizer (its step size is lowered to refine)
        self.x_val = x_val
        self.budget = budget
        self.rivals = rivals
        self.final_labels = final_labels
        self.entries = [Entry(c, int(p)) for c, p in enumerate(pretrain)]
        self.active = list(range(module.num_candidates))  # module position -> entry index
        self.step = 0  # steps done before the current fit call
        self.local_step = 0  # steps done in the current fit call
        self.keep: list[int] = []  # module positions still running after the last stop
        self.initial: dict[int, tuple] = {}  # entry -> (mean, lp, state) of its start

    @property
    def finished(self) -> bool:
        return not self.active

    def __call__(self, local_step: int, loss: float) -> bool:
        self.local_step = local_step
        step = self.step + local_step
        losses = self.module.candidate_losses.tolist()
        for pos, e in enumerate(self.active):
            entry = self.entries[e]
            entry.steps = step
            entry.losses.append(losses[pos])
            if step == entry.pretrain and entry.pretrain > 0:
                self.module.set_labels(pos, self.final_labels[e])
        if step % self.budget.eval_every and step < self.budget.max_steps:
            return False
        return self._evaluate(step)

    @torch.no_grad()
    def start(self) -> None:
        """Score the held-out rows before the first step (the starts themselves)."""
        if len(self.x_val):
            lp = self.module(self.x_val)  # (n_val, C)
            for pos, e in enumerate(self.active):
                entry = self.entries[e]
                mean = float(lp[:, pos].mean())
                entry.history.append((0, mean))
                entry.last_lp = lp[:, pos]
                self.initial[e] = (mean, lp[:, pos].clone(), self.module.candidate_state(pos))
                if entry.pretrain == 0:
                    entry.best_mean, entry.best_lp, entry.best_state = self.initial[e]

    @torch.no_grad()
    def _evaluate(self, step: int) -> bool:
        lp = self.module(self.x_val) if len(self.x_val) else None  # (n_val, C)
        stopping = []
        for pos, e in enumerate(self.active):
            entry = self.entries[e]
            if lp is not None:
                mean = float(lp[:, pos].mean())
                entry.history.append((step, mean))
                entry.last_lp = lp[:, pos]
                if step >= entry.pretrain and mean > entry.best_mean:
                    entry.best_mean, entry.best_lp, entry.best_step = mean, lp[:, pos].clone(), step
                    entry.best_state = self.module.candidate_state(pos)
            entry.stop = self._why_stop(entry, step)
            if entry.stop == "refine":
                self._refine(pos, entry, step)
            elif entry.stop is not None:
                stopping.append(pos)
        if not stopping:
            return False
        for pos in stopping:
            entry = self.entries[self.active[pos]]
            if entry.best_state is None:  # never evaluated (no held-out rows): as it is now
                entry.best_state = self.module.candidate_state(pos)
                entry.best_step = step
        self.keep = [pos for pos in range(len(self.active)) if pos not in stopping]
        self.active = [self.active[pos] for pos in self.keep]
        return True  # end this fit call: the driver drops them from the batch

    def non_finite(self) -> None:
        """Stop the candidates whose last training loss was not finite (all of them when none
        was: a gradient was), each at its best state or else its start; the step that failed
        was not applied (:func:`~pyro_mixflows.infer.fit` raised before updating)."""
        losses = self.module.candidate_losses
        bad = [pos for pos in range(len(self.active)) if not math.isfinite(float(losses[pos]))]
        stopping = bad or list(range(len(self.active)))
        for pos in stopping:
            e = self.active[pos]
            entry = self.entries[e]
            entry.stop = "non-finite"
            if entry.best_state is None:
                if e in self.initial:
                    entry.best_mean, entry.best_lp, entry.best_state = self.initial[e]
                else:  # no held-out rows: its state now (the last update was finite)
                    entry.best_state = self.module.candidate_state(pos)
        self.keep = [pos for pos in range(len(self.active)) if pos not in stopping]
        self.active = [self.active[pos] for pos in self.keep]

    def _why_stop(self, entry: Entry, step: int) -> str | None:
        if step >= self.budget.max_steps:
            return "max_steps"
        if entry.best_lp is None:
            return None
        trained = step - entry.pretrain
        can_refine = (
            len(self.active) == 1 and self.optim is not None and REFINE[self.mode]
            and not entry.refined
        )  # fmt: skip
        if step - entry.best_step >= self.budget.patience and trained > 0:
            return "refine" if can_refine else "patience"
        if can_refine and self._diverged(entry):
            return "refine"
        if trained < self.budget.probe_steps:
            return None
        slope = self._slope(entry)
        # what is built already: reachable only by improving at its recent rate to the end
        reach = entry.best_mean + slope * (self.budget.max_steps - step)
        if reach < self._target(entry):
            return "cannot win"
        # a candidate ahead in this race: catch it within the horizon, or stop
        horizon = CATCH_UP_PATIENCES * self.budget.patience
        for other in self.entries:
            if other is entry or other.stop is not None or other.best_mean <= entry.best_mean:
                continue
            if step - other.pretrain < self.budget.probe_steps:
                continue
            closing = slope - self._slope(other)
            if closing <= 0 or other.best_mean - entry.best_mean > closing * horizon:
                return "cannot win"
        return None

    def _refine(self, pos: int, entry: Entry, step: int) -> None:
        """Go on from the best state at ``REFINE_LR_FACTOR`` times the step size (once): the last
        candidate running has stopped improving at the first step size."""
        self.module.load_candidate_state(pos, entry.best_state)
        for optimizer in self.optim.optim_objs.values():
            for group in optimizer.param_groups:
                group["lr"] *= REFINE_LR_FACTOR
        entry.refined, entry.stop, entry.best_step = True, None, step

    def _diverged(self, entry: Entry) -> bool:
        """Whether the last ``DIVERGED_EVALUATIONS`` evaluations all fell below the best by more
        than ``DIVERGED_STANDARD_ERRORS`` paired standard errors: the step size is too large for
        where training is (it need not wait out its patience to refine)."""
        recent = [m for _, m in entry.history[-DIVERGED_EVALUATIONS:]]
        if len(recent) < DIVERGED_EVALUATIONS or entry.best_step >= entry.history[-1][0]:
            return False
        margin = DIVERGED_STANDARD_ERRORS * paired_standard_error(entry.best_lp, entry.last_lp)
        return all(m < entry.best_mean - margin for m in recent)

    def _slope(self, entry: Entry) -> float:
        """The entry's recent rate of improvement (held-out mean per step, at least 0)."""
        recent = [(s, m) for s, m in entry.history if s >= entry.pretrain][-(SLOPE_WINDOW + 1) :]
        if len(recent) < 2:
            return 0.0
        (s0, m0), (s1, m1) = recent[0], recent[-1]
        return max(0.0, (m1 - m0) / (s1 - s0))

    def _target(self, entry: Entry) -> float:
        """The held-out mean this candidate must exceed to be kept over what is built already
        (the Gaussians by a tie's margin, other capacities' candidates, stopped candidates)."""
        target = -math.inf
        for lp, gaussian in self.rivals:
            margin = (
                TIE_STANDARD_ERRORS * paired_standard_error(entry.best_lp, lp) if gaussian else 0
            )
            target = max(target, float(lp.mean()) + margin)
        for other in self.entries:
            if other is not entry and other.stop is not None and other.best_lp is not None:
                target = max(target, other.best_mean)
        return target


def adam_options(budget: Budget, device: torch.device) -> dict:
    """``torch.optim.Adam``'s options for a budget: its step size and weight decay, and torch's
    fused kernel on the CPU and CUDA (one kernel per parameter tensor)."""
    options = {"lr": budget.learning_rate, "weight_decay": budget.weight_decay}
    if device.type in ("cpu", "cuda"):
        options["fused"] = True
    return options


def _slice_optim_state(state: dict, module: CandidateMixtures, keep: list[int]) -> dict:
    """Pyro's per-parameter Adam states (``PyroOptim.get_state``) cut to the candidates ``keep``."""
    out = {}
    for full_name, opt_state in state.items():
        name = full_name.split("$$$", 1)[-1]
        rows = module.row_index(name, keep)
        per_param = {}
        for key, value in opt_state["state"].items():
            per_param[key] = {
                k: (v[rows.to(v.device)] if torch.is_tensor(v) and v.dim() > 0 else v)
                for k, v in value.items()
            }
        out[full_name] = {**opt_state, "state": per_param}
    return out


def race(
    module: CandidateMixtures,
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    budget: Budget,
    rivals: list,
    pretrain: list[int],
    final_labels: torch.Tensor,
    progress_bar: bool | str = False,
) -> list[Entry]:
    """Train the candidates of ``module`` until each has stopped; their entries, best state in
    ``best_state`` (rows of that candidate), ``steps`` and ``stop`` (see :class:`Race`)."""
    state = Race(module, x_val, budget, rivals, pretrain, final_labels)
    state.start()
    options = adam_options(budget, x_train.device)
    optim = pyro.optim.Adam(options)
    while True:
        state.optim = optim
        pyro.clear_param_store()  # this module's parameters are registered under one name
        state.local_step = 0
        try:
            result = fit(
                module.model,
                module.guide,
                x_train,
                loss=module.loss,
                optim=optim,
                num_steps=budget.max_steps - state.step,
                batch_size=budget.batch_size,
                callback=state,
                progress_bar=progress_bar,
            )
            state.step += result.num_steps
        except FloatingPointError:  # a candidate's loss or gradient: stop it, race on
            state.non_finite()
            state.step += state.local_step
        if state.finished or state.step >= budget.max_steps:
            break
        saved = _slice_optim_state(optim.get_state(), module, state.keep)
        module = module.subset(state.keep)
        state.module = module
        optim = pyro.optim.Adam(options)
        optim.set_state(saved)
    for pos, e in enumerate(state.active):  # still running at the step limit
        entry = state.entries[e]
        entry.stop = "max_steps"
        if entry.best_state is None:
            entry.best_state = module.candidate_state(pos)
    return state.entries


def train_vmonf(
    vm,
    x_train: torch.Tensor,
    y_train: torch.Tensor | None,
    x_val: torch.Tensor,
    budget: Budget,
    pretrain_labels: torch.Tensor | None,
    progress_bar: bool | str = False,
) -> FitResult:
    """One ``VMoNF`` trained on its ELBO with held-out early stopping (the path of weights and
    assignments that ``CandidateMixtures`` does not batch: Dirichlet and Dirichlet-process weights,
    the amortized q(k | x)). Partition starts first train ``budget.pretrain_steps`` steps on their
    hard labels ``pretrain_labels`` (N,)."""
    labelled = torch.zeros(len(x_train), dtype=torch.bool, device=x_train.device)
    if y_train is not None:
        labelled = y_train >= 0
    x_unl = x_train[~labelled]
    if len(x_unl) == 0:
        raise ValueError("expected at least one unlabelled or held-out row; got only labels")
    extra = (x_train[labelled], y_train[labelled]) if bool(labelled.any()) else ()
    exact = vm.exact_loss_applies()
    optim = adam_options(budget, x_train.device)
    pre = None
    steps = budget.max_steps
    if pretrain_labels is not None and budget.pretrain_steps > 0:
        pyro.clear_param_store()
        pre = fit(
            vm.model_labelled,
            vm.guide_labelled,
            x_train,
            pretrain_labels,
            loss=vm.exact_loss if exact else Trace_ELBO(),
            num_steps=budget.pretrain_steps,
            optim=pyro.optim.Adam(optim),
            batch_size=_batch(budget, len(x_train)),
            progress_bar=progress_bar and f"{progress_bar}, pre-train on the start's clusters",
        )
        steps -= pre.num_steps
    pyro.clear_param_store()
    has_val = len(x_val) > 0
    result = fit(
        vm.model,
        vm.guide,
        x_unl,
        *extra,
        loss=vm.exact_loss if exact else TraceEnum_ELBO(max_plate_nesting=1),
        num_steps=max(1, steps),
        optim=pyro.optim.Adam(optim),
        batch_size=_batch(budget, len(x_unl)),
        val_args=(x_val,) if has_val else None,
        patience=max(1, budget.patience // budget.eval_every) if has_val else None,
        eval_every=budget.eval_every,
        progress_bar=progress_bar,
    )
    if pre is not None:
        result = replace(result, num_steps=result.num_steps + pre.num_steps)
    return result


def _batch(budget: Budget, n: int) -> int | None:
    return budget.batch_size if budget.batch_size is not None and budget.batch_size < n else None
