#!/usr/bin/env python3
"""Traces one fit: PSNR, Gaussian count and Gaussian sizes after every chunk of steps.

What the convergence study (docs/CONVERGENCE.md) measures: how large the Gaussians are at
each step (the median over active Gaussians of the rendered standard deviation
``det(Sigma + s I)^(1/4)`` in pixels, and of the filter's share of the variance), how
many there are, and the training PSNR, for any method. Writes OUT.json and prints a table.

    python tools/fit_trace.py ../shared/data/kodak/kodim01.png --quick --iters 5000 \
        --method gaussianimage++ -o trace.json
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import model as model_lib
from gipp_jax.evaluate import QUICK_BUDGET_DIVISOR, QUICK_DOWNSCALE, downscale
from gipp_jax.io import atomic_write_text, load_image
from gipp_jax.train import FitConfig, Fitter

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from convergence import parse_method  # noqa: E402


def sizes(model: model_lib.GaussianModel) -> dict:
    """Median rendered standard deviation (px) and filter share of the variance."""
    active = np.asarray(model.active)
    cov = np.asarray(model_lib.filtered_covariance(model))[active]
    det = np.maximum(cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2, 0.0)
    trace = cov[:, 0] + cov[:, 2]
    share = 2.0 * np.asarray(model.filter_var)[active] / np.maximum(trace, 1e-12)
    return {"median_std_px": float(np.median(det ** 0.25)) if active.any() else 0.0,
            "median_filter_share": float(np.median(share)) if active.any() else 0.0}


def trace_point(state) -> dict:
    """What the trace records of a fit's state after a chunk."""
    return {"step": int(state.step), "psnr": float(state.last_psnr),
            "num_gaussians": int(jnp.sum(state.model.active)), **sizes(state.model)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("-o", "--output", required=True, help="JSON file")
    parser.add_argument("--method", default="gipp-fast", help="NAME[:field=value,...] as in convergence.py")
    parser.add_argument("--gaussians", type=int, default=5000, help="budget M (divided by 16 with --quick)")
    parser.add_argument("--iters", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="image / 4 per side, M / 16")
    args = parser.parse_args()
    image = load_image(args.image)
    budget = args.gaussians
    if args.quick:
        image, budget = downscale(image, QUICK_DOWNSCALE), max(1, budget // QUICK_BUDGET_DIVISOR)
    config = FitConfig(num_gaussians=budget, iterations=args.iters,
                       max_growth=max(1, 1000 // (QUICK_BUDGET_DIVISOR if args.quick else 1)),
                       **parse_method(args.method))
    trace: list[dict] = []
    fitter = Fitter(image, config, on_chunk=lambda state: trace.append(trace_point(state)))
    initial = fitter.initial_model()
    trace.append({"step": 0, "psnr": None, "num_gaussians": initial.num_active(), **sizes(initial)})
    state = fitter.run()
    device = jax.devices()[0]
    atomic_write_text(args.output, json.dumps({
        "command": " ".join(["python"] + sys.argv), "device": getattr(device, "device_kind", str(device)),
        "jax_version": jax.__version__, "method": args.method, "budget": budget,
        "height": int(image.shape[0]), "width": int(image.shape[1]), "kept_psnr": float(state.best_psnr),
        "trace": trace}, indent=2) + "\n")
    print("| step | PSNR (dB) | Gaussians | median std (px) | filter share |\n|---|---|---|---|---|")
    for row in trace:
        psnr = "" if row["psnr"] is None else f"{row['psnr']:.2f}"
        print(f"| {row['step']} | {psnr} | {row['num_gaussians']} | {row['median_std_px']:.2f} | "
              f"{row['median_filter_share']:.2f} |")
    print(f"kept model: {float(state.best_psnr):.3f} dB (training PSNR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
