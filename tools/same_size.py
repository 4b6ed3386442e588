#!/usr/bin/env python3
"""Our file against every reference codec at the same size: for each .gipp file and its
source image, the best setting of each codec (tools/reference_codecs.py: JPEG, WebP, AVIF,
JPEG 2000) whose file is no larger than ours, with its PSNR and MS-SSIM. Prints a Markdown
table; ``--json`` also writes every row.

    gipp compress photo.png -o photo.gipp --bpp 0.5
    python tools/same_size.py photo.png photo.gipp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reference_codecs import add_codecs_argument

from gipp_jax import metrics
from gipp_jax.codec import decode_image
from gipp_jax.io import atomic_write_text, load_image


def cell(point: dict | None) -> str:
    if point is None:
        return "none fits"
    return f"{point['psnr']:.2f} dB / {point['ms_ssim']:.4f} at {point['bpp']:.3f} bpp"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="IMAGE FILE.gipp", help="source image, then its .gipp file")
    add_codecs_argument(parser)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give an even number of paths: IMAGE FILE.gipp ...")
    codecs = args.codecs
    rows = []
    for image_path, gipp_path in zip(args.pairs[::2], args.pairs[1::2]):
        image = load_image(image_path)
        blob = Path(gipp_path).read_bytes()
        h, w = image.shape[:2]
        decoded = decode_image(blob)
        row = {"image": image_path, "size": f"{w}x{h}", "bytes": len(blob), "bpp": len(blob) * 8 / (h * w),
               "psnr": float(metrics.psnr(decoded, image)), "ms_ssim": float(metrics.ms_ssim(decoded, image))}
        for codec in codecs:
            row[codec.key] = codec.best_under(image, len(blob))
        rows.append(row)

    print("PSNR / MS-SSIM at bits per pixel; each reference codec at its best setting no larger than ours")
    print()
    print("| image | size | ours | " + " | ".join(c.name for c in codecs) + " |")
    print("|---|---|---|" + "---|" * len(codecs))
    for r in rows:
        print(f"| {Path(r['image']).name} | {r['size']} | {cell(r)} | "
              + " | ".join(cell(r[c.key]) for c in codecs) + " |")
    if args.json:
        atomic_write_text(args.json, json.dumps({"command": " ".join(["python"] + sys.argv), "rows": rows},
                                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
