#!/usr/bin/env python3
"""Render benchmark: forward and forward+backward time per frame on the current backend.

The scene is the reference's starting point for GaussianImage++ at the given budget:
centers uniform over the image, Cholesky factors U[0,1) + (0.5, 0, 0.5), and the
content-aware filter variance HW / (9 pi N) on the diagonal; or, with ``--file``, the
Gaussians a ``.gipp`` file decodes to (a fitted scene, at the file's image size); or, with
``--model``, a fitted ``model.npz`` of ``gipp fit``, carriers included (``--plain``: the same
scene drawn without them, for the carriers' cost). Binning is included in every timing.
Prints one JSON object.

    python tools/bench_render.py --height 512 --width 768 --gaussians 10000
    python tools/bench_render.py --file docs/rd/kodak-full-targets-v5/points/kodim01-bpp1-gipp-fast.gipp --headroom 2
    python tools/bench_render.py --model out/model.npz [--plain]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import bitstream
from gipp_jax.bench import time_calls
from gipp_jax.codec import file_gaussians
from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
from gipp_jax.environment import environment
from gipp_jax.io import InputError, load_model
from gipp_jax.model import active_carriers, caf_variance
from gipp_jax.raster import model_attributes, render_with_stats
from gipp_jax.raster.binning import DEFAULT_CHUNK_SIZE


def scene(height: int, width: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(0, 1, (n, 2)) * [width, height]
    l11, l21, l22 = (rng.uniform(0, 1, (3, n)) + np.array([[0.5], [0.0], [0.5]]))
    s = float(caf_variance(height, width, n))
    cov3 = np.stack([l11 ** 2 + s, l11 * l21, l21 ** 2 + l22 ** 2 + s], -1)
    colors = rng.uniform(0, 1, (n, 3)) / 4
    return (jnp.asarray(means, jnp.float32), jnp.asarray(cov3, jnp.float32),
            jnp.asarray(colors, jnp.float32))


def timed(fn, args, repeats: int) -> list[float]:
    """Milliseconds per call (see :func:`gipp_jax.bench.time_calls`)."""
    return [1000.0 * t for t in time_calls(fn, args, repeats)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--gaussians", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--headroom", type=float, default=1.0,
                        help="buffers this many times the scene's exact need (a fit allocates 2)")
    parser.add_argument("--file", help="render the Gaussians of this .gipp file instead (its size and count)")
    parser.add_argument("--model", help="render this model.npz of gipp fit instead (carriers included)")
    parser.add_argument("--plain", action="store_true", help="with --model: draw its primitives without carriers")
    args = parser.parse_args()
    # The command line's compiler settings, so that the figures are what `gipp` runs at.
    use_fast_cpu_flags(enable_compilation_cache())
    if not args.headroom >= 1.0:  # smaller buffers would drop pairs and time an incomplete image
        parser.error(f"--headroom must be at least 1 (got {args.headroom:g})")

    carriers = None
    if args.file and args.model:
        parser.error("give --file or --model, not both")
    if args.model:
        try:
            model = load_model(args.model)
        except InputError as err:
            parser.error(str(err))
        h, w = model.height, model.width
        means, cov3, colors = model_attributes(model)
        carriers = None if args.plain else active_carriers(model)
        args.gaussians = model.num_active()
    elif args.file:
        try:
            data = bitstream.decode(open(args.file, "rb").read())
        except (OSError, bitstream.FormatError) as err:
            parser.error(f"cannot read {args.file}: {err}")
        h, w = data.height, data.width
        means, cov3, colors = (jnp.asarray(v, jnp.float32) for v in file_gaussians(data))
        args.gaussians = int(means.shape[0])
    else:
        h, w = args.height, args.width
        means, cov3, colors = scene(h, w, args.gaussians)
    target = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (h, w, 3)), jnp.float32)

    # Exact buffer sizes for this scene (what a fit sizes from, before its headroom).
    probe = jax.jit(lambda m, c, k: render_with_stats(m, c, k, h, w, 1 << 22, 1,
                                                      chunk_size=args.chunk_size)[1])
    pairs, chunks = (int(v) for v in probe(means, cov3, colors))
    pair_buffer, chunk_buffer = (int(round(v * args.headroom)) for v in (pairs, chunks))

    def forward(m, c, k, f):
        return render_with_stats(m, c, k, h, w, pair_buffer, chunk_buffer, backend=args.backend,
                                 chunk_size=args.chunk_size, carriers=f)[0]

    def loss(m, c, k, f):
        return jnp.mean(jnp.square(jnp.clip(forward(m, c, k, f), 0, 1) - target))

    fwd = jax.jit(forward)
    # Every attribute's gradient, the carriers' too where there are some.
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2) if carriers is None else (0, 1, 2, 3)))
    t_fwd = timed(fwd, (means, cov3, colors, carriers), args.repeats)
    t_bwd = timed(fwd_bwd, (means, cov3, colors, carriers), args.repeats)
    result = {
        "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
        **environment(),
        "render_backend": args.backend,
        "cpu": platform.processor() or platform.machine(),
        "scene": args.model or args.file or "reference start", "height": h, "width": w,
        "gaussians": args.gaussians, "carriers": carriers is not None,
        "tile_pairs": pairs, "chunks": chunks, "chunk_size": args.chunk_size, "headroom": args.headroom,
        "forward_ms_median": round(statistics.median(t_fwd), 3),
        "forward_backward_ms_median": round(statistics.median(t_bwd), 3),
        "forward_fps": round(1000.0 / statistics.median(t_fwd), 1),
        "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
