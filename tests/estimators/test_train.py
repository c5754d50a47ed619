"""The estimator's training: budgets that follow the data, and the held-out race's stopping rules."""

import math

import pytest
import torch

from pyro_mixflows.estimators._train import (
    FULL_BATCH_ROWS,
    MINIBATCH_ROWS,
    Budget,
    Race,
    plan_budget,
)

N_VAL = 8


class Scripted:
    """A stand-in for ``CandidateMixtures`` whose held-out mean log-density follows a script."""

    def __init__(self, curves, n_train=5):
        self.curves = list(curves)
        self.num_candidates = len(self.curves)
        self.step = 0
        self.candidate_losses = torch.zeros(self.num_candidates)
        self.labels = torch.full((self.num_candidates, n_train), 7)
        self.order = list(range(self.num_candidates))  # module position -> curve

    def __call__(self, x):
        means = torch.tensor([self.curves[c](self.step) for c in self.order])
        return means.expand(len(x), -1)  # (n_val, C): every row the same

    def candidate_state(self, pos):
        return {"step": self.step}

    def set_labels(self, pos, labels):
        self.labels[pos] = labels

    def load_candidate_state(self, pos, state):
        self.restored = state["step"]


def _budget(**kw):
    base = dict(batch_size=None, learning_rate=1e-3, max_steps=400, eval_every=10, patience=50,
                pretrain_steps=0, probe_steps=30)  # fmt: skip
    return Budget(**{**base, **kw})


class _Optim:  # stands in for pyro.optim.Adam: its torch optimizers' step sizes
    def __init__(self):
        self.optim_objs = {0: torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)}


def _run(module, budget, rivals=(), pretrain=None, final=None, optim=None):
    C = module.num_candidates
    race = Race(module, torch.zeros(N_VAL, 2), budget, list(rivals), pretrain or [0] * C,
                final if final is not None else torch.full((C, 5), -1))  # fmt: skip
    race.optim = optim
    for step in range(1, budget.max_steps + 1):
        module.step = step
        if race(step, 0.0):  # some candidates stopped: keep the others' positions
            module.order = [module.order[p] for p in race.keep]
            if race.finished:
                break
    return race.entries


def test_budget_follows_the_rows():
    small = plan_budget(100)
    assert small.batch_size is None and small.max_steps >= 1000
    large = plan_budget(FULL_BATCH_ROWS * 10)
    assert large.batch_size == MINIBATCH_ROWS
    assert plan_budget(50, batch_size=10).batch_size == 10
    assert plan_budget(50, batch_size=500).batch_size is None  # a batch of every row
    assert plan_budget(10_000, max_steps=40, learning_rate=0.1).max_steps == 40
    assert plan_budget(10_000, learning_rate=0.1).learning_rate == 0.1


def test_a_candidate_that_stops_improving_stops_after_its_patience():
    peak = Scripted([lambda s: -abs(s - 100) / 100])  # best at step 100
    (entry,) = _run(peak, _budget())
    assert entry.stop == "patience" and entry.best_step == 100
    assert entry.steps == 150 and entry.best_state == {"step": 100}


def test_a_candidate_below_the_gaussian_and_falling_stops_after_the_probe():
    gaussian = torch.zeros(N_VAL)
    falling = Scripted([lambda s: -s / 1000])
    (entry,) = _run(falling, _budget(), rivals=[(gaussian, True)])
    assert entry.stop == "cannot win" and entry.steps == 30  # the first evaluation after the probe
    rising = Scripted([lambda s: -0.2 + s / 1000])  # below now, above before the step limit
    (entry,) = _run(rising, _budget(), rivals=[(gaussian, True)])
    assert entry.stop == "max_steps" and entry.best_mean > 0


def test_the_candidate_behind_the_leader_stops_unless_it_closes_the_gap():
    leader = lambda s: math.log(1 + s) / 10  # noqa: E731
    behind = lambda s: math.log(1 + s) / 10 - 0.2  # noqa: E731 (as fast, 0.2 behind: stops)
    catching = lambda s: math.log(1 + s) / 10 - 0.2 + s / 500  # noqa: E731 (catches up fast)
    first, second = _run(Scripted([leader, behind]), _budget())
    assert second.stop == "cannot win" and second.steps == 30 and first.steps > 30
    first, second = _run(Scripted([leader, catching]), _budget())
    assert second.steps > 100


def test_pretraining_is_not_judged_and_its_labels_give_way():
    module = Scripted([lambda s: -s / 1000])  # falls from the start
    final = torch.full((1, 5), -1)
    (entry,) = _run(module, _budget(pretrain_steps=50), rivals=[(torch.zeros(N_VAL), True)],
                    pretrain=[50], final=final)  # fmt: skip
    assert entry.stop == "cannot win" and entry.steps == 80  # 50 pre-training + the 30-step probe
    assert entry.best_step == 50  # pre-training states are never kept
    assert bool((module.labels == -1).all())  # its labels became the final ones at step 50


def test_a_lone_minibatch_run_refines_once_when_it_plateaus_or_falls_below_its_best():
    optim = _Optim()
    falls = Scripted([lambda s: -abs(s - 30) / 10])  # best at 30, then falling fast
    (entry,) = _run(falls, _budget(batch_size=64), optim=optim)
    assert entry.refined and falls.restored == 30  # went back to its best state ...
    assert optim.optim_objs[0].param_groups[0]["lr"] == pytest.approx(0.1)  # ... at a tenth
    # three evaluations below the best (40, 50, 60): refined at 60, not after the patience
    assert entry.stop == "patience" and entry.best_step == 60 and entry.steps == 110
    full = Scripted([lambda s: -abs(s - 30) / 10])  # full batches: no refinement
    (entry,) = _run(full, _budget(), optim=_Optim())
    assert not entry.refined and entry.stop in ("patience", "cannot win")
