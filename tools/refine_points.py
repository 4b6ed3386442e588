#!/usr/bin/env python3
"""Refines the .gipp files of a ``tools/rd_curve.py`` folder after the fact, into a new one.

``gipp compress`` refines the codes QAT rounds to against the image (:mod:`gipp_jax.refine`);
files written before it did are refined here with the same function, so that their RD
points can be compared, or gathered by ``rd_curve.py -o OUTDIR`` (run with the same image
folder and protocol), without training again. Every point's rate, PSNR and MS-SSIM are
those of the refined file as decoded; its encode time gains the refinement's seconds.

    python tools/refine_points.py docs/rd/kodak-quick-gipp-fast-10-7-5 ../shared/data/kodak \\
        -o docs/rd/kodak-quick-gipp-fast-10-7-5-refined --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gipp_jax import bitstream, metrics
from gipp_jax.codec import decode_image
from gipp_jax.compress import CompressConfig, encode_refined
from gipp_jax.evaluate import protocol_images
from gipp_jax.io import atomic_write_bytes, atomic_write_text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an rd_curve.py output folder (its points/ are read)")
    parser.add_argument("images", help="the image folder the points were made from")
    parser.add_argument("-o", "--output", required=True, help="the new folder (points/ is written)")
    parser.add_argument("--quick", action="store_true", help="the points are of the quick protocol")
    parser.add_argument("--sweeps", type=int, default=CompressConfig.refine_sweeps,
                        help="refinement passes (default: gipp compress's, %(default)s)")
    args = parser.parse_args()
    if args.sweeps < 1:
        parser.error(f"--sweeps must be a positive integer (got {args.sweeps})")
    points = sorted(Path(args.source, "points").glob("*.json"))
    if not points:
        parser.error(f"no points in {Path(args.source, 'points')}")
    wanted = {json.loads(p.read_text())["image"] for p in points}
    images = {path.name: image for path, image in protocol_images(args.images, quick=args.quick)
              if path.name in wanted}
    if missing := sorted(wanted - images.keys()):
        parser.error(f"{args.images} lacks the points' image(s): {', '.join(missing)}")
    out = Path(args.output, "points")
    out.mkdir(parents=True, exist_ok=True)
    for source in points:
        done = out / source.name
        if done.is_file():
            continue
        point = json.loads(source.read_text())
        image = images[point["image"]]
        data = bitstream.decode(source.with_suffix(".gipp").read_bytes())
        start = time.perf_counter()
        h, w = image.shape[:2]
        # A point of a target rate keeps under it, as gipp compress --bpp (its size limit).
        max_bytes = int(point["target_bpp"] * h * w / 8) if "target_bpp" in point else None
        blob = encode_refined(data, image, sweeps=args.sweeps, max_bytes=max_bytes)
        seconds = time.perf_counter() - start
        decoded = decode_image(blob)  # compiles the renderer for this size
        start = time.perf_counter()
        decode_image(blob)
        decode_seconds = time.perf_counter() - start
        refined = {**point, "bpp": len(blob) * 8.0 / (h * w), "psnr": float(metrics.psnr(decoded, image)),
                   "ms_ssim": float(metrics.ms_ssim(decoded, image)),
                   "encode_seconds": point["encode_seconds"] + seconds, "decode_seconds": decode_seconds,
                   "refine_sweeps": args.sweeps, "unrefined": {k: point[k] for k in ("bpp", "psnr")},
                   **({"ratio": len(blob) * 8.0 / (h * w) / point["target_bpp"]} if max_bytes else {}),
                   "num_gaussians": bitstream.decode(blob).codes.shape[0]}
        atomic_write_bytes(done.with_suffix(".gipp"), blob)
        atomic_write_text(done, json.dumps(refined) + "\n")
        print(f"{source.stem}: {point['bpp']:.4f} -> {refined['bpp']:.4f} bpp, {point['psnr']:.2f} -> "
              f"{refined['psnr']:.2f} dB ({seconds:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
