#!/usr/bin/env python3
"""Rate-distortion evaluation: our .gipp files against the reference codecs on a folder.

For every image it compresses at each Gaussian budget (``--budgets``; the file size is the
rate) or at each target rate through the rate control of ``gipp compress --bpp``
(``--targets``: then it also reports where every file landed against its target), and runs
every reference codec (tools/reference_codecs.py: JPEG, WebP, AVIF, JPEG 2000; ``--codecs``)
over its sweep of settings on the same image. It writes OUTDIR/rd.json (every point with its
PSNR and MS-SSIM, per-setting means, BD-rate and BD-PSNR of ours against each codec, encode
and decode times), OUTDIR/rd.md (the tables) and, with matplotlib installed, OUTDIR/rd.png, with the
published RD points of ``--anchors`` and the GaussianImage papers' Kodak points drawn
alongside (at the quick protocol's quarter size they are marked as full-resolution
figures: a smaller image costs more bits per pixel for the same PSNR).
Finished points (a JSON line and the .gipp file) are kept in OUTDIR/points/ and reused
when the command is re-run. ``--shard K/N`` computes only our points of every N-th image
(from the K-th), so that N processes can share the work; a final run without it gathers them.

    python tools/rd_curve.py ../shared/data/kodak -o rd --quick --limit 4
    python tools/rd_curve.py ../shared/data/kodak -o landing --quick --targets 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from reference_codecs import add_codecs_argument

from gipp_jax import metrics
from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
from gipp_jax.codec import decode_image
from gipp_jax.compress import COMPRESS_ITERATIONS, CompressConfig, compress, compress_to_rate, compression_fit_config
from gipp_jax.evaluate import QUICK_BUDGET_DIVISOR, QUICK_ITERATIONS, protocol_images
from gipp_jax.io import atomic_write_bytes, atomic_write_text
from gipp_jax.methods import DEFAULT_COMPRESS_METHOD
from gipp_jax.rate import TOLERANCE
from gipp_jax.train import METHODS, FitConfig

DEFAULT_BUDGETS = (1000, 2000, 5000, 10000)
# Kodak means published by the papers (full resolution; ../shared/REFERENCE.md).
PAPER_POINTS = {"GaussianImage++ (paper)": {"bpp": [0.15, 1.08], "psnr": [25.3, 31.1]},
                "GaussianImage (paper)": {"bpp": [0.15, 1.00], "psnr": [25.0, 29.7]}}
DEFAULT_ANCHORS = ("JPEG2000", "BPG444", "COIN", "COIN++", "C3", "COOL-CHICv2")


def our_point(image: np.ndarray, args, cconfig: CompressConfig, iters: int, key: str, setting,
              done: Path) -> dict:
    """Compresses ``image`` at one budget or target rate, writes the file next to ``done``
    and returns what the point records (rate, quality, sizes, times)."""
    if key == "budget":
        config = FitConfig(num_gaussians=setting, iterations=iters, method=args.method,
                           max_growth=max(1, 1000 // (QUICK_BUDGET_DIVISOR if args.quick else 1)))
        bits = list(cconfig.for_image(*image.shape[:2]).for_colors(cconfig.colors_for(config)).bits.values())
        result, extra = compress(image, config, cconfig), {"bits": bits}
    else:
        config = FitConfig(iterations=iters, method=args.method)
        result, plan = compress_to_rate(image, config, cconfig, bpp=setting)
        extra = {"bits": list(plan.bits), "planned_gaussians": plan.num_gaussians,
                 "ratio": result.bpp / setting}
    start = time.perf_counter()
    decode_image(result.blob)
    decode_seconds = time.perf_counter() - start
    atomic_write_bytes(done.with_suffix(".gipp"), result.blob)
    return {**extra, "colors": cconfig.colors_for(config), "correlation": cconfig.correlation,
            "arcsine": cconfig.arcsine, "sized_colors": cconfig.sized_colors,
            "refine_sweeps": cconfig.refine_sweeps, "bpp": result.bpp, "psnr": result.psnr,
            "ms_ssim": result.ms_ssim, "num_gaussians": result.num_gaussians,
            "encode_seconds": result.encode_seconds, "decode_seconds": decode_seconds}


def landing_rows(points: list[dict], targets: list[float]) -> list[dict]:
    """Per target: how many files landed within :data:`TOLERANCE` under it (none may be over)."""
    rows = []
    for target in targets:
        ratios = [p["bpp"] / target for p in points if p["target_bpp"] == target]
        rows.append({"target_bpp": target, "images": len(ratios), "min_ratio": min(ratios),
                     "max_ratio": max(ratios),
                     "within_tolerance": sum(1 - TOLERANCE <= r <= 1.0 for r in ratios)})
    return rows


# The BD figures of a summary: (key suffix, metrics.bjontegaard method). Both are reported
# until the piecewise-cubic one, which codec studies use, has replaced the polynomial.
BD_VARIANTS = (("", "polynomial"), ("_pchip", "pchip"))


def markdown(summary: dict) -> str:
    """The summary as Markdown: mean curve of each codec, BD figures, landing, times."""
    names = {"gipp": "gipp-jax (ours)", **summary["codec_names"]}
    lines = [f"{summary['num_images']} images, {summary['method']}, {summary['iterations']} steps"
             f"{', quick protocol' if summary['quick'] else ''}; {summary['device']}, jax "
             f"{summary['jax_version']}, {summary['date']}", "",
             "| codec | mean bpp / PSNR dB / MS-SSIM per setting |", "|---|---|"]
    for key, curve in summary["curves"].items():
        lines.append(f"| {names[key]} | " + ", ".join(
            f"{b:.3f}/{p:.2f}/{'-' if m is None else f'{m:.4f}'}" for b, p, m in curve) + " |")
    lines.append("")
    for key, name in summary["codec_names"].items():
        figures = []
        for suffix, method in BD_VARIANTS:
            bd = summary.get(f"vs_{key}{suffix}")
            if bd is None:  # a summary written before PCHIP was reported
                continue
            rate, gain = bd["bd_rate_percent"], bd["bd_psnr_db"]
            figures.append(f"{method}: BD-rate " + ("n/a (no overlap)" if rate is None else f"{rate:+.1f}%")
                           + ", BD-PSNR " + ("n/a" if gain is None else f"{gain:+.2f} dB"))
        lines.append(f"against {name}: " + "; ".join(figures))
    if summary.get("landing"):
        lines += ["", "| target bpp | images | landed within 10% under | rate / target (min-max) |",
                  "|---|---|---|---|"]
        lines += [f"| {r['target_bpp']:g} | {r['images']} | {r['within_tolerance']} | "
                  f"{r['min_ratio']:.3f}-{r['max_ratio']:.3f} |" for r in summary["landing"]]
    encode, decode = summary["mean_encode_seconds"], summary["mean_decode_seconds"]
    lines += ["", "| codec | encode (mean per file) | decode |", "|---|---|---|"]
    lines += [f"| {names[key]} | {encode[key]:.3g} s | {1000 * decode[key]:.3g} ms |" for key in names]
    lines += ["", f"`{summary['command']}`"]
    return "\n".join(lines) + "\n"


def mean_curve(points: list[dict], key: str) -> list[tuple[float, float, float | None]]:
    """Per setting ``key``: the mean (bpp, PSNR, MS-SSIM) over images (MS-SSIM None where a
    point has none)."""
    curve = []
    for setting in sorted({p[key] for p in points}):
        at = [p for p in points if p[key] == setting]
        ms_ssim = [p.get("ms_ssim") for p in at]
        curve.append((float(np.mean([p["bpp"] for p in at])), float(np.mean([p["psnr"] for p in at])),
                      None if None in ms_ssim else float(np.mean(ms_ssim))))
    return curve


def main() -> int:
    use_fast_cpu_flags(enable_compilation_cache())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True)
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS),
                       help="Gaussian budgets at full size (divided by 16 with --quick; default: %(default)s)")
    rates.add_argument("--targets", type=float, nargs="+", metavar="BPP",
                       help="target rates instead, met by gipp compress --bpp's rate control "
                            "(budget and bit depths from the rate table; --bits is then unused)")
    parser.add_argument("--iters", type=int, default=None,
                        help="representation steps (default: 5000 with --quick, else what gipp "
                             f"compress runs, {COMPRESS_ITERATIONS} or the method's share of it)")
    parser.add_argument("--quick", action="store_true",
                        help="gipp eval's quick protocol: images / 4, budgets / 16, 5000 steps "
                             "unless --iters")
    parser.add_argument("--limit", type=int, default=None, help="first K images only")
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first K images (before --limit)")
    parser.add_argument("--anchors", help="published RD points (JSON, e.g. "
                        "../shared/data/anchors/kodak_rd_anchors_from_c3.json) to draw on the plot")
    parser.add_argument("--anchor-names", nargs="+", default=list(DEFAULT_ANCHORS),
                        help="which of them (default: %(default)s)")
    parser.add_argument("--bits", type=int, nargs=3, metavar=("POS", "COV", "COL"),
                        help="quantizer bit depths (default: gipp compress's, 10/7/5 on a 192-px "
                             "side, positions one bit more per doubling; the reference's are 12 10 6)")
    parser.add_argument("--no-correlation", action="store_true",
                        help="code the off-diagonal itself, as the reference (with --method "
                             "gaussianimage++ --bits 12 10 6 --uniform-colors --no-refine: the "
                             "paper's pipeline)")
    parser.add_argument("--uniform-colors", action="store_true",
                        help="one color step for every Gaussian, as the reference (default: "
                             "steps by size, quantize's sized colors)")
    parser.add_argument("--no-refine", action="store_true",
                        help="write the codes QAT rounds to, as the reference, without refining them "
                             "against the image (gipp_jax.refine)")
    parser.add_argument("--method", default=DEFAULT_COMPRESS_METHOD, choices=METHODS,
                        help="fit method of the representation phase (default: %(default)s)")
    add_codecs_argument(parser)
    parser.add_argument("--shard", help="K/N: only our points of images K, K+N, K+2N, ...; no summary")
    args = parser.parse_args()
    codecs = args.codecs
    shard, shards = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
    if args.targets and any(t <= 0 for t in args.targets):
        parser.error("--targets must be positive")
    if not args.targets and any(b <= 0 for b in args.budgets):
        parser.error("--budgets must be positive")
    if args.skip < 0:
        parser.error("--skip must be >= 0")
    if args.iters is not None and args.iters <= 0:
        parser.error("--iters must be positive")
    if not Path(args.folder).is_dir():
        parser.error(f"not a folder: {args.folder}")
    if args.anchors and not Path(args.anchors).is_file():  # read for the plot, after the run
        parser.error(f"--anchors: no such file: {args.anchors}")

    out = Path(args.output)
    (out / "points").mkdir(parents=True, exist_ok=True)
    cconfig = CompressConfig(correlation=not args.no_correlation, sized_colors=not args.uniform_colors,
                             refine_sweeps=0 if args.no_refine else CompressConfig.refine_sweeps)
    cconfig = (cconfig.with_bits(args.bits) if args.bits else cconfig).validate()
    iters = args.iters or (QUICK_ITERATIONS if args.quick else compression_fit_config(args.method).iterations)
    if args.targets:
        key, settings = "target_bpp", args.targets
    else:
        key = "budget"
        settings = [max(1, b // QUICK_BUDGET_DIVISOR) if args.quick else b for b in args.budgets]
    tag = "" if args.method == "gaussianimage++" else f"-{args.method}"
    ours, refs = [], {codec.key: [] for codec in codecs}
    for path, image in protocol_images(args.folder, quick=args.quick, limit=args.limit,
                                       shard=(shard, shards), skip=args.skip):
        for setting in settings:
            name = f"bpp{setting:g}" if args.targets else str(setting)
            done = out / "points" / f"{path.stem}-{name}{tag}.json"
            if done.is_file():
                point = json.loads(done.read_text())
            else:
                point = {"image": path.name, "method": args.method, key: setting, "iterations": iters,
                         **our_point(image, args, cconfig, iters, key, setting, done)}
                atomic_write_text(done, json.dumps(point) + "\n")
            ours.append(point)
            landed = f" ({100 * point['bpp'] / setting:.1f}% of the target)" if args.targets else ""
            print(f"{path.name} {'target' if args.targets else 'M='}{setting:g}: {point['bpp']:.3f} bpp"
                  f"{landed} {point['psnr']:.2f} dB", flush=True)
        if args.shard:
            continue
        for codec in codecs:
            refs[codec.key] += [{"image": path.name, **codec.point(image, s)} for s in codec.sweep]

    if args.shard:
        return 0
    curves = {"gipp": mean_curve(ours, key),
              **{c.key: mean_curve(refs[c.key], c.setting_name) for c in codecs}}
    device = jax.devices()[0]
    summary = {
        "command": " ".join(["python"] + sys.argv),
        "device": getattr(device, "device_kind", str(device)), "jax_version": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick, "method": args.method, key + "s": settings,
        "bits": None if args.targets else args.bits,
        "correlation": cconfig.correlation, "arcsine": cconfig.arcsine,
        "sized_colors": cconfig.sized_colors,
        "refine_sweeps": cconfig.refine_sweeps, "iterations": iters,
        "num_images": len({p["image"] for p in ours}),
        "codec_names": {c.key: c.name for c in codecs},
        "curves": curves,
        **{f"vs_{c.key}{suffix}": metrics.bjontegaard([pt[:2] for pt in curves[c.key]],
                                                      [pt[:2] for pt in curves["gipp"]], method)
           for c in codecs for suffix, method in BD_VARIANTS},
        "landing": landing_rows(ours, settings) if args.targets else None,
        "mean_encode_seconds": {k: float(np.mean([p["encode_seconds"] for p in pts]))
                                for k, pts in {"gipp": ours, **refs}.items()},
        "mean_decode_seconds": {k: float(np.mean([p["decode_seconds"] for p in pts]))
                                for k, pts in {"gipp": ours, **refs}.items()},
        "points": {"gipp": ours, **refs},
    }
    atomic_write_text(out / "rd.json", json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    atomic_write_text(out / "rd.md", table)
    print(table)
    plot(summary, out / "rd.png", args.anchors, args.anchor_names)
    return 0


def plot(summary: dict, path: Path, anchors: str | None = None, anchor_names=DEFAULT_ANCHORS) -> None:
    """The RD plot of a summary (``rd.json``) at ``path``, with published curves from
    ``anchors`` (a JSON file) where given; nothing but a note without matplotlib.

        python -c "import json, sys; sys.path.insert(0, 'tools'); import rd_curve; from pathlib import Path; \\
            d = Path('docs/rd/X'); rd_curve.plot(json.loads((d / 'rd.json').read_text()), d / 'rd.png')"
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plots]'): no plot", file=sys.stderr)
        return
    curves, quick = summary["curves"], summary["quick"]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    styles = itertools.cycle(("s--", "^--", "v--", "d--", "p--", "h--", "<--", ">--"))
    for key, curve in curves.items():
        xs, ys = [pt[0] for pt in curve], [pt[1] for pt in curve]
        ax.plot(xs, ys, "o-" if key == "gipp" else next(styles),
                label="gipp-jax (ours)" if key == "gipp" else summary["codec_names"][key])
    if anchors:
        where = " (full res.)" if quick else ""
        published = json.loads(Path(anchors).read_text())
        for name in anchor_names:
            pts = published.get(name)
            if isinstance(pts, dict) and "bpp" in pts and "psnr" in pts:
                ax.plot(pts["bpp"], pts["psnr"], ":", alpha=0.5, label=name + where)
        for name, pts in PAPER_POINTS.items():
            ax.plot(pts["bpp"], pts["psnr"], "x", markersize=8, label=name + where)
    ours_bpp, ours_psnr = [pt[0] for pt in curves["gipp"]], [pt[1] for pt in curves["gipp"]]
    ax.set_xlim(0, 1.6 * max(ours_bpp))  # our range, not the long tails of the others
    ax.set_ylim(min(ours_psnr) - 4, max(ours_psnr) + 6)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{summary['num_images']} images{' (quick protocol)' if quick else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
