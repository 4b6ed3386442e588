#!/usr/bin/env python3
"""Rate-distortion evaluation: our .gipp files against JPEG and WebP (Pillow) on a folder.

For every image it compresses at each Gaussian budget (GaussianImage++ with QAT; the file
size is the rate) and runs JPEG and WebP over their quality range on the same image. It
writes OUTDIR/rd.json (every point, per-setting means, BD-rate and BD-PSNR of ours
against each codec, decoding times) and, with matplotlib installed, OUTDIR/rd.png.
Finished points (a JSON line and the .gipp file) are kept in OUTDIR/points/ and reused
when the command is re-run. ``--shard K/N`` computes only our points of every N-th image
(from the K-th), so that N processes can share the work; a final run without it gathers them.

    python tools/rd_curve.py ../shared/data/kodak -o rd --quick --limit 4
"""

from __future__ import annotations

import argparse
import io as pyio
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from gipp_jax import metrics
from gipp_jax.compress import CompressConfig, compress, decode_image
from gipp_jax.evaluate import QUICK_BUDGET_DIVISOR, QUICK_DOWNSCALE, QUICK_ITERATIONS, downscale, list_images
from gipp_jax.io import atomic_write_bytes, atomic_write_text, load_image, to_uint8
from gipp_jax.methods import DEFAULT_METHOD
from gipp_jax.train import METHODS, FitConfig

QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
DEFAULT_BUDGETS = (1000, 2000, 5000, 10000)


def codec_point(image: np.ndarray, fmt: str, quality: int) -> dict:
    buf = pyio.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format=fmt, quality=quality)
    start = time.perf_counter()
    decoded = np.asarray(Image.open(pyio.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255.0
    seconds = time.perf_counter() - start
    h, w = image.shape[:2]
    return {"bpp": len(buf.getvalue()) * 8 / (h * w), "psnr": float(metrics.psnr(decoded, image)),
            "decode_seconds": seconds}


def mean_curve(points: list[dict], key: str) -> list[tuple[float, float]]:
    settings = sorted({p[key] for p in points})
    return [(float(np.mean([p["bpp"] for p in points if p[key] == s])),
             float(np.mean([p["psnr"] for p in points if p[key] == s]))) for s in settings]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS))
    parser.add_argument("--iters", type=int, default=50000)
    parser.add_argument("--quick", action="store_true",
                        help="gipp eval's quick protocol: images / 4, budgets / 16, 5000 steps")
    parser.add_argument("--limit", type=int, default=None, help="first K images only")
    parser.add_argument("--anchors", help="published RD points (JSON) to draw on the plot")
    parser.add_argument("--bits", type=int, nargs=3, metavar=("POS", "COV", "COL"),
                        default=list(CompressConfig().bits.values()),
                        help="quantizer bit depths (default: gipp compress's, %(default)s; the "
                             "reference's are 12 10 6)")
    parser.add_argument("--no-correlation", action="store_true",
                        help="code the off-diagonal itself, as the reference (with --method "
                             "gaussianimage++ --bits 12 10 6: the paper's pipeline)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help="fit method of the representation phase (default: %(default)s)")
    parser.add_argument("--shard", help="K/N: only our points of images K, K+N, K+2N, ...; no summary")
    args = parser.parse_args()
    shard, shards = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)

    out = Path(args.output)
    (out / "points").mkdir(parents=True, exist_ok=True)
    cconfig = CompressConfig(*args.bits, correlation=not args.no_correlation).validate()
    budgets = [max(1, b // QUICK_BUDGET_DIVISOR) if args.quick else b for b in args.budgets]
    iters = QUICK_ITERATIONS if args.quick else args.iters
    ours, jpeg, webp = [], [], []
    for path in list_images(args.folder)[: args.limit][shard::shards]:
        image = load_image(path)
        if args.quick:
            image = downscale(image, QUICK_DOWNSCALE)
        for budget in budgets:
            tag = "" if args.method == "gaussianimage++" else f"-{args.method}"
            done = out / "points" / f"{path.stem}-{budget}{tag}.json"
            if done.is_file():
                point = json.loads(done.read_text())
            else:
                config = FitConfig(num_gaussians=budget, iterations=iters, method=args.method,
                                   max_growth=max(1, 1000 // (QUICK_BUDGET_DIVISOR if args.quick else 1)))
                result = compress(image, config, cconfig)
                start = time.perf_counter()
                decode_image(result.blob)
                point = {"image": path.name, "method": args.method, "budget": budget, "bits": args.bits,
                         "correlation": cconfig.correlation,
                         "bpp": result.bpp,
                         "psnr": result.psnr,
                         "ms_ssim": result.ms_ssim, "num_gaussians": result.num_gaussians,
                         "encode_seconds": result.encode_seconds,
                         "decode_seconds": time.perf_counter() - start}
                atomic_write_bytes(done.with_suffix(".gipp"), result.blob)
                atomic_write_text(done, json.dumps(point) + "\n")
            ours.append(point)
            print(f"{path.name} M={budget}: {point['bpp']:.3f} bpp {point['psnr']:.2f} dB", flush=True)
        if args.shard:
            continue
        for quality in QUALITIES:
            jpeg.append({"image": path.name, "quality": quality, **codec_point(image, "JPEG", quality)})
            webp.append({"image": path.name, "quality": quality, **codec_point(image, "WEBP", quality)})

    if args.shard:
        return 0
    curves = {"gipp": mean_curve(ours, "budget"), "jpeg": mean_curve(jpeg, "quality"),
              "webp": mean_curve(webp, "quality")}
    device = jax.devices()[0]
    summary = {
        "command": " ".join(["python"] + sys.argv),
        "device": getattr(device, "device_kind", str(device)), "jax_version": jax.__version__,
        "quick": args.quick, "method": args.method, "budgets": budgets, "bits": args.bits,
        "correlation": cconfig.correlation, "iterations": iters,
        "num_images": len({p["image"] for p in ours}),
        "curves": curves,
        "vs_jpeg": metrics.bjontegaard(curves["jpeg"], curves["gipp"]),
        "vs_webp": metrics.bjontegaard(curves["webp"], curves["gipp"]),
        "mean_decode_seconds": {"gipp": float(np.mean([p["decode_seconds"] for p in ours])),
                                "jpeg": float(np.mean([p["decode_seconds"] for p in jpeg])),
                                "webp": float(np.mean([p["decode_seconds"] for p in webp]))},
        "points": {"gipp": ours, "jpeg": jpeg, "webp": webp},
    }
    atomic_write_text(out / "rd.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("curves", "vs_jpeg", "vs_webp", "mean_decode_seconds")}, indent=2))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plots]'): no plot", file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, style in (("gipp", "o-"), ("jpeg", "s--"), ("webp", "^--")):
        xs, ys = zip(*curves[name])
        ax.plot(xs, ys, style, label={"gipp": "gipp-jax (ours)"}.get(name, name.upper()))
    if args.anchors and not args.quick:
        for name, pts in json.loads(Path(args.anchors).read_text()).items():
            if isinstance(pts, dict) and "bpp" in pts and "psnr" in pts:
                ax.plot(pts["bpp"], pts["psnr"], ":", alpha=0.6, label=name)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{summary['num_images']} images{' (quick protocol)' if args.quick else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rd.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
