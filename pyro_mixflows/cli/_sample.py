"""``pyro-mixflows sample``: naive ancestral draws from a fitted model, or latent-MALA chains with
a report of what they sample (R-hat, ESS, component frequencies next to the fitted weights)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import _io
from ._table import CLIError, check_output_file, format_csv

MALA_INDEPENDENCE_PROB = 0.5  # share of independence moves of `sample --mala`


def run(args: argparse.Namespace) -> int:
    """``pyro-mixflows sample``: see ``pyro-mixflows sample --help``."""
    import pyro

    check_output_file(args.out, args.force)
    LatentMALA = None
    if args.mala:
        try:
            from ..infer.mala import LatentMALA
        except ImportError:
            raise CLIError(
                "--mala needs the latent-MALA kernel (pyro_mixflows.infer.mala.LatentMALA), "
                "which this installation does not have; sample without --mala"
            ) from None
    est, meta = _io.load_model(args.model, args.device)
    columns = meta.get("columns") or [f"x{d}" for d in range(est.n_features_in_)]
    pyro.set_rng_seed(args.seed)
    n = args.num_samples
    if LatentMALA is None:
        X, z = est.sample(n)
    else:
        X, z, _ = sample_mala(LatentMALA, est, n, args.warmup, args.chains, args.target, args.quiet)
    cols = [X[:, d].astype(np.float64) for d in range(X.shape[1])] + [z]
    _io.emit(args.out, format_csv([*columns, "component"], cols))
    return 0


MALA_TARGETS = {  # --target: what the chains sample (the first is the default)
    "fitted": "the fitted density itself (target='base', exact, like sampling without --mala)",
    "sharpened": "the fitted density squared and renormalized (target='sharpened', beta=2): "
    "fewer rows on low-density bridges between components; separated components' weights move "
    "toward w^2 / sum w^2",
    "tempered": "the paper's tempered target q_Z(z) / |det J_f(z)|, with independence moves: "
    "fewer bridge rows, but component weights may shift",
}


def sample_mala(kernel_cls, est, n: int, warmup: int, chains: int, target: str, quiet: bool):
    r"""n draws by latent MALA from a fitted model, in the data's units, and a report.

    ``target`` is one of ``MALA_TARGETS``; every kernel mixes in independence moves from the
    flows' base (probability ``MALA_INDEPENDENCE_PROB`` per step) so that chains move between
    components. ``chains`` chains run batched; each keeps ceil(n / chains) draws after
    ``warmup`` adaptation steps. Unless ``quiet``, what is sampled, R-hat and bulk ESS over the
    chains, acceptance rates, the share of repeated rows, and the component frequencies next
    to the target's own (by importance sampling) and the fitted weights go to stderr.

    Returns:
        x (n, D) in the data's units, the component of each draw (n,) and the report (dict).
    """
    import torch

    chains = min(chains, n)
    per_chain = -(-n // chains)
    mixture = est.mixture_
    kernel = kernel_cls(
        mixture,
        target={"fitted": "base"}.get(target, target),
        independence_prob=MALA_INDEPENDENCE_PROB,
        num_chains_batched=chains,
        return_latent=True,
    )
    out = kernel.run_chains(per_chain, warmup_steps=warmup)
    x = out["x"]  # (C, S, D), standardized scale
    C, S, D = x.shape
    comp = out.get("component")
    comp = torch.zeros(C, S, dtype=torch.long) if comp is None else comp.long()
    x_data = x.detach().cpu().numpy() * est.feature_scale_ + est.feature_mean_  # (C, S, D)
    flat = x_data.reshape(C * S, D)[:n]
    z = comp.reshape(-1)[:n].cpu().numpy()
    report = _mala_report(kernel, x_data, z, est.weights_, n)
    report["target"] = target
    report["target_frequencies"] = _target_frequencies(kernel)
    if not quiet:
        print(_format_mala_report(report), file=sys.stderr)
    return flat, z, report


def _target_frequencies(kernel, num_draws: int = 20000) -> list[float] | None:
    """The component probabilities of the kernel's own target, P(c) ∝ w_c E_{q_Z}[t_c(z) / q_Z(z)]
    by importance sampling of base draws (what perfectly mixed chains give)."""
    import torch

    flows = getattr(kernel, "flows", None)
    if flows is None or not hasattr(kernel, "_component_log_targets"):
        return None
    with torch.no_grad():
        z = flows.sample_base(torch.Size([num_draws]))  # (M, D)
        zK = z.unsqueeze(-2).expand(num_draws, flows.num_components, flows.dim)
        lt = kernel._component_log_targets(zK)[0]  # (M, K)
        lw = flows.log_weights + lt - flows.base_log_prob(zK)[..., :1]
        lw = lw.logsumexp(0)
        return (lw - lw.logsumexp(0)).exp().tolist()


def _mala_report(kernel, x: np.ndarray, z: np.ndarray, weights: np.ndarray, n: int) -> dict:
    import warnings

    diag = kernel.diagnostics()
    C, S, _ = x.shape
    report = {
        "chains": C,
        "draws_per_chain": S,
        "acceptance_rate": float(diag.get("acceptance rate", float("nan"))),
        "independence_acceptance_rate": float(
            diag.get("independence acceptance rate", float("nan"))
        ),
        "repeated_rows": float(1 - len(np.unique(x.reshape(C * S, -1)[:n], axis=0)) / n),
        "component_frequencies": (np.bincount(z, minlength=len(weights)) / len(z)).tolist(),
        "weights": np.asarray(weights, dtype=np.float64).tolist(),
        "rhat": None,
        "ess": None,
    }
    if C >= 2 and S >= 4:
        import arviz as az

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = az.from_dict(posterior={"x": x})
            report["rhat"] = az.rhat(idata)["x"].values.tolist()
            report["ess"] = az.ess(idata)["x"].values.tolist()
    return report


def _format_mala_report(r: dict) -> str:
    lines = [
        f"latent MALA, sampling {MALA_TARGETS[r['target']]} (--target {r['target']})",
        f"  independence moves with probability {MALA_INDEPENDENCE_PROB}; {r['chains']} chains "
        f"x {r['draws_per_chain']} draws; acceptance {r['acceptance_rate']:.2f} (MALA), "
        f"{r['independence_acceptance_rate']:.2f} (independence); "
        f"{r['repeated_rows']:.0%} repeated rows (rejected moves)",
    ]
    if r["rhat"] is not None:
        rhat, ess = max(r["rhat"]), min(r["ess"])
        verdict = (
            "below 1.01: ok" if rhat < 1.01 else "above 1.01: draw more rows (-n) or raise --warmup"
        )
        lines.append(f"  R-hat (max over columns) {rhat:.3f} ({verdict}); bulk ESS (min) {ess:.0f}")
    else:
        lines.append("  R-hat and ESS need at least 2 chains of 4 draws")

    def row(values):
        return " ".join(f"{v:.3f}" for v in values)

    lines.append(f"  component frequencies {row(r['component_frequencies'])}")
    if r.get("target_frequencies") is not None:
        lines.append(f"  the target's own      {row(r['target_frequencies'])}")
    lines.append(f"  fitted weights        {row(r['weights'])}")
    return "\n".join(lines)
