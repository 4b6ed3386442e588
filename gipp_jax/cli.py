"""The ``gipp`` command line.

Every user error (missing or unreadable input, unwritable output, bad numbers) ends with
one line on stderr and exit code 2; outputs are written atomically, so a failed run leaves
no half-written file behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

EXIT_USAGE = 2
MAX_OUTPUT_SIDE = 32768
DEMO_GAUSSIANS = 5000
DEMO_ITERATIONS = 2000
FULL_ITERATIONS = 50000


class CliError(Exception):
    """A one-line user-facing error."""


def sample_image_path() -> Path:
    """The bundled sample image (Kodak kodim23, 768x512)."""
    return Path(str(resources.files("gipp_jax") / "data" / "kodim23.png"))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _prepare_outdir(path: Path) -> None:
    """Creates ``path`` and proves it writable before any long computation starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot create output folder {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"output folder is not writable: {path}")


def _environment() -> dict:
    import jax

    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
            "jax_version": jax.__version__}


def cmd_fit(args: argparse.Namespace) -> int:
    from gipp_jax import io, metrics
    from gipp_jax.render import render
    from gipp_jax.train import FitConfig, Fitter, best_model

    image_path = Path(args.image) if args.image else sample_image_path()
    image = io.load_image(image_path)
    outdir = Path(args.output)
    _prepare_outdir(outdir)
    iterations = args.iters or (FULL_ITERATIONS if args.full else DEMO_ITERATIONS)
    config = FitConfig(num_gaussians=args.gaussians, iterations=iterations,
                       parameterization=args.param, seed=args.seed).validate()
    height, width = image.shape[:2]
    print(f"fitting {image_path} ({width}x{height}) with {config.num_gaussians} Gaussians, "
          f"{iterations} steps, {config.parameterization} covariance", file=sys.stderr)
    checkpoint = outdir / "checkpoint.npz"
    fitter = Fitter(image, config, progress=not args.no_progress, checkpoint_path=checkpoint)
    start = time.perf_counter()
    try:
        state = fitter.run()
    except KeyboardInterrupt:
        print(f"interrupted; progress saved in {checkpoint}, run the same command to resume",
              file=sys.stderr)
        return 130
    fit_seconds = time.perf_counter() - start
    model = best_model(state)
    rendered = render(model)
    result = {
        "image": str(image_path),
        "psnr": float(metrics.psnr(rendered, image)),
        "ms_ssim": float(metrics.ms_ssim(rendered, image)),
        "num_gaussians": model.num_active(),
        "iterations": iterations,
        "parameterization": config.parameterization,
        "seed": config.seed,
        "fit_seconds": round(fit_seconds, 3),
        "height": int(height),
        "width": int(width),
        **_environment(),
    }
    io.save_png(outdir / "render.png", rendered)
    io.save_model(outdir / "model.npz", model)
    io.atomic_write_text(outdir / "metrics.json", json.dumps(result, indent=2) + "\n")
    checkpoint.unlink(missing_ok=True)
    print(f"PSNR {result['psnr']:.2f} dB, MS-SSIM {result['ms_ssim']:.4f}, "
          f"{fit_seconds:.1f} s on {result['backend']}")
    print(f"wrote {outdir / 'render.png'}, {outdir / 'model.npz'}, {outdir / 'metrics.json'}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from gipp_jax import io
    from gipp_jax.render import render

    model = io.load_model(args.model)
    height = max(1, round(model.height * args.scale))
    width = max(1, round(model.width * args.scale))
    if max(height, width) > MAX_OUTPUT_SIDE:
        raise CliError(f"--scale {args.scale} gives {width}x{height} pixels; the limit is "
                       f"{MAX_OUTPUT_SIDE} per side")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise CliError(f"output must be a .png file, got {out}")
    io.save_png(out, render(model, height, width))
    print(f"wrote {out} ({width}x{height})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gipp_jax.parameterization import PARAMETERIZATIONS

    parser = argparse.ArgumentParser(prog="gipp", description="Images as 2D Gaussian splats (GaussianImage++ in JAX).")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit Gaussians to an image",
                         description="Fit Gaussians to an image and write render.png, model.npz "
                                     "and metrics.json to OUTDIR. Progress is checkpointed to "
                                     "OUTDIR/checkpoint.npz; re-running the same command resumes.")
    fit.add_argument("image", nargs="?", help="input image (default: the bundled Kodak sample)")
    fit.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    fit.add_argument("--gaussians", type=_positive_int, default=DEMO_GAUSSIANS, metavar="M",
                     help=f"Gaussian budget (default {DEMO_GAUSSIANS})")
    fit.add_argument("--iters", type=_positive_int, default=None, metavar="T",
                     help=f"optimisation steps (default {DEMO_ITERATIONS}, or {FULL_ITERATIONS} with --full)")
    fit.add_argument("--full", action="store_true",
                     help=f"the paper's protocol: {FULL_ITERATIONS} steps")
    fit.add_argument("--param", choices=PARAMETERIZATIONS, default="cholesky",
                     help="covariance parameterisation (default cholesky)")
    fit.add_argument("--seed", type=int, default=3047, help="initialisation seed (default 3047)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.set_defaults(func=cmd_fit)

    rend = sub.add_parser("render", help="render a fitted model to PNG")
    rend.add_argument("model", help="model.npz written by 'gipp fit'")
    rend.add_argument("-o", "--output", required=True, metavar="OUT.png", help="output PNG")
    rend.add_argument("--scale", type=_positive_float, default=1.0, metavar="S",
                      help="output size relative to the fitted image (default 1)")
    rend.set_defaults(func=cmd_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gipp_jax.io import InputError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, InputError) as err:
        print(f"gipp: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("gipp: error: out of memory; try fewer Gaussians or a smaller image", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
