#!/usr/bin/env python3
"""Batch-fitting throughput: images per hour for batch sizes 1, 2, 4, 8, ...

For each batch size B, B images of one size (the first landscape images of FOLDER,
downscaled by --downscale; or crops of the bundled sample) are fitted together with
:class:`gipp_jax.batch.BatchFitter` over all local devices. Each batch is run twice
with the same compiled program: the first run's time includes compilation, the second
is the steady state that a long job sees. For comparison, the largest batch's images are
also fitted one by one with :class:`gipp_jax.train.Fitter` (what ``gipp fit`` and ``gipp
eval`` do: a compile per image). Prints one JSON object.

    python tools/bench_batch.py ../shared/data/kodak --downscale 4 --gaussians 312 --iters 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from gipp_jax.batch import BatchFitter
from gipp_jax.environment import environment
from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
from gipp_jax.evaluate import downscale, list_images
from gipp_jax.io import load_image
from gipp_jax.methods import DEFAULT_METHOD
from gipp_jax.train import METHODS, FitConfig, Fitter


def load_images(folder: str | None, count: int, factor: int) -> np.ndarray:
    if folder is None:
        from gipp_jax.cli import sample_image_path
        image = load_image(sample_image_path())
        tiles = [image[y:y + 128, x:x + 192] for y in range(0, 384, 128) for x in range(0, 576, 192)]
        return np.stack((tiles * count)[:count])
    images = [load_image(p) for p in list_images(folder)]
    landscape = [downscale(im, factor) if factor > 1 else im for im in images if im.shape[1] >= im.shape[0]]
    shape = landscape[0].shape
    same = [im for im in landscape if im.shape == shape]
    return np.stack((same * count)[:count])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="images (default: 128x192 crops of the bundled sample)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--downscale", type=int, default=4)
    parser.add_argument("--gaussians", type=int, default=312)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS)
    args = parser.parse_args()
    # The command line's compiler settings, so that the figures are what `gipp` runs at.
    use_fast_cpu_flags(enable_compilation_cache())

    images = load_images(args.folder, max(args.batch_sizes), args.downscale)
    config = FitConfig(num_gaussians=args.gaussians, iterations=args.iters, method=args.method,
                       max_growth=max(1, args.gaussians // 5))
    rows = []
    for b in args.batch_sizes:
        fitter = BatchFitter(images[:b], config)
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            state = fitter.run()
            jax.block_until_ready(state.best.means)
            timings.append(time.perf_counter() - start)
        rows.append({"batch_size": b, "first_run_seconds": round(timings[0], 2),
                     "steady_seconds": round(timings[1], 2),
                     "images_per_hour": round(3600 * b / timings[1], 1),
                     "mean_best_psnr": round(float(np.mean(np.asarray(state.best_psnr))), 3)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    for image in images:
        jax.block_until_ready(Fitter(image, config).run().best.means)
    seconds = time.perf_counter() - start
    one_by_one = {"images": len(images), "seconds": round(seconds, 2),
                  "images_per_hour": round(3600 * len(images) / seconds, 1)}
    base = rows[0]["images_per_hour"]
    for row in rows:
        row["speedup_vs_first"] = round(row["images_per_hour"] / base, 2)
    print(json.dumps({
        "command": " ".join(["python"] + sys.argv), **environment(), "cpu_count": os.cpu_count(),
        "image_size": list(images.shape[1:3]), "gaussians": args.gaussians, "iterations": args.iters,
        "results": rows, "one_by_one_with_compiles": one_by_one}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
