import os

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_mixflows import FlowComponents
from pyro_mixflows.infer import FitResult, _checkpoint, fit, load_checkpoint, save_checkpoint
from tests.conftest import perturb

K, D = 2, 2


def make_data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.5]])
    z = torch.arange(n) % K
    return centers[z] + 0.5 * torch.randn(n, D, generator=g)  # (N, D)


def make_pair(shift=False, init_seed=1):
    """A 2-component flow mixture with z enumerated in the model; optionally a global latent."""
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        comps = FlowComponents(K, D, flow="affine_coupling", num_layers=2, hidden_dims=(8,))
    perturb(comps, 0.05)

    @config_enumerate
    def model(x, subsample=None):
        pyro.module("components", comps)
        logits = pyro.param("logits", torch.zeros(K))
        offset = 0.0
        if shift:
            offset = pyro.sample("shift", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Categorical(logits=logits))
            pyro.sample("x", comps.component(z), obs=x[idx] - offset)

    def guide(x, subsample=None):
        if shift:
            loc = pyro.param("q_loc", torch.zeros(D))
            scale = F.softplus(pyro.param("q_scale", torch.full((D,), -2.0)))
            pyro.sample("shift", dist.Normal(loc, scale).to_event(1))

    return comps, model, guide


def params_now():
    store = pyro.get_param_store()
    return {name: store._params[name].detach().clone() for name in store.keys()}


def test_fit_minibatches_and_learns(float64):
    x = make_data()
    _, model, guide = make_pair()
    result = fit(model, guide, x, num_steps=25, batch_size=16, optim={"lr": 0.03}, seed=0)
    assert isinstance(result, FitResult)
    assert len(result.losses) == result.num_steps == 25
    assert result.val_losses == [] and result.best_step is None and not result.converged
    assert result.time > 0
    # 25 Adam steps at lr 0.03 on 48 points: the loss falls by far more than minibatch noise
    assert sum(result.losses[-8:]) / 8 < sum(result.losses[:8]) / 8 - 5.0


def test_subsample_indices_cover_epochs_and_full_batch_passes_none(float64):
    x = make_data(n=12)
    seen = []

    def model(x, subsample=None):
        seen.append(subsample)
        loc = pyro.param("loc", torch.zeros(D))
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[idx])

    def guide(x, subsample=None):
        pass

    fit(model, guide, x, loss=Trace_ELBO(), num_steps=6, batch_size=4, seed=0)
    batches = [s for s in seen[1:]]  # seen[0] is the initializing pass
    assert all(b.dtype == torch.long and b.shape == (4,) for b in batches)
    # each epoch of 3 batches is a permutation of the 12 rows
    for epoch in (batches[0:3], batches[3:6]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(12))

    def plain_model(x):  # no subsample keyword at all: fine for full batch
        loc = pyro.param("loc2", torch.zeros(D))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    result = fit(plain_model, lambda x: None, x, loss=Trace_ELBO(), num_steps=3)
    assert len(result.losses) == 3


def test_seed_makes_runs_reproducible(float64):
    x = make_data()
    runs = []
    for seed in (3, 3, 4):
        pyro.clear_param_store()
        _, model, guide = make_pair(shift=True)
        result = fit(model, guide, x, num_steps=8, batch_size=16, optim={"lr": 0.01}, seed=seed)
        runs.append((result.losses, params_now()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][0] != runs[2][0]


def test_early_stopping_restores_best_parameters(float64):
    x, x_val = make_data(), make_data(seed=1)
    _, model, guide = make_pair()
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    result = fit(
        model, guide, x, loss=loss, optim={"lr": 0.3}, num_steps=200, val_args=(x_val,),
        patience=2, eval_every=1, seed=0,
    )  # fmt: skip
    assert result.converged and result.stop_reason == "patience"
    assert result.num_steps < 200 and len(result.losses) == result.num_steps
    assert result.val_steps == list(range(1, result.num_steps + 1))
    assert result.best_loss == min(result.val_losses)
    assert result.best_step == result.val_steps[result.val_losses.index(result.best_loss)]
    assert all(v >= result.best_loss for v in result.val_losses[-2:])
    # the parameters in place are those of the best evaluation: same held-out loss, exactly
    assert loss.loss(model, guide, x_val) == result.best_loss


def test_patience_without_val_monitors_training_windows(float64):
    x = make_data()
    _, model, guide = make_pair()
    result = fit(model, guide, x, num_steps=7, patience=5, eval_every=3, seed=0)
    assert result.val_steps == [3, 6, 7]
    assert result.val_losses[0] == pytest.approx(sum(result.losses[:3]) / 3, rel=1e-12)
    assert result.val_losses[2] == pytest.approx(result.losses[6], rel=1e-12)


def _poisoned_pair(kind, after):
    calls = {"n": 0}

    def model(x, subsample=None):
        loc = pyro.param("loc", torch.zeros(D))
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > after:
                if kind == "loss":
                    loc = loc * float("nan")
                else:  # finite value, NaN gradient: d sqrt(u)/du at u = 0 times du/dloc = 0
                    loc = loc + 0.0 * torch.sqrt(loc - loc)
        with pyro.validation_enabled(False):  # let the NaN reach the loss
            with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
                pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[idx])

    return model, lambda x, subsample=None: None


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("kind, match", [("loss", "non-finite loss"), ("grad", "gradient of")])
def test_nan_guard_stops_and_keeps_last_good_state(float64, kind, match):
    x = make_data()
    model, guide = _poisoned_pair(kind, after=3)
    with pytest.raises(FloatingPointError, match=f"at step 3 .*{match}") as info:
        fit(model, guide, x, loss=Trace_ELBO(), num_steps=10, optim={"lr": 0.1}, seed=0)
    bad = params_now()["loc"]
    assert info.value.result.num_steps == 3 and len(info.value.result.losses) == 3
    assert (
        pyro.get_param_store()._params["loc"].grad is None
        or not torch.isnan(pyro.get_param_store()._params["loc"].grad).any()
    )
    pyro.clear_param_store()
    model, guide = _poisoned_pair(kind, after=100)
    fit(model, guide, x, loss=Trace_ELBO(), num_steps=3, optim={"lr": 0.1}, seed=0)
    assert torch.isfinite(bad).all() and torch.equal(bad, params_now()["loc"])


def test_resumed_run_is_bit_identical(float64, tmp_path):
    x = make_data()
    path = tmp_path / "run.pt"
    options = dict(num_steps=12, batch_size=20, optim={"lr": 0.01}, seed=5, eval_every=4)
    _, model, guide = make_pair(shift=True)
    full = fit(model, guide, x, val_args=(x,), **options)
    full_params = params_now()

    pyro.clear_param_store()
    _, model, guide = make_pair(shift=True)
    part = fit(model, guide, x, val_args=(x,), checkpoint=path, **{**options, "num_steps": 8})
    assert load_checkpoint(path, restore_rng=False)["step"] == 8
    assert part.losses == full.losses[:8]

    pyro.clear_param_store()
    torch.manual_seed(123)  # a different random state and a different initial module
    _, model, guide = make_pair(shift=True, init_seed=7)
    resumed = fit(model, guide, x, val_args=(x,), checkpoint=path, resume=True, **options)
    assert resumed.losses == full.losses
    assert resumed.val_losses == full.val_losses and resumed.best_step == full.best_step
    assert resumed.num_steps == 12
    now = params_now()
    assert now.keys() == full_params.keys()
    assert all(torch.equal(now[k], full_params[k]) for k in now)

    # resuming a finished run trains no further and gives the same result and best parameters
    pyro.clear_param_store()
    _, model, guide = make_pair(shift=True, init_seed=9)
    again = fit(model, guide, x, val_args=(x,), checkpoint=path, resume=True, **options)
    assert again.losses == full.losses and again.best_step == full.best_step
    assert all(torch.equal(params_now()[k], full_params[k]) for k in full_params)


def test_checkpoint_write_is_atomic(float64, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    pyro.param("loc", torch.ones(3))
    save_checkpoint(path, step=1)
    good = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind
    pyro.clear_param_store()
    assert load_checkpoint(path)["step"] == 1
    assert torch.equal(pyro.param("loc"), torch.ones(3))


def test_load_checkpoint_overwrites_in_place_and_restores_optimizer(float64, tmp_path):
    comps, model, guide = make_pair()
    x = make_data()
    optim = pyro.optim.Adam({"lr": 0.01})
    fit(model, guide, x, num_steps=3, optim=optim, seed=0)
    save_checkpoint(tmp_path / "c.pt", optim=optim, step=3)
    saved = params_now()
    weight = next(comps.parameters())
    with torch.no_grad():
        weight.add_(1.0)
    optim2 = pyro.optim.Adam({"lr": 0.01})
    state = load_checkpoint(tmp_path / "c.pt", optim=optim2)
    assert state["step"] == 3
    assert next(comps.parameters()) is weight  # the module still shares its tensor with the store
    assert all(torch.equal(v, params_now()[k]) for k, v in saved.items())
    assert set(optim2._state_waiting_to_be_consumed) == set(saved)
    with pytest.raises(ValueError, match="expected a pyro_mixflows checkpoint"):
        torch.save({"a": 1}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


def test_progress_bar_and_device(float64, capsys):
    x = make_data()
    _, model, guide = make_pair()
    fit(model, guide, x, num_steps=3, progress_bar=True, device="cpu")
    err = capsys.readouterr().err
    assert "fit" in err and "3/3" in err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_steps": 0}, "num_steps to be an int >= 1"),
        ({"batch_size": 0}, "batch_size to be an int >= 1"),
        ({"batch_size": 49}, "batch_size <= N = 48"),
        ({"eval_every": 0}, "eval_every"),
        ({"patience": 0}, "patience"),
        ({"optim": {"lr": 0.1, "momentum": 0.9}}, "unknown options \\['momentum'\\]"),
        ({"batch_size": 4, "subsample": torch.arange(3)}, "either batch_size or a subsample"),
        ({"resume": True}, "checkpoint path"),
        ({"batch_sise": 4}, "accept the keyword 'batch_sise'.*neither a fit option"),
        ({"val_args": (torch.full((4, 2), float("inf")),)}, "finite values in val_args\\[0\\]"),
    ],
)
def test_bad_input_raises_before_any_work(kwargs, match):
    x = make_data()
    _, model, guide = make_pair()
    with pytest.raises(ValueError, match=match):
        fit(model, guide, x, **kwargs)
    assert len(pyro.get_param_store()) == 0  # nothing ran


def test_non_finite_data_is_refused():
    x = make_data()
    x[3, 1] = float("nan")
    _, model, guide = make_pair()
    with pytest.raises(ValueError, match="finite values in args\\[0\\], got 1 NaN/inf"):
        fit(model, guide, x)
    with pytest.raises(TypeError, match="ELBO"):
        fit(model, guide, make_data(), loss="elbo")
    with pytest.raises(ValueError, match="accept the keyword 'subsample'.*; with batch_size"):
        fit(lambda x: None, guide, make_data(), batch_size=4)


def test_progress_bar_names_the_stage_shows_loss_per_row_and_why_it_stopped(float64, capsys):
    x = make_data()
    _, model, guide = make_pair()
    result = fit(model, guide, x, num_steps=6, progress_bar="pre-train", seed=0)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "fit: pre-train" in err and "stop=step limit reached" in err
    assert f"loss/row={result.losses[-1] / len(x):.4g}" in err  # per row, not the sum
    # Early stopping: the bar ends at the step reached (no stale total or ETA) and says why.
    pyro.clear_param_store()
    _, model, guide = make_pair()
    val = make_data(seed=1)
    result = fit(model, guide, x, num_steps=400, val_args=(val,), patience=1, eval_every=1,
                 optim={"lr": 0.5}, progress_bar="train", seed=0)  # fmt: skip
    assert result.stop_reason == "patience" and result.num_steps < 400
    err = capsys.readouterr().err.replace("\r", "\n")
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("fit: train: 100%") and f"{result.num_steps}/{result.num_steps}" in last
    assert f"best at step {result.best_step}" in last and "no improvement in 1 evaluations" in last
    assert "held-out/row=" in last


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_progress_bar_says_a_non_finite_loss_stopped_it(float64, capsys):
    x = make_data()
    model, guide = _poisoned_pair("loss", after=2)
    with pytest.raises(FloatingPointError):
        fit(model, guide, x, loss=Trace_ELBO(), num_steps=5, progress_bar=True, seed=0)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "stop=non-finite loss or gradient at step 2" in err


# --- schedulers, a custom loss, a per-step callback -------------------------------------------
def _adam_lrs(optim):
    """The learning rate of every per-parameter torch optimizer behind a Pyro scheduler."""
    return sorted(
        {group["lr"] for s in optim.optim_objs.values() for group in s.optimizer.param_groups}
    )


def test_exponential_lr_is_stepped_after_every_update(float64):
    x = make_data()
    _, model, guide = make_pair()
    sched = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.9}
    )
    fit(model, guide, x, optim=sched, num_steps=7, seed=0)
    lrs = _adam_lrs(sched)
    assert len(lrs) == 1
    assert lrs[0] == pytest.approx(0.01 * 0.9**7, rel=1e-12)  # one factor per update


def test_schedule_eval_steps_the_scheduler_at_evaluations(float64):
    x = make_data()
    _, model, guide = make_pair()
    sched = pyro.optim.StepLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "step_size": 1, "gamma": 0.5}
    )
    fit(model, guide, x, optim=sched, num_steps=10, eval_every=4, schedule="eval", seed=0)
    # Evaluations after updates 4, 8 and 10 (the last): three halvings.
    assert _adam_lrs(sched) == [pytest.approx(0.01 / 8, rel=1e-12)]


def test_reduce_lr_on_plateau_gets_the_monitored_loss(float64):
    x = make_data()
    _, model, guide = make_pair()
    sched = pyro.optim.ReduceLROnPlateau(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "patience": 0, "factor": 0.1}
    )
    # A huge threshold: no evaluation counts as an improvement, so each one cuts the rate.
    sched.kwargs["threshold"], sched.kwargs["threshold_mode"] = 1e9, "abs"
    fit(model, guide, x, optim=sched, num_steps=6, eval_every=2, val_args=(x,), seed=0)
    # First evaluation sets the best; the next two are "no improvement": two cuts.
    assert _adam_lrs(sched) == [pytest.approx(0.01 * 0.1**2, rel=1e-12)]
    with pytest.raises(ValueError, match="val_args or patience with pyro.optim.ReduceLROnPlateau"):
        fit(model, guide, x, optim=sched, num_steps=2)


def test_scheduler_state_survives_a_resume(float64, tmp_path):
    x = make_data()

    def run(steps, resume):
        pyro.clear_param_store()
        _, model, guide = make_pair()
        sched = pyro.optim.ExponentialLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.8}
        )
        fit(model, guide, x, optim=sched, num_steps=steps, seed=0, checkpoint=tmp_path / "c.pt",
            checkpoint_every=3, resume=resume)  # fmt: skip
        return sched, params_now()

    run(3, False)
    resumed_sched, resumed = run(6, True)
    (tmp_path / "c.pt").unlink()
    straight_sched, straight = run(6, False)
    assert _adam_lrs(resumed_sched) == _adam_lrs(straight_sched) == [pytest.approx(0.01 * 0.8**6)]
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "optim, match",
    [
        (lambda p: torch.optim.Adam(p, lr=0.1), "pyro.optim wrapper.*got a torch object Adam"),
        (
            lambda p: torch.optim.lr_scheduler.ExponentialLR(torch.optim.Adam(p), 0.9),
            "got a torch object ExponentialLR",
        ),
        (lambda p: "adam", "expected optim to be None"),
    ],
)
def test_unsupported_optimizers_are_refused(optim, match):
    x = make_data()
    _, model, guide = make_pair()
    with pytest.raises(TypeError, match=match):
        fit(model, guide, x, optim=optim([torch.zeros(1, requires_grad=True)]))
    assert len(pyro.get_param_store()) == 0
    with pytest.raises(ValueError, match="schedule in"):
        fit(model, guide, x, schedule="epoch")
    with pytest.raises(TypeError, match="callback to be callable"):
        fit(model, guide, x, callback=3)


def test_custom_loss_trains_its_parameters_with_early_stopping(float64):
    # A weighted least-squares fit of a location: loss(model, guide, x, w) = sum_i w_i |x_i - m|^2.
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(40, 2, generator=g) + 3.0, torch.rand(40, generator=g)
    x_val, w_val = torch.randn(20, 2, generator=g) + 3.0, torch.ones(20)

    def model(x, w, subsample=None):
        m = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            return (w[idx] * (x[idx] - m).square().sum(-1)).sum() * x.shape[0] / len(idx)

    def loss(model, guide, *args, **kwargs):
        return model(*args, **kwargs)

    result = fit(model, lambda *a, **k: None, x, w, loss=loss, optim={"lr": 0.1}, num_steps=300,
                 batch_size=10, val_args=(x_val, w_val), eval_every=10, seed=0)  # fmt: skip
    m = pyro.param("m").detach()
    exact = (w[:, None] * x).sum(0) / w.sum()
    assert (m - exact).norm() < 0.2  # SGD noise of batch 10 at lr 0.1 on a quadratic
    # The restored state is the best evaluation, and the held-out loss is the callable's.
    assert result.best_loss == min(result.val_losses)
    with torch.no_grad():
        assert result.best_loss == pytest.approx(float(model(x_val, w_val)))
    with pytest.raises(TypeError, match="return a scalar tensor"):
        fit(model, None, x, w, loss=lambda model, guide, *a, **k: torch.zeros(3), num_steps=1)


def test_callback_sees_every_step_and_can_stop(float64):
    x = make_data()
    _, model, guide = make_pair()
    seen = []

    def callback(step, value):
        seen.append((step, value))
        return step == 5

    result = fit(model, guide, x, num_steps=20, callback=callback, seed=0)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert [v for _, v in seen] == result.losses
    assert result.stop_reason == "callback" and result.num_steps == 5


def test_eval_initial_keeps_a_start_that_training_cannot_improve(float64):
    x = make_data()
    _, model, guide = make_pair()
    fit(model, guide, x, num_steps=200, optim={"lr": 0.02}, seed=0)  # a good start
    start = params_now()
    # A far too large learning rate only makes it worse; the step-0 evaluation is kept.
    result = fit(model, guide, x, num_steps=4, optim={"lr": 5.0}, val_args=(x,), eval_every=2,
                 eval_initial=True, seed=0)  # fmt: skip
    assert result.val_steps == [0, 2, 4] and result.best_step == 0
    for name, value in params_now().items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="val_args with eval_initial"):
        fit(model, guide, x, eval_initial=True)
