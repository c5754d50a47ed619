"""Clusters on real tables: the estimator (finite and Dirichlet-process) against Gaussian mixtures.

    python -m benchmarks.clusters [--sets wine,iris,...] [--seeds 5] [--truncations 10,30]

For every real table with classes (``benchmarks.real_data``: wine, breast cancer, iris and the
digits 0-4 sets) and every seed, the stratified 50/50 split of ``real_data.split`` (standardized on
the training half), K = the number of classes, one torch thread. Fitted on the training half:

- ``VariationalFlowMixture(K)`` at its defaults (the finite estimator);
- ``VariationalFlowMixture(T, weights="dirichlet_process")`` for every truncation T;
- scikit-learn's ``GaussianMixture(K, n_init=5)`` and ``BayesianGaussianMixture(K, n_init=5)``;
- the held-out choice of K: ``select_n_components(X, range(1, 9), cv=3)`` at its defaults.

Printed per set (median over seeds, worst seed in brackets): held-out log-likelihood per row and
adjusted Rand index of the held-out half against the classes for every method; the DP fits'
effective numbers of clusters per seed beside the held-out choice; whether the finite estimator
reports the flows' or the Gaussian start's clusters. The closing lines check the targets: the
finite estimator's ARI >= GaussianMixture's - 0.02 with its held-out log-likelihood >=
GaussianMixture's - 0.01 (medians, per set), and the DP count within +-1 of the held-out choice on
every seed at every truncation (and the same at every truncation).
"""

# ruff: noqa: E402 (the thread settings come before numpy and torch are imported)
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse
import time
import warnings

import numpy as np

from benchmarks import real_data

SETS = ("wine", "breast_cancer", "iris", "digits_0_4_pca10", "digits_0_4_pca20", "digits_0_4")


def run(name: str, seed: int, truncations: list[int]) -> dict:
    import torch
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

    from pyro_mixflows import VariationalFlowMixture, select_n_components

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    X, y = real_data.load(name)
    a, b, _, yb = real_data.split(X, y, seed)
    K = len(np.unique(y))
    makers = {
        "estimator": lambda: VariationalFlowMixture(K, random_state=seed),
        **{
            f"DP T={T}": (
                lambda T=T: VariationalFlowMixture(
                    T, weights="dirichlet_process", random_state=seed
                )
            )
            for T in truncations
        },
        "GaussianMixture": lambda: GaussianMixture(K, n_init=5, random_state=seed),
        "BayesianGM": lambda: BayesianGaussianMixture(
            n_components=K, n_init=5, max_iter=500, random_state=seed
        ),
    }
    out: dict = {"set": name, "seed": seed}
    for method, make in makers.items():
        t0 = time.perf_counter()
        model = make().fit(a)
        seconds = time.perf_counter() - t0
        row = {
            "ll": float(model.score(b)),
            "ari": float(adjusted_rand_score(yb, model.predict(b))),
            "seconds": seconds,
        }
        if method.startswith("DP"):
            row["clusters"] = int(model.effective_n_components_)
        if method == "estimator":
            row["kept"] = f"{model.start_}/{model.num_layers_} layers"
            row["clusters_from"] = getattr(model, "clusters_from_", "flows")
        out[method] = row
        print(f"  [{name} seed {seed}] {method}: LL {row['ll']:.3f} ARI {row['ari']:.3f} "
              f"{seconds:.1f}s" + (f" clusters {row['clusters']}" if "clusters" in row else ""),
              flush=True)  # fmt: skip
    t0 = time.perf_counter()
    choice, _ = select_n_components(a, range(1, 9), cv=3, random_state=seed)
    out["held_out_k"] = int(choice)
    print(
        f"  [{name} seed {seed}] held-out choice of K: {choice} ({time.perf_counter() - t0:.0f}s)"
    )
    return out


def _med(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{np.median(values):.3f} ({values.min():.3f})"


def report(rows: list[dict], sets: list[str], truncations: list[int]) -> None:
    methods = ["estimator", *[f"DP T={T}" for T in truncations], "GaussianMixture", "BayesianGM"]
    print("\n| set | method | held-out LL | ARI | clusters (per seed) |")
    print("|---|---|---|---|---|")
    for s in sets:
        mine = [r for r in rows if r["set"] == s]
        for m in methods:
            counts = " ".join(str(r[m]["clusters"]) for r in mine) if m.startswith("DP") else ""
            if m == "estimator":
                counts = "held-out K: " + " ".join(str(r["held_out_k"]) for r in mine)
                em = sum(r["estimator"]["clusters_from"] != "flows" for r in mine)
                counts += f"; EM start's clusters reported on {em} of {len(mine)}"
            print(f"| {s} | {m} | {_med([r[m]['ll'] for r in mine])} | "
                  f"{_med([r[m]['ari'] for r in mine])} | {counts} |")  # fmt: skip
    print()
    for s in sets:
        mine = [r for r in rows if r["set"] == s]
        ll = np.median([r["estimator"]["ll"] for r in mine]) - np.median(
            [r["GaussianMixture"]["ll"] for r in mine]
        )
        ari = np.median([r["estimator"]["ari"] for r in mine]) - np.median(
            [r["GaussianMixture"]["ari"] for r in mine]
        )
        ok = ari >= -0.02 and ll >= -0.01
        counts_ok = all(
            abs(r[f"DP T={T}"]["clusters"] - r["held_out_k"]) <= 1
            for r in mine
            for T in truncations
        )
        same = all(len({r[f"DP T={T}"]["clusters"] for T in truncations}) == 1 for r in mine)
        print(
            f"{s:18s} estimator vs GaussianMixture: ARI {ari:+.3f}, LL {ll:+.3f}: "
            f"{'met' if ok else 'NOT met'}; DP count within 1 of the held-out K on every seed: "
            f"{'met' if counts_ok else 'NOT met'}; the same at every truncation: "
            f"{'yes' if same else 'no'}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated sets")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1 (5)")
    parser.add_argument("--truncations", default="10,30", help="DP truncations T (10,30)")
    args = parser.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    truncations = [int(t) for t in args.truncations.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f}; seeds 0..{args.seeds - 1}", flush=True)
    rows = [run(s, seed, truncations) for s in sets for seed in range(args.seeds)]
    report(rows, sets, truncations)


if __name__ == "__main__":
    main()
