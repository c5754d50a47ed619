"""Deep latent Gaussian mixtures on binarized digits: Gaussian VAE vs mixture posteriors.

Binarized scikit-learn digits (pixel >= 8 -> 1), a fixed 1197/300/300 train/validation/test
split, latent size 8 and one hidden layer of 128 units in both encoder and decoder for every
method:

(a) plain Gaussian VAE (``MixtureVAE`` with K = 1 and a fixed N(0, I) prior, which the tests
    show to be exactly the textbook Gaussian VAE),
(b) mixture posterior and mixture prior, K = 5 (softmax weights),
(c) Dirichlet-process posterior, T = 10 Kumaraswamy sticks, α = 1,
(d) flow components: (b) with each q_k an affine-coupling flow of a Gaussian.

Each method is trained with ``SVI`` + ``TraceEnum_ELBO(max_plate_nesting=1)`` (Adam, lr 3e-3,
minibatches of 100) for ``--epochs`` epochs, keeping the parameters with the best validation
ELBO (checked every 10 epochs). Reported on the test set: the importance-sampled
log-likelihood (``--is-samples`` draws, default 500), the ELBO (100 draws per point), the 5-NN
classification error of the latent means (fitted on the training set) and the training time.
Runs single-threaded (``torch.set_num_threads(1)`` by default).

    python -m benchmarks.mixture_vae                 # 3 seeds, the full table
    python -m benchmarks.mixture_vae --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import time

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
METHODS = {
    "a: Gaussian VAE": dict(num_components=1, learn_prior=False),
    "b: mixture K=5": dict(num_components=5),
    "c: DP T=10 (Kumaraswamy)": dict(num_components=10, weights="kumaraswamy", alpha=1.0),
    "d: flow mixture K=5": dict(
        num_components=5, flow="affine_coupling", flow_kwargs=dict(num_layers=2, hidden_dims=(64,))
    ),
}


def split_digits():
    """Binarized digits and a fixed (seed 0) 1197/300/300 split."""
    X, y = load_digits(binarize=True)
    order = np.random.default_rng(0).permutation(len(X))
    parts = np.split(order, [len(X) - 600, len(X) - 300])
    return [(torch.tensor(X[p], dtype=torch.float32), y[p]) for p in parts]


def run(name, kwargs, data, seed, epochs, is_samples, batch_size=100):
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
    knn = KNeighborsClassifier(5).fit(vae.latent_mean(x_tr).numpy(), y_tr)
    knn_error = 1.0 - knn.score(vae.latent_mean(x_te).numpy(), y_te)
    return dict(ll=test_ll, elbo=test_elbo, knn=knn_error, seconds=seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--is-samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list("abcd"), help="subset of a b c d")
    parser.add_argument("--quick", action="store_true", help="5 epochs, one seed, 50 IS draws")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.is_samples = args.seeds[:1], 5, 50
    torch.set_num_threads(args.threads)
    data = split_digits()
    methods = {k: v for k, v in METHODS.items() if k[0] in args.methods}
    print(
        f"binarized digits, train/val/test {[len(d[0]) for d in data]}, latent {LATENT_DIM}, "
        f"hidden {HIDDEN}, {args.epochs} epochs, IS draws {args.is_samples}, "
        f"threads {args.threads}, seeds {args.seeds}"
    )
    header = f"{'method':<26}{'seed':>5}{'test IS LL':>12}{'test ELBO':>11}{'5-NN err':>10}{'train s':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for name, kwargs in methods.items():
        for seed in args.seeds:
            r = run(name, kwargs, data, seed, args.epochs, args.is_samples)
            results[name, seed] = r
            print(
                f"{name:<26}{seed:>5}{r['ll']:>12.3f}{r['elbo']:>11.3f}{r['knn']:>10.3f}"
                f"{r['seconds']:>9.1f}",
                flush=True,
            )
    print("-" * len(header))
    for name in methods:
        rows = [results[name, s] for s in args.seeds]
        mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
        std = {k: np.std([r[k] for r in rows]) for k in rows[0]}
        print(
            f"{name:<26}{'mean':>5}{mean['ll']:>8.3f}±{std['ll']:<4.2f}{mean['elbo']:>10.3f}"
            f"{mean['knn']:>10.3f}{mean['seconds']:>9.1f}"
        )
    base = next((n for n in methods if n.startswith("a")), None)
    if base is not None:
        for name in methods:
            if name == base:
                continue
            gains = [results[name, s]["ll"] - results[base, s]["ll"] for s in args.seeds]
            knn = [results[name, s]["knn"] - results[base, s]["knn"] for s in args.seeds]
            print(
                f"{name} vs a: test LL gain per seed {np.round(gains, 3).tolist()}, "
                f"5-NN error change per seed {np.round(knn, 3).tolist()}"
            )


if __name__ == "__main__":
    main()
