#!/usr/bin/env python3
"""How far a batched fit (`gipp_jax.fit_batch`) lands from the same images fitted one by one
(`gipp_jax.fit`): per-image PSNR differences, for each seed, with the device, jax version
and command. Both start from the same model; they differ by float32 rounding (the batched
program fuses and reduces in another order), which growth at error-sampled pixels and
relocation amplify.

    python tools/batch_agreement.py ../shared/data/kodak --skip 8 --limit 8 --size 64 48 \
        --gaussians 150 --steps 600 --seeds 5 11
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

import gipp_jax
from gipp_jax.environment import environment
from gipp_jax.io import load_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first K images")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 48), metavar=("W", "H"),
                        help="every image resized to this (one batch)")
    parser.add_argument("--gaussians", type=int, default=150)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 11])
    args = parser.parse_args()
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    paths = paths[args.skip:args.skip + args.limit]
    if not paths:
        print(f"batch_agreement: error: no images in {args.folder}", file=sys.stderr)
        return 2
    images = []
    for path in paths:
        pixels = np.round(load_image(path) * 255).astype(np.uint8)
        small = Image.fromarray(pixels).resize(tuple(args.size), Image.BOX)
        images.append(np.asarray(small, np.float32) / 255.0)

    def psnr(model, image) -> float:
        return float(gipp_jax.metrics.psnr(gipp_jax.render(model), image))

    print(f"{len(images)} images ({paths[0].name}..{paths[-1].name}) at {args.size[0]}x{args.size[1]}, "
          f"{args.gaussians} Gaussians, {args.steps} steps")
    print("| seed | batched - single, per image (dB) | mean | min | max |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        batched = gipp_jax.fit_batch(images, num_gaussians=args.gaussians, iterations=args.steps, seed=seed)
        single = [gipp_jax.fit(image, num_gaussians=args.gaussians, iterations=args.steps, seed=seed)
                  for image in images]
        diff = np.array([psnr(b, im) - psnr(s, im) for b, s, im in zip(batched, single, images)])
        print(f"| {seed} | {' '.join(f'{d:+.2f}' for d in diff)} | {diff.mean():+.3f} | {diff.min():+.2f} | "
              f"{diff.max():+.2f} |", flush=True)
    print(f"\n{environment()['device']}, jax {jax.__version__}; `python {' '.join(sys.argv)}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
