"""``python -m pyro_mixflows``: a demo fit of a flow mixture to two moons."""

from __future__ import annotations

import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate

from . import FlowComponents, FlowMixture
from ._kmeans import kmeans
from .datasets import make_two_moons
from .diagnostics import adjusted_rand_index


def main() -> None:
    pyro.set_rng_seed(0)
    X, y = make_two_moons(1000, seed=0)
    X_test, y_test = make_two_moons(1000, seed=1)
    x, x_test = torch.tensor(X, dtype=torch.float32), torch.tensor(X_test, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0)
    xs = (x - mean) / std
    K = 2
    comps = FlowComponents(K, 2, flow="spline_coupling", num_layers=4, hidden_dims=(32, 32))
    centers, labels = kmeans(xs, K)
    spread = torch.stack([xs[labels == k].std(0) for k in range(K)])
    comps.set_affine(centers, spread)
    logits = torch.zeros(K)

    @config_enumerate
    def model(data):
        pyro.module("components", comps)
        with pyro.plate("data", data.shape[0], subsample_size=256) as idx:
            z = pyro.sample("z", dist.Categorical(logits=logits))
            pyro.sample("x", comps.component(z), obs=data[idx])

    svi = SVI(
        model, lambda data: None, pyro.optim.Adam({"lr": 3e-3}), TraceEnum_ELBO(max_plate_nesting=1)
    )
    start = time.perf_counter()
    data_size = xs.shape[0]
    for step in range(1500):
        loss = svi.step(xs)
        if step % 500 == 0:
            print(f"step {step:5d}  loss per point {loss / data_size:.3f}")
    with torch.no_grad():
        mix = FlowMixture(comps, logits=logits)
        ll = (mix.log_prob((x_test - mean) / std) - std.log().sum()).mean().item()
        pred = mix.responsibilities((x_test - mean) / std).argmax(-1).numpy()
    print(f"fit in {time.perf_counter() - start:.1f} s")
    print(
        f"two moons: held-out mean log-likelihood {ll:.3f}, ARI {adjusted_rand_index(y_test, pred):.3f}"
    )


if __name__ == "__main__":
    main()
