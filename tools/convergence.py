#!/usr/bin/env python3
"""Quality against steps: PSNR of each fit method after T steps, for several T, on a folder.

Every (method, T) is its own fit of T steps, since every schedule is a fraction of the run
(a 1000-step fit decays its rate and grows its Gaussians within those 1000 steps). Writes
OUTDIR/convergence.json (every point, per-method means, the command, device and jax
version), OUTDIR/convergence.md (a table of mean PSNR, methods by steps) and, with
matplotlib installed (the ``plots`` extra), OUTDIR/convergence.png. Finished points are kept
in OUTDIR/points/ and reused when the command is re-run; ``--shard K/N`` fits only every
N-th image (from the K-th), so that N processes can share the work, and a run without it
gathers them.

A method is a name of ``gipp_jax.methods.METHODS`` with optional overrides of FitConfig
fields or of the method's own knobs (a tuple as values joined by ``/``):
``gaussianimage++:parameterization=cholesky,d3=false,caf=false``,
``gipp-fast:size_factor=0.8,growth_fractions=0.1/0.2``.

    python tools/convergence.py ../shared/data/kodak -o conv --quick --limit 4
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

from gipp_jax import metrics
from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
from gipp_jax.evaluate import QUICK_BUDGET_DIVISOR, QUICK_DOWNSCALE, downscale, list_images
from gipp_jax.io import atomic_write_text, load_image
from gipp_jax.methods import get_method
from gipp_jax.raster import render
from gipp_jax.train import FitConfig, Fitter

DEFAULT_METHODS = ("gipp-fast", "gaussianimage++", "gaussianimage",
                   "gaussianimage++:parameterization=cholesky,d3=false,caf=false")
DEFAULT_STEPS = (250, 500, 1000, 2000, 5000)
FIELDS = {f.name: f for f in dataclasses.fields(FitConfig)}


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method(spec: str) -> dict:
    """``NAME[:key=value,...]`` -> FitConfig keyword arguments; keys that are knobs of the
    method make a variant of it (``method=dataclasses.replace(...)``)."""
    name, _, rest = spec.partition(":")
    try:
        method = get_method(name)
    except ValueError as err:
        raise SystemExit(f"convergence.py: error: {err}") from None
    knobs = {f.name: f for f in dataclasses.fields(method)}
    settings: dict = {"method": name}
    variant = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key in FIELDS and value:
            settings[key] = _value(value)
        elif key in knobs and value:
            default = getattr(method, key)
            variant[key] = tuple(float(v) for v in value.split("/") if v) if isinstance(default, tuple) else \
                type(default)(_value(value))
        else:
            raise SystemExit(f"convergence.py: error: bad setting {item!r} in method {spec!r}")
    if variant:
        settings["method"] = dataclasses.replace(method, **variant)
    return settings


def point_name(image: str, spec: str, steps: int) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec)
    return f"{Path(image).stem}--{safe}--{steps}.json"


def fit_point(image: np.ndarray, name: str, spec: str, steps: int, budget: int, max_growth: int) -> dict:
    config = FitConfig(num_gaussians=budget, iterations=steps, max_growth=max_growth, **parse_method(spec))
    start = time.perf_counter()
    model = Fitter(image, config).run().best
    seconds = time.perf_counter() - start
    out = render(model)
    return {"image": name, "method": spec, "steps": steps, "psnr": float(metrics.psnr(out, image)),
            "ms_ssim": float(metrics.ms_ssim(out, image)), "num_gaussians": model.num_active(),
            "fit_seconds": round(seconds, 3)}


def table(means: dict, steps: list[int], num_images: int, caption: str) -> str:
    lines = [caption, "", "| method | " + " | ".join(f"{t} steps" for t in steps) + " |",
             "|---" * (len(steps) + 1) + "|"]
    for spec, row in means.items():
        lines.append(f"| `{spec}` | " + " | ".join(
            f"{row[str(t)]:.2f}" if str(t) in row else "" for t in steps) + " |")
    lines.append("")
    lines.append(f"Mean PSNR (dB) over {num_images} images.")
    return "\n".join(lines) + "\n"


def plot(means: dict, path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plots]'): no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for spec, row in means.items():
        xs = sorted(int(t) for t in row)
        ax.plot(xs, [row[str(t)] for t in xs], "o-", label=spec)
    ax.set_xscale("log")
    ax.set_xlabel("steps (each point its own fit)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return True


def main() -> int:
    use_fast_cpu_flags(enable_compilation_cache())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="NAME[:field=value,...] (default: %(default)s)")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                        help="comma-separated step counts (default: %(default)s)")
    parser.add_argument("--gaussians", type=int, default=5000, help="budget M (divided by 16 with --quick)")
    parser.add_argument("--quick", action="store_true", help="gipp eval's quick protocol: images / 4, M / 16")
    parser.add_argument("--limit", type=int, default=None, help="first K images only")
    parser.add_argument("--shard", help="K/N: only images K, K+N, ...; no summary")
    args = parser.parse_args()
    try:
        steps = sorted({int(t) for t in args.steps.split(",")})
        shard, shards = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
    except ValueError:
        parser.error("--steps takes integers separated by commas, --shard K/N")
    if not steps or min(steps) <= 0 or args.gaussians <= 0 or not 0 <= shard < shards:
        parser.error("steps and --gaussians must be positive, --shard K/N with 0 <= K < N")
    for spec in args.methods:
        FitConfig(**parse_method(spec)).validate()

    budget = max(1, args.gaussians // QUICK_BUDGET_DIVISOR) if args.quick else args.gaussians
    max_growth = max(1, 1000 // QUICK_BUDGET_DIVISOR) if args.quick else 1000
    out = Path(args.output)
    (out / "points").mkdir(parents=True, exist_ok=True)
    images = list_images(args.folder)[: args.limit]
    points = []
    for path in images[shard::shards]:
        image = load_image(path)
        if args.quick:
            image = downscale(image, QUICK_DOWNSCALE)
        for spec in args.methods:
            for t in steps:
                done = out / "points" / point_name(path.name, spec, t)
                if done.is_file():
                    point = json.loads(done.read_text())
                else:
                    point = fit_point(image, path.name, spec, t, budget, max_growth)
                    atomic_write_text(done, json.dumps(point) + "\n")
                points.append(point)
                print(f"{path.name} {spec} T={t}: {point['psnr']:.2f} dB ({point['fit_seconds']:.1f} s)", flush=True)
    if args.shard:
        return 0

    means = {spec: {str(t): float(np.mean([p["psnr"] for p in points if p["method"] == spec and p["steps"] == t]))
                    for t in steps} for spec in args.methods}
    device = jax.devices()[0]
    summary = {"command": " ".join(["python"] + sys.argv), "device": getattr(device, "device_kind", str(device)),
               "jax_version": jax.__version__, "quick": args.quick, "budget": budget,
               "num_images": len(images), "steps": steps, "mean_psnr": means,
               "mean_fit_seconds": {spec: {str(t): float(np.mean([p["fit_seconds"] for p in points
                                                                  if p["method"] == spec and p["steps"] == t]))
                                           for t in steps} for spec in args.methods},
               "points": points}
    caption = (f"M = {budget}{' (quick protocol: images / 4, M / 16)' if args.quick else ''}; "
               f"{summary['device']}, jax {jax.__version__}; `{summary['command']}`")
    atomic_write_text(out / "convergence.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "convergence.md", table(means, steps, len(images), caption))
    print(table(means, steps, len(images), caption))
    plot(means, out / "convergence.png", f"{len(images)} images, M = {budget}{' (quick)' if args.quick else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
