"""Deep latent Gaussian mixtures on binarized digits: Gaussian VAE vs mixture posteriors.

Binarized scikit-learn digits (pixel >= 8 -> 1), a fixed 1197/300/300 train/validation/test
split, latent size 8 and one hidden layer of 128 units in both encoder and decoder for every
method:

(a) plain Gaussian VAE (``MixtureVAE`` with K = 1 and a fixed N(0, I) prior, which the tests
    show to be exactly the textbook Gaussian VAE),
(b) mixture posterior and mixture prior, K = 5 (softmax weights),
(c) Dirichlet-process mixture prior truncated at T = 10, α = 1, with global sticks (Kumaraswamy
    posterior q(v)) and a softmax head for the posterior responsibilities (the default),
(c_local, on request) the per-point sticks of Nalisnick et al., whose π(v), v ~ q(v | x), are
    both the prior weights and the posterior responsibilities,
(d) flow components: (b) with each q_k an affine-coupling flow of a Gaussian.

Each method is trained with ``SVI`` + ``TraceEnum_ELBO(max_plate_nesting=1)`` (Adam, lr 3e-3,
minibatches of 100) for ``--epochs`` epochs, keeping the parameters with the best validation
ELBO (checked every 10 epochs). Reported on the test set: the importance-sampled
log-likelihood (``--is-samples`` draws, default 500, sticks integrated out exactly), the ELBO
(100 draws per point, same proposal), the 5-NN classification error (fitted on the training
set) of the posterior mean E_q[z | x] = Σ_k r_k(x) μ_k(x) ("5-NN mean", the target) and of the
most probable component's mean ("5-NN top"), the number of components that are the most
probable one for some test image ("used") and the training time. Runs single-threaded
(``torch.set_num_threads(1)`` by default).

    python -m benchmarks.mixture_vae                       # 3 seeds, methods a b c d
    python -m benchmarks.mixture_vae --methods a c_local   # the per-point sticks
    python -m benchmarks.mixture_vae --quick               # a smoke run
    python -m benchmarks.mixture_vae --untied              # tie_components=False (before #17)
    python -m benchmarks.mixture_vae --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 16   # runs side by side

With ``--jobs N`` the (method, seed) runs go to N worker processes (each with ``--threads``
torch threads); every run reseeds itself, so the numbers are those of the sequential run. The
summary gives, per method, the mean change of the 5-NN error against (a) over the seeds with
its standard error: one seed's 300 test images carry a binomial standard error of about 0.017.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam
from sklearn.neighbors import KNeighborsClassifier

from pyro_mixflows.datasets import load_digits
from pyro_mixflows.models import MixtureVAE

LATENT_DIM = 8
HIDDEN = (128,)
METHODS = {  # code: (label, MixtureVAE options)
    "a": ("a: Gaussian VAE", dict(num_components=1, learn_prior=False)),
    "b": ("b: mixture K=5", dict(num_components=5)),
    "c": ("c: DP T=10, global sticks", dict(num_components=10, weights="kumaraswamy", alpha=1.0)),
    "c_local": (
        "c_local: DP T=10, per-point",
        dict(num_components=10, weights="kumaraswamy", alpha=1.0, sticks="local"),
    ),
    "d": (
        "d: flow mixture K=5",
        dict(
            num_components=5,
            flow="affine_coupling",
            flow_kwargs=dict(num_layers=2, hidden_dims=(64,)),
        ),
    ),
}


def split_digits():
    """Binarized digits and a fixed (seed 0) 1197/300/300 split."""
    X, y = load_digits(binarize=True)
    order = np.random.default_rng(0).permutation(len(X))
    parts = np.split(order, [len(X) - 600, len(X) - 300])
    return [(torch.tensor(X[p], dtype=torch.float32), y[p]) for p in parts]


def latent_codes(vae, x):
    """Two point summaries of q(z | x), (N, D) each: the posterior mean and the top component's mean.

    mean: E_q[z | x] = Σ_k r_k(x) μ_k(x) (``MixtureVAE.latent_mean``); top: μ_k*(x) with
    k* = argmax_k r_k(x). Both are μ(x) for the Gaussian VAE.
    """
    probs, means = vae.encode(x)  # (N, K), (N, K, D)
    top = means[torch.arange(len(x)), probs.argmax(-1)]
    return vae.latent_mean(x), top


def knn_error(train_codes, y_train, test_codes, y_test):
    knn = KNeighborsClassifier(5).fit(train_codes.numpy(), y_train)
    return 1.0 - knn.score(test_codes.numpy(), y_test)


def run(kwargs, data, seed, epochs, is_samples, batch_size=100):
    (x_tr, y_tr), (x_va, _), (x_te, y_te) = data
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = MixtureVAE(x_tr.shape[1], LATENT_DIM, hidden_dims=HIDDEN, **kwargs)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 3e-3}), TraceEnum_ELBO(max_plate_nesting=1))
    N = len(x_tr)
    best, best_state = -float("inf"), None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(N).split(batch_size):
            svi.step(x_tr, subsample=idx)
        if epoch % 10 == 0 or epoch == epochs:
            val = vae.log_weights(x_va, 10).mean().item()  # ELBO, 10 draws per point
            if val > best:
                best, best_state = val, copy.deepcopy(vae.state_dict())
    seconds = time.perf_counter() - start
    vae.load_state_dict(best_state)
    test_ll = vae.importance_log_likelihood(x_te, is_samples).mean().item()
    test_elbo = vae.log_weights(x_te, 100).mean().item()
    (mean_tr, top_tr), (mean_te, top_te) = latent_codes(vae, x_tr), latent_codes(vae, x_te)
    probs = vae.encode(x_te)[0]
    return dict(
        ll=test_ll,
        elbo=test_elbo,
        knn=knn_error(mean_tr, y_tr, mean_te, y_te),
        knn_top=knn_error(top_tr, y_tr, top_te, y_te),
        used=int((probs.argmax(-1).bincount(minlength=probs.shape[-1]) > 0).sum()),
        seconds=seconds,
    )


def _options(code, untied):
    """The method's MixtureVAE options, with ``tie_components=False`` when ``untied``."""
    kwargs = dict(METHODS[code][1])
    if untied:
        kwargs["tie_components"] = False
    return kwargs


def _job(code, seed, epochs, is_samples, threads, untied):
    """One (method, seed) run in a worker process."""
    torch.set_num_threads(threads)
    return code, seed, run(_options(code, untied), split_digits(), seed, epochs, is_samples)


def _print_row(label, seed, r):
    print(
        f"{label:<30}{seed:>5}{r['ll']:>12.3f}{r['elbo']:>11.3f}{r['knn']:>11.3f}"
        f"{r['knn_top']:>10.3f}{r['used']:>6}{r['seconds']:>9.1f}",
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--is-samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["a", "b", "c", "d"], choices=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="5 epochs, one seed, 50 IS draws")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the runs")
    parser.add_argument(
        "--untied", action="store_true", help="tie_components=False (the objective before #17)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"expected --jobs >= 1, got {args.jobs}")
    if args.quick:
        args.seeds, args.epochs, args.is_samples = args.seeds[:1], 5, 50
    torch.set_num_threads(args.threads)
    data = split_digits()
    methods = {code: METHODS[code] for code in dict.fromkeys(args.methods)}
    print(
        f"binarized digits, train/val/test {[len(d[0]) for d in data]}, latent {LATENT_DIM}, "
        f"hidden {HIDDEN}, {args.epochs} epochs, IS draws {args.is_samples}, "
        f"threads {args.threads}, seeds {args.seeds}, "
        f"{'untied' if args.untied else 'tied'} components"
    )
    header = (
        f"{'method':<30}{'seed':>5}{'test IS LL':>12}{'test ELBO':>11}{'5-NN mean':>11}"
        f"{'5-NN top':>10}{'used':>6}{'train s':>9}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    if args.jobs == 1:
        for code, (label, _) in methods.items():
            for seed in args.seeds:
                options = _options(code, args.untied)
                results[code, seed] = r = run(options, data, seed, args.epochs, args.is_samples)
                _print_row(label, seed, r)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [
                pool.submit(
                    _job, code, seed, args.epochs, args.is_samples, args.threads, args.untied
                )
                for code in methods
                for seed in args.seeds
            ]
            for future in futures:
                code, seed, r = future.result()
                results[code, seed] = r
                _print_row(methods[code][0], seed, r)
    print("-" * len(header))
    for code, (label, _) in methods.items():
        rows = [results[code, s] for s in args.seeds]
        mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
        std = np.std([r["ll"] for r in rows])
        print(
            f"{label:<30}{'mean':>5}{mean['ll']:>8.3f}±{std:<4.2f}{mean['elbo']:>10.3f}"
            f"{mean['knn']:>11.3f}{mean['knn_top']:>10.3f}{mean['used']:>6.1f}"
            f"{mean['seconds']:>9.1f}"
        )
    if "a" in methods:
        for code, (label, _) in methods.items():
            if code == "a":
                continue
            gains = [results[code, s]["ll"] - results["a", s]["ll"] for s in args.seeds]
            knn = [results[code, s]["knn"] - results["a", s]["knn"] for s in args.seeds]
            print(
                f"{label} vs a, per seed: test LL gain {np.round(gains, 3).tolist()}, "
                f"5-NN error change (posterior mean) {np.round(knn, 3).tolist()}"
            )
            if len(knn) > 1:
                se = np.std(knn, ddof=1) / np.sqrt(len(knn))
                print(
                    f"{label} vs a, over {len(knn)} seeds: test LL gain min {min(gains):.3f}, "
                    f"mean {np.mean(gains):.3f}; 5-NN error change mean {np.mean(knn):+.4f} "
                    f"± {se:.4f} (standard error), worse on {sum(k > 0 for k in knn)} seeds"
                )


if __name__ == "__main__":
    main()
