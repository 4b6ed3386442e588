#!/usr/bin/env python3
"""Ablation of GaussianImage++'s components: baseline, +D3, +CAF, +D3+CAF for each
covariance parameterisation, on a folder of images, over the recipe of ``--method``
(default: the authors', ``gaussianimage++``; ``gipp-fast`` ablates that method's own
growth and filter). Writes OUTDIR/ablation.json and
OUTDIR/ablation.md (mean PSNR per cell); each cell's per-image results live in
OUTDIR/PARAM-VARIANT/ and finished cells are reused when the command is re-run.

    python tools/ablation.py ../shared/data/kodak -o ablation --quick --limit 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

from gipp_jax.evaluate import evaluate_folder
from gipp_jax.io import atomic_write_text
from gipp_jax.parameterization import PARAMETERIZATIONS
from gipp_jax.train import METHODS, FitConfig

VARIANTS = {"baseline": (False, False), "+D3": (True, False), "+CAF": (False, True), "+D3+CAF": (True, True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--gaussians", type=int, default=5000)
    parser.add_argument("--iters", type=int, default=50000)
    parser.add_argument("--quick", action="store_true", help="the gipp eval --quick protocol")
    parser.add_argument("--limit", type=int, default=None, help="first K images only")
    parser.add_argument("--params", nargs="+", default=["cholesky", "rs", "direct"], choices=PARAMETERIZATIONS)
    parser.add_argument("--method", default="gaussianimage++", choices=METHODS)
    args = parser.parse_args()

    out = Path(args.output)
    table = {}
    for param in args.params:
        for name, (d3, caf) in VARIANTS.items():
            config = FitConfig(num_gaussians=args.gaussians, iterations=args.iters,
                               parameterization=param, d3=d3, caf=caf, method=args.method)
            prefix = "" if args.method == "gaussianimage++" else f"{args.method}-"
            cell = out / f"{prefix}{param}-{name.strip('+').replace('+', '-') or 'baseline'}"
            summary = evaluate_folder(args.folder, cell, config, quick=args.quick,
                                      progress=False, limit=args.limit, fps_repeats=10)
            table[(param, name)] = summary["mean"]["psnr"]
            print(f"{param:9s} {name:8s} {summary['mean']['psnr']:.2f} dB", flush=True)
    n = summary["num_images"]
    header = "| parameterisation | " + " | ".join(VARIANTS) + " |"
    lines = [f"Mean PSNR (dB) over {n} images; M = {args.gaussians}, {args.iters} steps"
             f"{' (quick protocol: M/16, 5000 steps, images / 4)' if args.quick else ''}, method {args.method}; "
             f"{jax.devices()[0].device_kind}, jax {jax.__version__}.", "", header,
             "|---" * (len(VARIANTS) + 1) + "|"]
    for param in args.params:
        lines.append(f"| {param} | " + " | ".join(f"{table[(param, v)]:.2f}" for v in VARIANTS) + " |")
    atomic_write_text(out / "ablation.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "ablation.json", json.dumps(
        {f"{p} {v}": psnr for (p, v), psnr in table.items()}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
