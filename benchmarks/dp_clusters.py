"""Does a truncated Dirichlet-process mixture of flows find the right number of clusters?

Data with known K: two moons (2), pinwheel with 3 and 5 arms, 8 Gaussians on a ring (8); 1000
training points and an independent draw of 2000 held-out points per seed. For each set and seed, in
the same run:

* ``dp-flows``: ``VariationalFlowMixture(15, weights="dirichlet_process")``, truncation T = 15: its
  number of clusters comes from held-out rows (EM's Gaussian mixtures of 1, 2, ... pieces compared
  by cross-validation, pieces with no dip between them along their ridgeline joined into one
  cluster), then Dirichlet-process spline flows start from the clusters. ``pieces`` is the number
  of Gaussian pieces before they were joined (``merge_groups_``).
* ``finite``: ``VariationalFlowMixture(K)``, the same flows told the true K;
* ``bgm``: scikit-learn's ``BayesianGaussianMixture(weight_concentration_prior_type=
  "dirichlet_process", n_components=15)``.

Printed: the number of components holding at least 1% of the weight (and in how many seeds it
equals the true K), the adjusted Rand index on the held-out draw, the held-out mean log-likelihood
in the data's units and the fit time, per seed and summarized, with the three targets checked
(right K in at least 4 of 5 seeds; ARI within 0.02 of the finite mixture; held-out LL above BGM).

    python -m benchmarks.dp_clusters                      # 5 seeds, all sets, one process
    python -m benchmarks.dp_clusters --jobs 16            # (set, seed) runs side by side
    python -m benchmarks.dp_clusters --quick              # a smoke run

Every run is seeded, so ``--jobs`` prints the numbers of the sequential run. One torch thread per
run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from pyro_mixflows import VariationalFlowMixture
from pyro_mixflows.datasets import make_eight_gaussians, make_pinwheel, make_two_moons
from pyro_mixflows.diagnostics import adjusted_rand_index

SETS = {
    "two_moons": (2, lambda n, seed: make_two_moons(n, seed=seed)),
    "pinwheel3": (3, lambda n, seed: make_pinwheel(n, num_arms=3, seed=seed)),
    "pinwheel5": (5, lambda n, seed: make_pinwheel(n, num_arms=5, seed=seed)),
    "eight_gaussians": (8, lambda n, seed: make_eight_gaussians(n, seed=seed)),
}
THRESHOLD = 0.01
TRUNCATION = 15


def _timed(fit):
    start = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - start


def run_one(name: str, seed: int, args) -> dict:
    """All methods on one (set, seed); returns {method: (components, ARI, LL, seconds)}."""
    torch.set_num_threads(1)
    K, make = SETS[name]
    X, _ = make(args.n, 2 * seed)
    X_test, y_test = make(args.n_test, 2 * seed + 1)
    common = dict(random_state=seed, max_steps=args.steps, num_layers=args.layers)
    row = {"set": name, "K": K, "seed": seed}

    def flows(model, seconds):
        comps = int((model.weights_ >= THRESHOLD).sum())
        ari = adjusted_rand_index(y_test, model.predict(X_test))
        return comps, ari, model.score(X_test), seconds

    dp, seconds = _timed(
        lambda: VariationalFlowMixture(
            TRUNCATION, weights="dirichlet_process", weight_concentration=args.alpha, **common
        ).fit(X)
    )
    row["dp"] = flows(dp, seconds)
    row["pieces"] = int((dp.merge_groups_ >= 0).sum())
    finite, seconds = _timed(lambda: VariationalFlowMixture(K, **common).fit(X))
    row["finite"] = flows(finite, seconds)

    from sklearn.mixture import BayesianGaussianMixture

    bgm, seconds = _timed(
        lambda: BayesianGaussianMixture(
            n_components=TRUNCATION,
            weight_concentration_prior_type="dirichlet_process",
            max_iter=1000,
            random_state=seed,
        ).fit(X)
    )
    row["bgm"] = (
        int((bgm.weights_ >= THRESHOLD).sum()),
        adjusted_rand_index(y_test, bgm.predict(X_test)),
        float(bgm.score(X_test)),
        seconds,
    )
    return row


LABELS = {"dp": "dp-flows", "finite": "finite (told K)", "bgm": "bgm (DP)"}


def print_row(row: dict) -> None:
    parts = [f"{row['set']:16s} seed {row['seed']}: pieces {row['pieces']:2d}"]
    for method in LABELS:
        if method in row:
            k, ari, ll, s = row[method]
            parts.append(f"{LABELS[method]} k={k:2d} ARI={ari:.3f} LL={ll:.3f} {s:5.1f}s")
    print(" | ".join(parts), flush=True)


def summarize(rows: list[dict]) -> None:
    header = (
        f"{'set':16s} {'K':>2s} | {'method':16s} {'#comp>1% per seed':22s} {'right':>5s} "
        f"{'ARI mean':>8s} {'LL mean':>8s} {'fit s':>6s}"
    )
    print(header)
    print("-" * len(header))
    for name in dict.fromkeys(r["set"] for r in rows):
        sub = [r for r in rows if r["set"] == name]
        K = sub[0]["K"]
        for method in LABELS:
            if method not in sub[0]:
                continue
            ks = [r[method][0] for r in sub]
            ari = np.mean([r[method][1] for r in sub])
            ll = np.mean([r[method][2] for r in sub])
            sec = np.mean([r[method][3] for r in sub])
            right = "-" if method == "finite" else f"{sum(k == K for k in ks)}/{len(ks)}"
            print(
                f"{name:16s} {K:2d} | {LABELS[method]:16s} {str(ks):22s} {right:>5s} "
                f"{ari:8.3f} {ll:8.3f} {sec:6.1f}"
            )
    print("\nTargets for dp-flows (per set):")
    for name in dict.fromkeys(r["set"] for r in rows):
        sub = [r for r in rows if r["set"] == name]
        K = sub[0]["K"]
        right = sum(r["dp"][0] == K for r in sub)
        gap = np.mean([r["dp"][1] for r in sub]) - np.mean([r["finite"][1] for r in sub])
        worst_gap = min(r["dp"][1] - r["finite"][1] for r in sub)
        ll_wins = sum(r["dp"][2] > r["bgm"][2] for r in sub)
        need = (4 * len(sub) + 4) // 5
        print(
            f"  {name:16s} right K in {right}/{len(sub)} (need {need}): "
            f"{'met' if right >= need else 'MISSED'}; ARI minus finite: mean {gap:+.3f}, "
            f"worst seed {worst_gap:+.3f} ({'met' if gap >= -0.02 else 'MISSED'} on the mean); "
            f"LL above BGM on {ll_wins}/{len(sub)} seeds"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n", type=int, default=1000, help="training points")
    p.add_argument("--n-test", type=int, default=2000, help="held-out points")
    p.add_argument("--alpha", type=float, default=1.0, help="DP concentration")
    p.add_argument("--layers", type=int, default=4, help="spline coupling layers per flow")
    p.add_argument(
        "--steps", type=int, default=None, help="max training steps per fit (the estimator's)"
    )
    p.add_argument("--jobs", type=int, default=1, help="worker processes for (set, seed) runs")
    p.add_argument("--quick", action="store_true", help="one seed, 200 steps, 300 points")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"expected --jobs >= 1, got {args.jobs}")
    if args.quick:
        args.seeds, args.steps, args.n, args.n_test = 1, 200, 300, 300
    print(f"settings: {vars(args)}", flush=True)
    tasks = [(name, seed) for name in args.sets for seed in range(args.seeds)]
    rows = []
    if args.jobs == 1:
        for name, seed in tasks:
            rows.append(run_one(name, seed, args))
            print_row(rows[-1])
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(run_one, name, seed, args) for name, seed in tasks]
            for future in futures:
                rows.append(future.result())
                print_row(rows[-1])
    summarize(rows)


if __name__ == "__main__":
    main()
