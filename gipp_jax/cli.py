"""The ``gipp`` command line.

Every user error (missing or unreadable input, unwritable output, bad numbers) ends with
one line on stderr and exit code 2; outputs are written atomically, so a failed run leaves
no half-written file behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

EXIT_USAGE = 2
MAX_OUTPUT_SIDE = 32768
DEMO_GAUSSIANS = 5000
# gipp fit and fit-dir without --iters or --config: at full size gipp-fast reaches in 600
# steps what it reached in 1000 with its former rates (docs/studies/fitting.md).
DEMO_ITERATIONS = 600
FULL_ITERATIONS = 50000


class CliError(Exception):
    """A one-line user-facing error."""


def sample_image_path() -> Path:
    """The bundled sample image (Kodak kodim23, 768x512)."""
    return Path(str(resources.files("gipp_jax") / "data" / "kodim23.png"))


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``gipp fit: error: --gaussians must be a
    positive integer (got 0)``, exit code 2, without the multi-line usage."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): (must .*)$", r"\1 \2", message)
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _number(kind, text: str, what: str, ok) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} (got {text!r})") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what} (got {text})")
    return value


def _positive_int(text: str) -> int:
    return _number(int, text, "a positive integer", lambda v: v > 0)


def _nonnegative_int(text: str) -> int:
    return _number(int, text, "a non-negative integer", lambda v: v >= 0)


def _integer(text: str) -> int:
    return _number(int, text, "an integer", lambda v: True)


def _positive_float(text: str) -> float:
    return _number(float, text, "a positive number", lambda v: 0 < v < float("inf"))


def _bit_depth(text: str) -> int:
    return _number(int, text, "a bit depth in 1..16", lambda v: 1 <= v <= 16)


def _prepare_outdir(path: Path) -> None:
    """Creates ``path`` and proves it writable before any long computation starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot create output folder {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"output folder is not writable: {path}")


def fit_config(args: argparse.Namespace, defaults: dict):
    """FitConfig from, in increasing precedence: ``defaults``, ``--config``, explicit flags."""
    from gipp_jax.config import load_config
    from gipp_jax.train import FitConfig

    settings = dict(defaults)
    if args.config:
        settings.update(load_config(args.config).get("fit", {}))
    flags = {"num_gaussians": args.gaussians, "iterations": args.iters,
             "parameterization": args.param, "seed": args.seed, "method": args.method,
             "d3": args.d3, "caf": args.caf, "growth_rule": args.growth_rule,
             "new_color": args.new_color, "backend": args.backend}
    settings.update({k: v for k, v in flags.items() if v is not None})
    try:
        return FitConfig(**settings).validate()
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None


def cmd_fit(args: argparse.Namespace) -> int:
    from gipp_jax import io
    from gipp_jax.outputs import fit_report, write_fit_outputs
    from gipp_jax.train import Fitter, best_model

    image_path = Path(args.image) if args.image else sample_image_path()
    image = io.load_image(image_path)
    outdir = Path(args.output)
    demo = {"num_gaussians": DEMO_GAUSSIANS,
            "iterations": FULL_ITERATIONS if args.full else DEMO_ITERATIONS}
    config = fit_config(args, {} if args.config else demo)
    if args.full:
        config = dataclasses.replace(config, iterations=args.iters or FULL_ITERATIONS)
    _prepare_outdir(outdir)
    iterations = config.iterations
    height, width = image.shape[:2]
    print(f"fitting {image_path} ({width}x{height}): method {config.method_name}, {config.num_gaussians} "
          f"Gaussians, {iterations} steps, {config.parameterization} covariance", file=sys.stderr)
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
    result, rendered = fit_report(image_path, image, model, config, fit_seconds, fitter.render(model))
    write_fit_outputs(outdir, result, rendered, model)
    checkpoint.unlink(missing_ok=True)
    print(f"PSNR {result['psnr']:.2f} dB, MS-SSIM {result['ms_ssim']:.4f}, "
          f"{fit_seconds:.1f} s on {result['backend']} ({config.method_name})")
    print(f"wrote {outdir / 'render.png'}, {outdir / 'model.npz'}, {outdir / 'metrics.json'}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from gipp_jax import io
    from gipp_jax import rate as rate_lib
    from gipp_jax.compress import (DEPTH_FIELDS, CompressConfig, checkpoint_files, compress, compress_to_rate,
                                   compression_fit_config)
    from gipp_jax.config import load_config
    from gipp_jax.environment import environment
    from gipp_jax.methods import DEFAULT_COMPRESS_METHOD

    image_path = Path(args.image) if args.image else sample_image_path()
    image = io.load_image(image_path)
    out = Path(args.output)
    if out.suffix.lower() != ".gipp":
        raise CliError(f"output must be a .gipp file, got {out}")
    demo = {"num_gaussians": DEMO_GAUSSIANS, "method": DEFAULT_COMPRESS_METHOD}
    config = fit_config(args, {} if args.config else demo)
    if not (args.config or args.iters):  # the method's share of gipp compress's steps
        config = dataclasses.replace(config, iterations=compression_fit_config(config.method_name).iterations)
    settings = load_config(args.config).get("compression", {}) if args.config else {}
    if args.bits and args.bits[0] > 12:
        raise CliError(f"--bits: position bits must be in 1..12 (got {args.bits[0]})")
    if args.bits:
        settings = {**settings, **dict(zip(DEPTH_FIELDS, args.bits))}
    try:
        cconfig = CompressConfig(**settings).validate()
        colors = cconfig.colors_for(config)
        cconfig = cconfig.for_image(*image.shape[:2]).for_colors(colors)
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None
    # Depths given by --bits or by the config are kept; otherwise rate control picks them.
    fixed_bits = tuple(cconfig.bits.values()) if set(DEPTH_FIELDS) & settings.keys() else None
    for path in (out, Path(args.json)) if args.json else (out,):
        if not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise CliError(f"output folder does not exist: {path.parent}")
    checkpoint = Path(str(out) + ".checkpoint")
    target = args.bpp is not None or args.psnr is not None
    plan = None
    if target:
        plan = _rate_plan(args, image, config, fixed_bits, colors)
        config = dataclasses.replace(config, num_gaussians=plan.num_gaussians)
        cconfig = cconfig.with_bits(plan.bits)
        aim = (f"at most {args.bpp:g} bpp" if args.bpp is not None else f"about {args.psnr:g} dB")
        scaled = ("" if plan.derived_from is None else
                  f"; not measured at these depths, scaled from {'/'.join(map(str, plan.derived_from))}")
        if plan.overshoot > rate_lib.OVERSHOOT:
            scaled += f"; finely detailed: {plan.overshoot - 1:.0%} over, then made to fit"
        print(f"aiming at {aim}: chose {plan.num_gaussians} Gaussians at bits "
              f"{'/'.join(map(str, plan.bits))} (predicted {plan.predicted_bpp:.3f} bpp, "
              f"{plan.predicted_psnr:.1f} dB{scaled})", file=sys.stderr)
    print(f"compressing {image_path}: method {config.method_name}, {config.num_gaussians} Gaussians, "
          f"{config.iterations} + "
          f"{cconfig.phase_steps(config)} steps", file=sys.stderr)
    try:
        if target:
            first_budget = plan.num_gaussians
            result, plan = compress_to_rate(
                image, config, cconfig, bpp=args.bpp, psnr=args.psnr, num_gaussians=args.gaussians,
                bits=fixed_bits, plan=plan, progress=not args.no_progress,
                checkpoint=checkpoint)
        else:
            result = compress(image, config, cconfig, progress=not args.no_progress, checkpoint=checkpoint)
    except KeyboardInterrupt:
        print(f"interrupted; progress saved in {checkpoint}.*.npz, run the same command to resume",
              file=sys.stderr)
        return 130
    if plan is not None and plan.num_gaussians != first_budget:
        print(f"the file of {first_budget} Gaussians missed the target: encoded again with "
              f"{plan.num_gaussians}", file=sys.stderr)
    report = {"image": str(image_path), "file": str(out), "bytes": len(result.blob),
              "bpp": result.bpp, "psnr": result.psnr, "ms_ssim": result.ms_ssim,
              "num_gaussians": result.num_gaussians, "num_carriers": result.num_carriers,
              "height": int(image.shape[0]),
              "width": int(image.shape[1]), "encode_seconds": round(result.encode_seconds, 3),
              "method": config.method_name, "bits": list(cconfig.bits.values()),
              "refine_sweeps": cconfig.refine_sweeps,
              **({"target_bpp": args.bpp} if args.bpp is not None else {}),
              **({"target_psnr": args.psnr} if args.psnr is not None else {}),
              **({"planned_gaussians": plan.num_gaussians} if plan else {}),
              **environment()}
    io.atomic_write_bytes(out, result.blob)
    if args.json:
        io.atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    for path in checkpoint_files(checkpoint):
        Path(path).unlink(missing_ok=True)
    carriers = f" ({result.num_carriers} with a carrier)" if result.num_carriers else ""
    print(f"{result.bpp:.4f} bpp, PSNR {result.psnr:.2f} dB, MS-SSIM {result.ms_ssim:.4f}, "
          f"{result.num_gaussians} Gaussians{carriers} at bits {'/'.join(map(str, cconfig.bits.values()))}; "
          f"wrote {out}")
    return 0


def _rate_plan(args: argparse.Namespace, image, config, bits: tuple[int, int, int] | None, colors: str):
    """What ``--bpp``/``--psnr`` call for on this image of a fit with ``colors`` (budget, and
    depths unless ``bits`` fixes them; ``--gaussians`` overrides the budget)."""
    from gipp_jax import rate

    try:
        return rate.plan_for_target(*image.shape[:2], config.method_name, bpp=args.bpp, psnr=args.psnr,
                                    bits=bits, num_gaussians=args.gaussians, colors=colors, image=image)
    except ValueError as err:
        raise CliError(str(err)) from None


def cmd_decompress(args: argparse.Namespace) -> int:
    from gipp_jax import io
    from gipp_jax.bitstream import FormatError
    from gipp_jax.codec import decode_image

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise CliError(f"output must be a .png file, got {out}")
    try:
        image = decode_image(path.read_bytes(), args.scale)
    except FormatError as err:
        raise CliError(f"{path}: {err}") from None
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    io.save_png(out, image)
    print(f"wrote {out} ({image.shape[1]}x{image.shape[0]})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from gipp_jax.bitstream import FormatError, decode

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    try:
        blob = path.read_bytes()
        data = decode(blob)
    except FormatError as err:
        raise CliError(f"{path}: {err}") from None
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    pos, cov, col = data.bits
    fields = {"file": str(path), "bytes": len(blob), "format": f"version {blob[4]}",
              "image": f"{data.width}x{data.height}", "gaussians": data.codes.shape[0],
              "bits": f"position {pos}, covariance {cov}, color {col}",
              "covariance": ("log diagonal, off-diagonal" if not data.correlation else
                             "log diagonal, correlation (arcsine)" if data.arcsine else "log diagonal, correlation"),
              "colors": ("one step" if data.color_classes is None else
                         "steps by size (reference {}, span {})".format(*data.color_classes)),
              "carriers": ("none" if data.carriers is None else
                           f"{data.num_carriers} (frequency {data.carrier_bits[0]} bits, "
                           f"phase {data.carrier_bits[1]} bits)"),
              "bpp": f"{len(blob) * 8 / (data.width * data.height):.4f}"}
    for key, value in fields.items():
        print(f"{key:<10} {value}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from gipp_jax import io
    from gipp_jax.raster import render

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


def cmd_eval(args: argparse.Namespace) -> int:
    from gipp_jax.evaluate import evaluate_folder

    config = fit_config(args, {})
    outdir = Path(args.output)
    _prepare_outdir(outdir)
    summary = evaluate_folder(args.folder, outdir, config, quick=args.quick,
                              progress=not args.no_progress, limit=args.limit)
    m = summary["mean"]
    print(f"{summary['num_images']} images: mean PSNR {m['psnr']:.2f} dB, MS-SSIM {m['ms_ssim']:.4f}, "
          f"fit {m['fit_seconds']:.1f} s, {m['render_fps']:.0f} FPS")
    print(f"wrote {outdir / 'results.json'} and {outdir / 'results.md'}")
    return 0


def cmd_fit_dir(args: argparse.Namespace) -> int:
    import jax

    if args.distributed:  # before anything touches a JAX backend, imports included
        try:
            jax.distributed.initialize(coordinator_address=args.coordinator,
                                       num_processes=args.num_processes, process_id=args.process_id)
        except (ValueError, RuntimeError) as err:
            raise CliError(f"cannot join the distributed runtime: {str(err).splitlines()[0]}") from None
    from gipp_jax.batch import default_batch_size, fit_folder
    from gipp_jax.evaluate import list_images
    demo = {"num_gaussians": DEMO_GAUSSIANS, "iterations": DEMO_ITERATIONS}
    config = fit_config(args, {} if args.config else demo)
    list_images(args.folder)  # a missing or empty folder fails before anything is written
    outdir = Path(args.output)
    _prepare_outdir(outdir)
    batch = args.batch or default_batch_size()
    print(f"fitting the images of {args.folder} in batches of {batch} over "
          f"{len(jax.local_devices())} device(s): method {config.method_name}, {config.num_gaussians} Gaussians, "
          f"{config.iterations} steps", file=sys.stderr)
    try:
        summary = fit_folder(args.folder, outdir, config, batch_size=batch,
                             progress=not args.no_progress, limit=args.limit)
    except KeyboardInterrupt:
        print(f"interrupted; finished images are in {outdir}, the batch in flight in "
              f"{outdir / 'checkpoint.npz'}: run the same command to resume", file=sys.stderr)
        return 130
    rate = summary["images_per_hour"]
    print(f"{summary['num_images']} images, mean PSNR {summary['mean_psnr']:.2f} dB"
          + (f", {rate:.0f} images per hour" if rate else "") + f"; wrote {outdir}")
    return 0


def _names(choices: tuple[str, ...]):
    """An argparse type: a comma-separated list of ``choices``."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(choices)} "
                                             f"(got {text!r})")
        return names
    return parse


def cmd_bench(args: argparse.Namespace) -> int:
    from gipp_jax import bench
    from gipp_jax.evaluate import list_images

    if args.kodak:
        list_images(args.kodak)  # a missing or empty folder fails before anything runs
    stages = [s for s in (args.only or bench.STAGES) if s not in (args.skip or ())]
    outdir = Path(args.output)
    _prepare_outdir(outdir)
    report = None
    try:
        backends = args.backends
        if args.backend:
            from gipp_jax.raster import resolve_backend
            backends = [resolve_backend(args.backend)]
        report = bench.run_bench(args.suite, backends=backends, stages=stages, kodak=args.kodak,
                                 outdir=outdir, log=bench.log_to_stderr)
    except bench.CheckFailed as err:
        raise CliError(f"correctness check failed, nothing timed: {err}") from None
    finally:
        if report is not None:
            report["command"] = "gipp " + " ".join(args.argv)
            json_path, md_path = bench.write_report(report, outdir)
    print(bench.markdown(report))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    failed = [name for name, stage in report["stages"].items() if stage["status"] == "failed"]
    if failed:
        print(f"gipp bench: stage(s) failed: {', '.join(failed)} (errors in {json_path})", file=sys.stderr)
        return 1
    return 0


def _add_fit_settings(p: argparse.ArgumentParser) -> None:
    from gipp_jax.densify import GROWTH_RULES, NEW_COLORS
    from gipp_jax.parameterization import PARAMETERIZATIONS
    from gipp_jax.raster import BACKENDS
    from gipp_jax.train import METHODS

    p.add_argument("--config", metavar="NAME", help="named config from configs/ or a JSON file; "
                   "flags given explicitly override it")
    p.add_argument("--gaussians", type=_positive_int, metavar="M", help="Gaussian budget")
    p.add_argument("--iters", type=_positive_int, metavar="T", help="optimisation steps")
    p.add_argument("--method", choices=METHODS,
                   help="fit recipe: gipp-fast (the default of every command but compress: content-aware "
                        "start, log-scale covariances, early growth where the error is; converges in "
                        "hundreds of steps), gipp-gabor (compress's default: gipp-fast whose primitives may "
                        "carry a cosine carrier, placed where the image oscillates), "
                        "gaussianimage++ (the authors' recipe, exact) or gaussianimage (its predecessor)")
    p.add_argument("--param", choices=PARAMETERIZATIONS,
                   help="covariance parameterisation (default: the method's, log-rs for gipp-fast, "
                        "direct for gaussianimage++)")
    p.add_argument("--seed", type=_integer, help="initialisation seed (default 3047)")
    p.add_argument("--d3", action=argparse.BooleanOptionalAction, default=None,
                   help="distortion-driven densification (default: from --method)")
    p.add_argument("--caf", action=argparse.BooleanOptionalAction, default=None,
                   help="content-aware filter (default: from --method)")
    p.add_argument("--growth-rule", choices=GROWTH_RULES,
                   help="Gaussians per growth event: code = min(1000, M - N), paper = (M - N)/2")
    p.add_argument("--new-color", choices=NEW_COLORS,
                   help="color of grown Gaussians: zero (default, as the authors' code) or "
                        "the target pixel's (as the paper)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="rasterizer: auto (default: the Mosaic GPU kernels on CUDA once they pass a "
                        "check on the device, else XLA), xla, or pallas (the kernels, forced)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gipp", description="Images as 2D Gaussian splats (GaussianImage++ in JAX).")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit Gaussians to an image",
                         description="Fit Gaussians to an image and write render.png, model.npz "
                                     "and metrics.json to OUTDIR. Progress is checkpointed to "
                                     "OUTDIR/checkpoint.npz; re-running the same command resumes.")
    fit.add_argument("image", nargs="?", help="input image (default: the bundled Kodak sample)")
    fit.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    _add_fit_settings(fit)
    fit.add_argument("--full", action="store_true",
                     help=f"the paper's protocol: {FULL_ITERATIONS} steps (the demo default is "
                          f"{DEMO_GAUSSIANS} Gaussians, {DEMO_ITERATIONS} steps)")
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser("eval", help="fit every image of a folder and report metrics",
                        description="Fit every image in FOLDER; write per-image JSON, results.json "
                                    "and results.md to OUTDIR. Finished images are skipped, so an "
                                    "interrupted run resumes.")
    ev.add_argument("folder", help="folder of images")
    ev.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    _add_fit_settings(ev)
    ev.add_argument("--quick", action="store_true",
                    help="CPU-sized protocol: images downscaled 4x, budget / 16, 5000 steps")
    ev.add_argument("--limit", type=_positive_int, metavar="K", help="only the first K images")
    ev.set_defaults(func=cmd_eval)

    fd = sub.add_parser("fit-dir", help="fit every image of a folder, many at once",
                        description="Fit the images of FOLDER in batches (one compiled program per "
                                    "image size, split over all local devices) and write OUTDIR/NAME/ "
                                    "with render.png, model.npz and metrics.json per image. Finished "
                                    "images are skipped and the batch in flight is checkpointed, so "
                                    "re-running the same command resumes.")
    fd.add_argument("folder", help="folder of images")
    fd.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    fd.add_argument("--batch", type=_positive_int, metavar="B",
                    help="images per compiled batch (default: 8 on GPU/TPU, 1 on CPU, where "
                         "batching is no faster per image)")
    fd.add_argument("--limit", type=_positive_int, metavar="K", help="only the first K images")
    _add_fit_settings(fd)
    fd.add_argument("--distributed", action="store_true",
                    help="join JAX's distributed runtime (jax.distributed.initialize; settings from "
                         "the cluster environment or the flags below); each host fits its share")
    fd.add_argument("--coordinator", metavar="HOST:PORT", help="coordinator address (with --distributed)")
    fd.add_argument("--num-processes", type=_positive_int, metavar="N", help="with --distributed")
    fd.add_argument("--process-id", type=_nonnegative_int, metavar="I", help="with --distributed")
    fd.set_defaults(func=cmd_fit_dir)

    comp = sub.add_parser("compress", help="compress an image to a .gipp file",
                          description="Fit, quantize (QAT) and entropy-code an image; print bpp, "
                                      "PSNR and MS-SSIM of what the file decodes to.")
    comp.add_argument("image", nargs="?", help="input image (default: the bundled Kodak sample)")
    comp.add_argument("-o", "--output", required=True, metavar="FILE.gipp")
    comp.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    comp.add_argument("--bits", type=_bit_depth, nargs=3, metavar=("POS", "COV", "COL"),
                      help="quantizer bit depths (default: the config's, else 10 7 5, the measured "
                           "best at small sizes; the reference's are 12 10 6); depths below 12 10 6 "
                           "are reached by stepping down from them")
    aim = comp.add_mutually_exclusive_group()
    aim.add_argument("--bpp", type=_positive_float, metavar="B",
                     help="target rate in bits per pixel: the file is at most this large; the budget "
                          "and bit depths are chosen from the measured rate table (--gaussians and "
                          "--bits override)")
    aim.add_argument("--psnr", type=_positive_float, metavar="D",
                     help="target quality in dB: budget and bit depths predicted to reach it with the "
                          "smallest file; encoded once more when the file misses it by over 0.5 dB")
    _add_fit_settings(comp)
    comp.set_defaults(func=cmd_compress)

    dec = sub.add_parser("decompress", help="decode a .gipp file to PNG")
    dec.add_argument("file", help=".gipp file")
    dec.add_argument("-o", "--output", required=True, metavar="OUT.png")
    dec.add_argument("--scale", type=_positive_float, default=1.0, metavar="S",
                     help="output size relative to the encoded image (default 1)")
    dec.set_defaults(func=cmd_decompress)

    info = sub.add_parser("info", help="describe a .gipp file",
                          description="Print what a .gipp file holds, one field per line: size in "
                                      "bytes, format version, image size, Gaussian count, bit depths, "
                                      "bits per pixel. The whole file is decoded, so a corrupt one is "
                                      "refused.")
    info.add_argument("file", help=".gipp file")
    info.set_defaults(func=cmd_info)

    from gipp_jax.bench import STAGES, SUITES
    from gipp_jax.raster import BACKENDS
    bn = sub.add_parser("bench", help="check and time the renderer and fitting on this machine",
                        description="Check the rasterizers against each other, then time binning, "
                                    "rendering (FPS), training steps and batch fitting on the backend "
                                    "JAX finds, and with --kodak fit a folder by the paper's protocol. "
                                    "Writes OUTDIR/bench.json and bench.md and prints the tables. A "
                                    "failed check stops the run; any other failing stage is recorded "
                                    "and the others still run.")
    bn.add_argument("--suite", choices=tuple(SUITES), default="quick",
                    help="smoke: every stage at tiny sizes (seconds, any machine); quick: 768x512 "
                         "with 5000 and 10000 Gaussians (default); full: also 2040x1356 and, with "
                         "--kodak, 50000-step fits at full size")
    bn.add_argument("--backend", choices=BACKENDS,
                    help="time only this rasterizer (auto: the one a fit would use here)")
    bn.add_argument("--backends", type=_names(("pallas", "xla")), metavar="LIST",
                    help="rasterizers to time, comma-separated (default: pallas,xla on a CUDA GPU, "
                         "xla elsewhere, where the kernel only runs interpreted)")
    bn.add_argument("--kodak", metavar="DIR", help="also fit this folder by the suite's protocol "
                    "(quick: images / 4, budgets / 16, 5000 steps; full: the paper's)")
    bn.add_argument("-o", "--output", default="bench-output", metavar="OUTDIR",
                    help="output folder (default bench-output)")
    bn.add_argument("--skip", type=_names(STAGES), metavar="STAGES",
                    help=f"stages to leave out, comma-separated ({', '.join(STAGES)})")
    bn.add_argument("--only", type=_names(STAGES), metavar="STAGES", help="run only these stages")
    bn.set_defaults(func=cmd_bench)

    rend = sub.add_parser("render", help="render a fitted model to PNG")
    rend.add_argument("model", help="model.npz written by 'gipp fit'")
    rend.add_argument("-o", "--output", required=True, metavar="OUT.png", help="output PNG")
    rend.add_argument("--scale", type=_positive_float, default=1.0, metavar="S",
                      help="output size relative to the fitted image (default 1)")
    rend.set_defaults(func=cmd_render)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gipp: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
    from gipp_jax.io import InputError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    # A second run of the same shapes loads its programs from disk; XLA:CPU compiles and runs
    # faster with the flags this jaxlib accepts (both before anything computes).
    use_fast_cpu_flags(enable_compilation_cache())
    from gipp_jax.raster import KernelUnsupportedError
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.func(args)
    except (CliError, InputError, KernelUnsupportedError) as err:
        print(f"gipp {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"gipp {args.command}: error: out of memory; try fewer Gaussians or a smaller image", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
