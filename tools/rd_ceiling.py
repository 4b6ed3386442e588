#!/usr/bin/env python3
"""How good could a file be at a rate: the fit itself at the budget ``gipp compress --bpp``
plans, before any quantization or coding, against the reference codecs at the same rates.

For every image and target rate it runs the representation fit that ``gipp compress --bpp R``
runs (the same method, steps and Gaussian budget, which the rate table plans about 8% over
what the file keeps), stops there and measures the fit's own render. Drawn at the target's
rate, these points are a ceiling for the codec of the time: what its files would reach if
quantizing and coding the Gaussians cost no quality at all, at the bits per Gaussian they
cost today. BD-rates of that ceiling against the reference codecs of an ``rd_curve.py`` run
(``--reference``: its rd.json, which holds every codec's point on each image) say whether a
better quantizer alone could reach a target, and :func:`bits_factor_for` by what factor a
Gaussian's bits would have to scale for the ceiling to reach a BD-rate of ``--aim`` percent.
Points are kept in OUTDIR/points/ and reused when the command is re-run; ``--shard K/N``
computes every N-th image only (no summary), so that processes can share the work.

``--method`` fits another method at the same plan. A method whose primitives carry cosine
carriers (``gipp-gabor``) is planned by ``gipp-fast``'s rate table, its budget counting a
carrier as a fraction of a Gaussian, and its point is drawn at the rate its own primitives
would cost: the plain Gaussians at the plan's bits per Gaussian, plus each carrier's bits
from a first quantizer (:func:`gipp_jax.carriers.carrier_bits`: a flag per primitive and
three codes per carrier, each by the entropy of its codes). Its PSNR with those quantized
carriers is recorded too (``psnr_quantized_carriers``).

    python tools/rd_ceiling.py ../shared/data/kodak -o docs/rd/kodak-full-ceiling \\
        --targets 0.15 0.5 1.0 --limit 8 --reference docs/rd/kodak-full-defaults/rd.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from rd_curve import mean_curve
from reference_codecs import CODECS

from gipp_jax import carriers as carriers_lib
from gipp_jax import metrics, rate
from gipp_jax import model as model_lib
from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
from gipp_jax.compress import COMPRESS_ITERATIONS, CompressConfig
from gipp_jax.evaluate import protocol_images
from gipp_jax.io import atomic_write_text
from gipp_jax.methods import DEFAULT_COMPRESS_METHOD
from gipp_jax.train import METHODS, FitConfig, Fitter


def ceiling_point(image: np.ndarray, bpp: float, iterations: int, method: str = "gipp-fast") -> dict:
    """The fit ``gipp compress --bpp bpp`` runs on ``image`` (with ``method``), measured as it
    leaves the fit: the planned budget and depths, the Gaussians it holds, PSNR and MS-SSIM
    of its render, and for a method with carriers the rate its primitives would cost
    (``bpp``; see the module docstring)."""
    height, width = image.shape[:2]
    fit_config, config = FitConfig(iterations=iterations, method=method), CompressConfig()
    carried = fit_config.recipe.carriers
    plan = rate.plan_for_target(height, width, "gipp-fast" if carried else fit_config.method_name, bpp=bpp,
                                colors=config.colors_for(fit_config))
    start = time.perf_counter()
    fitter = Fitter(image, config.fit_config_for(dataclasses.replace(fit_config, num_gaussians=plan.num_gaussians)))
    best = fitter.run().best
    rendered = fitter.render(best)
    count = int(np.sum(np.asarray(best.active)))
    point = {"planned_gaussians": plan.num_gaussians, "bits": list(plan.bits), "num_gaussians": count,
             "psnr": float(metrics.psnr(rendered, image)), "ms_ssim": float(metrics.ms_ssim(rendered, image)),
             "fit_seconds": time.perf_counter() - start}
    if carried:
        rows = model_lib.carrier_rows(best)
        carrier_bits = carriers_lib.carrier_bits(np.asarray(best.carriers)[rows], count)
        gaussian_bits = plan.predicted_bpp * height * width / plan.num_gaussians
        _, values = carriers_lib.quantize(np.asarray(best.carriers)[rows])
        quantized = np.array(best.carriers)
        quantized[rows] = values
        requantized = fitter.render(best.replace(carriers=quantized))
        point.update(method=fit_config.method_name, num_carriers=int(rows.size), carrier_bits=carrier_bits,
                     gaussian_bits=gaussian_bits,
                     bpp=bpp * (count * gaussian_bits + carrier_bits) / (plan.num_gaussians * gaussian_bits),
                     psnr_quantized_carriers=float(metrics.psnr(requantized, image)))
    return point


def bits_factor_for(reference, curve, aim_percent: float) -> float | None:
    """The factor ``f`` by which every rate of ``curve`` scales for its BD-rate against
    ``reference`` to be ``aim_percent`` (bisection over 1/16..16; None where out of reach)."""
    def bd(f):
        return metrics.bjontegaard(reference, [(r * f, q) for r, q in curve])["bd_rate_percent"]

    lo, hi = 1.0 / 16, 16.0
    lowest, highest = bd(lo), bd(hi)
    if lowest is None or highest is None or not lowest <= aim_percent <= highest:
        return None
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if bd(mid) < aim_percent else (lo, mid)
    return (lo * hi) ** 0.5


def against_baseline(ours: list[dict], baseline: list[dict]) -> dict:
    """BD-rate of the ``ours`` points against the ``baseline`` points (each an image's point
    at a target rate), and the mean PSNR gain, over the (image, target) pairs both hold."""
    keys = {(p["image"], p["target_bpp"]) for p in ours} & {(p["image"], p["target_bpp"]) for p in baseline}
    # Images with every target in both: a curve per method over the same images.
    targets = {p["target_bpp"] for p in ours}
    images = sorted({i for i, _ in keys if all((i, t) in keys for t in targets)})
    mine = [p for p in ours if p["image"] in images]
    theirs = [p for p in baseline if p["image"] in images and p["target_bpp"] in targets]
    if not images:
        return {"num_images": 0, "images": []}
    curve, base = ([pt[:2] for pt in mean_curve(pts, "target_bpp")] for pts in (mine, theirs))
    return {"num_images": len(images), "images": images,
            "bd_rate_percent": metrics.bjontegaard(base, curve)["bd_rate_percent"],
            "psnr_gain_db": float(np.mean([p["psnr"] for p in mine]) - np.mean([p["psnr"] for p in theirs])),
            "curve": curve, "baseline_curve": base}


def main() -> int:
    use_fast_cpu_flags(enable_compilation_cache())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--targets", type=float, nargs="+", required=True, metavar="BPP")
    parser.add_argument("--iters", type=int, default=COMPRESS_ITERATIONS,
                        help="representation steps (default: gipp compress's, %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="first K images only")
    parser.add_argument("--reference", help="an rd_curve.py rd.json whose codec points (same images, "
                        "same scale) the ceiling is compared with")
    parser.add_argument("--aim", type=float, nargs="+", default=[-10.0, 10.0], metavar="PERCENT",
                        help="BD-rates to say the needed bits factor for (default: %(default)s)")
    parser.add_argument("--shard", help="K/N: only images K, K+N, K+2N, ...; no summary")
    parser.add_argument("--baseline", help="another run's ceiling.json: this ceiling's BD-rate and mean PSNR "
                        "gain against it, on the images and rates both hold")
    parser.add_argument("--method", default=DEFAULT_COMPRESS_METHOD, choices=sorted(METHODS),
                        help="the fit method (default: %(default)s, gipp compress's)")
    args = parser.parse_args()
    if any(t <= 0 for t in args.targets):
        parser.error("--targets must be positive")
    if args.iters <= 0:
        parser.error("--iters must be positive")
    try:
        shard, shards = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
    except ValueError:
        parser.error(f"--shard must be K/N, got {args.shard}")
    if not Path(args.folder).is_dir():
        parser.error(f"not a folder: {args.folder}")
    try:
        reference = json.loads(Path(args.reference).read_text()) if args.reference else None
    except (OSError, ValueError) as err:
        parser.error(f"--reference: cannot read {args.reference}: {err}")
    try:
        baseline = json.loads(Path(args.baseline).read_text())["points"] if args.baseline else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.error(f"--baseline: cannot read the points of {args.baseline}: {err}")

    out = Path(args.output)
    (out / "points").mkdir(parents=True, exist_ok=True)
    ours = []
    for path, image in protocol_images(args.folder, quick=False, limit=args.limit, shard=(shard, shards)):
        for bpp in args.targets:
            suffix = "" if args.method == "gipp-fast" else f"-{args.method}"
            done = out / "points" / f"{path.stem}-bpp{bpp:g}{suffix}.json"
            point = json.loads(done.read_text()) if done.is_file() else None
            if point is None or point["iterations"] != args.iters:  # a point of other steps is redone
                point = {"image": path.name, "target_bpp": bpp, "bpp": bpp, "iterations": args.iters,
                         **ceiling_point(image, bpp, args.iters, args.method)}
                atomic_write_text(done, json.dumps(point) + "\n")
            ours.append(point)
            print(f"{path.name} at {bpp:g} bpp: {point['num_gaussians']} Gaussians fit to {point['psnr']:.2f} dB",
                  flush=True)
    if args.shard:
        return 0

    images = {p["image"] for p in ours}
    curve = [pt[:2] for pt in mean_curve(ours, "target_bpp")]
    device = jax.devices()[0]
    summary = {"command": " ".join(["python"] + sys.argv), "jax_version": jax.__version__,
               "device": getattr(device, "device_kind", str(device)), "date": time.strftime("%Y-%m-%d"),
               "iterations": args.iters, "num_images": len(images), "ceiling": curve, "vs": {}, "points": ours}
    lines = [f"ceiling, {len(images)} images: " + ", ".join(f"{r:.3f} bpp {q:.2f} dB" for r, q in curve)]
    if reference is not None:
        names = reference.get("codec_names", {})
        for key, points in reference["points"].items():
            at = [p for p in points if p["image"] in images]
            if key == "gipp" or not at:
                continue
            codec_curve = [pt[:2] for pt in mean_curve(at, CODECS[key].setting_name)]
            bd = metrics.bjontegaard(codec_curve, curve)
            needed = {str(a): bits_factor_for(codec_curve, curve, a) for a in args.aim}
            summary["vs"][key] = {**bd, "bits_factor_for": needed}
            shown = ", ".join(f"{a}%: x{f:.2f}" if f else f"{a}%: out of reach" for a, f in needed.items())
            rate_text = "none" if bd["bd_rate_percent"] is None else f"{bd['bd_rate_percent']:+.1f}%"
            files = reference.get(f"vs_{key}", {}).get("bd_rate_percent")
            files_text = "" if files is None else f" (the run's files: {files:+.1f}%)"
            lines.append(f"  against {names.get(key, key)}: BD-rate {rate_text}{files_text}; "
                         f"bits per Gaussian to reach {shown}")
    if baseline is not None:
        summary["vs_baseline"] = against_baseline(ours, baseline)
        vs = summary["vs_baseline"]
        if vs["num_images"]:
            bd = vs["bd_rate_percent"]
            lines.append(f"  against {args.baseline} on the same {vs['num_images']} images: BD-rate "
                         f"{'none' if bd is None else f'{bd:+.1f}%'}, PSNR {vs['psnr_gain_db']:+.2f} dB on the mean")
    atomic_write_text(out / "ceiling.json", json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
