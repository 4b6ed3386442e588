#!/usr/bin/env python3
"""Where ``--bpp`` lands: compress every image of a folder at several target rates and
report each file's rate against its target (the rate control of ``gipp compress --bpp``).

For each image and target it runs :func:`gipp_jax.compress.compress_to_rate` and records the
file's bits per pixel, its ratio to the target, PSNR, the budget the rate table planned and
the Gaussians the file holds, and encode and decode times. Writes OUTDIR/landing.json and
OUTDIR/landing.md and prints the table; finished points are kept in OUTDIR/points/ and
reused when the command is re-run.

    python tools/rate_landing.py ../shared/data/kodak -o landing --quick --targets 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from gipp_jax.compress import compress_to_rate, decode_image
from gipp_jax.evaluate import QUICK_DOWNSCALE, QUICK_ITERATIONS, downscale, list_images
from gipp_jax.io import atomic_write_text, load_image
from gipp_jax.methods import DEFAULT_METHOD
from gipp_jax.rate import TOLERANCE
from gipp_jax.train import METHODS, FitConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.5, 1.0], metavar="BPP")
    parser.add_argument("--quick", action="store_true", help="images / 4 (gipp eval's quick protocol)")
    parser.add_argument("--iters", type=int, default=QUICK_ITERATIONS,
                        help="steps of each phase (default: %(default)s, as the rate table's runs)")
    parser.add_argument("--limit", type=int, default=None, help="first K images only")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS)
    args = parser.parse_args()
    if any(t <= 0 for t in args.targets):
        parser.error("--targets must be positive")

    out = Path(args.output)
    (out / "points").mkdir(parents=True, exist_ok=True)
    points = []
    for path in list_images(args.folder)[: args.limit]:
        image = load_image(path)
        if args.quick:
            image = downscale(image, QUICK_DOWNSCALE)
        for target in args.targets:
            done = out / "points" / f"{path.stem}-{target:g}.json"
            if done.exists():
                point = json.loads(done.read_text())
            else:
                config = FitConfig(iterations=args.iters, method=args.method)
                result, plan = compress_to_rate(image, config, bpp=target)
                start = time.perf_counter()
                decode_image(result.blob)
                point = {"image": path.name, "target_bpp": target, "bpp": result.bpp,
                         "ratio": result.bpp / target, "psnr": result.psnr,
                         "bits": list(plan.bits), "planned_gaussians": plan.num_gaussians,
                         "num_gaussians": result.num_gaussians,
                         "encode_seconds": result.encode_seconds,
                         "decode_seconds": time.perf_counter() - start}
                atomic_write_text(done, json.dumps(point) + "\n")
            points.append(point)
            print(f"{path.name} target {target:g}: {point['bpp']:.3f} bpp ({100 * point['ratio']:.1f}%), "
                  f"{point['psnr']:.2f} dB", flush=True)

    device = jax.devices()[0]
    rows = []
    for target in args.targets:
        ratios = [p["ratio"] for p in points if p["target_bpp"] == target]
        psnrs = [p["psnr"] for p in points if p["target_bpp"] == target]
        rows.append({"target_bpp": target, "images": len(ratios), "min_ratio": min(ratios),
                     "max_ratio": max(ratios), "mean_psnr": float(np.mean(psnrs)),
                     "within_tolerance": sum(1 - TOLERANCE <= r <= 1.0 for r in ratios)})
    summary = {"command": " ".join(["python"] + sys.argv),
               "device": getattr(device, "device_kind", str(device)), "jax_version": jax.__version__,
               "date": time.strftime("%Y-%m-%d"), "method": args.method, "iterations": args.iters,
               "quick": args.quick, "tolerance": TOLERANCE, "rows": rows, "points": points,
               "mean_encode_seconds": float(np.mean([p["encode_seconds"] for p in points])),
               "mean_decode_seconds": float(np.mean([p["decode_seconds"] for p in points]))}
    lines = ["| target bpp | images | landed within 10% under | rate / target (min-max) | mean PSNR (dB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['target_bpp']:g} | {r['images']} | {r['within_tolerance']} | "
              f"{r['min_ratio']:.3f}-{r['max_ratio']:.3f} | {r['mean_psnr']:.2f} |" for r in rows]
    lines.append(f"\nencode {summary['mean_encode_seconds']:.1f} s, decode "
                 f"{1000 * summary['mean_decode_seconds']:.0f} ms per image (mean); {summary['device']}, "
                 f"jax {jax.__version__}; `{summary['command']}`")
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "landing.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "landing.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
