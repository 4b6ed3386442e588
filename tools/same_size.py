#!/usr/bin/env python3
"""Our file against JPEG and WebP at the same size: for each .gipp file and its source image,
the best quality of each codec (Pillow, qualities 1-100) whose file is no larger than ours,
and its PSNR. Prints a Markdown table; ``--json`` also writes every row.

    gipp compress photo.png -o photo.gipp --gaussians 700 --iters 3000
    python tools/same_size.py photo.png photo.gipp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rd_curve import codec_point

from gipp_jax import metrics
from gipp_jax.codec import decode_image
from gipp_jax.io import atomic_write_text, load_image


def best_under(image, fmt: str, max_bytes: int) -> dict | None:
    """The highest-quality ``fmt`` encoding of ``image`` no larger than ``max_bytes``
    (binary search over Pillow's quality 1-100, whose size grows with quality), or None."""
    h, w = image.shape[:2]
    lo, hi, best = 1, 100, None
    while lo <= hi:
        quality = (lo + hi) // 2
        point = codec_point(image, fmt, quality)
        if point["bpp"] * h * w / 8 <= max_bytes:
            best, lo = {"quality": quality, **point}, quality + 1
        else:
            hi = quality - 1
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="IMAGE FILE.gipp", help="source image, then its .gipp file")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give an even number of paths: IMAGE FILE.gipp ...")
    rows = []
    for image_path, gipp_path in zip(args.pairs[::2], args.pairs[1::2]):
        image = load_image(image_path)
        blob = Path(gipp_path).read_bytes()
        h, w = image.shape[:2]
        row = {"image": image_path, "size": f"{w}x{h}", "bytes": len(blob), "bpp": len(blob) * 8 / (h * w),
               "psnr": float(metrics.psnr(decode_image(blob), image))}
        for fmt in ("JPEG", "WEBP"):
            row[fmt.lower()] = best_under(image, fmt, len(blob))
        rows.append(row)

    def cell(point):
        return "none fits" if point is None else f"{point['psnr']:.2f} dB at {point['bpp']:.3f} bpp (q {point['quality']})"

    print("| image | size | ours | JPEG, same size or smaller | WebP, same size or smaller |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {Path(r['image']).name} | {r['size']} | {r['psnr']:.2f} dB at {r['bpp']:.3f} bpp "
              f"| {cell(r['jpeg'])} | {cell(r['webp'])} |")
    if args.json:
        atomic_write_text(args.json, json.dumps({"command": " ".join(["python"] + sys.argv), "rows": rows},
                                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
