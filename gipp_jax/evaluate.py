"""Dataset evaluation: fit every image of a folder, report per-image and mean metrics.

Results go to ``OUTDIR/images/NAME.json`` (one per image, written when the image is done)
and are summarised in ``OUTDIR/results.json`` and ``OUTDIR/results.md``. Images whose JSON
already exists are skipped, and a fit interrupted mid-image resumes from its checkpoint,
so an interrupted evaluation picks up where it stopped.

The ``--quick`` protocol is a CPU-sized stand-in for the paper's: every image is
downscaled 4x per side (box filter), the budget and the per-event growth cap are divided
by 16 (so Gaussians per pixel stay the same), and fits run 5000 steps; every schedule
is a fraction of the run, so densification and the learning-rate decay keep their shape.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from gipp_jax import io, metrics
from gipp_jax.train import FitConfig, Fitter, best_model

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
QUICK_DOWNSCALE = 4
QUICK_BUDGET_DIVISOR = 16
QUICK_ITERATIONS = 5000


def quick_config(config: FitConfig) -> FitConfig:
    """The ``--quick`` variant of a config (see the module docstring)."""
    return dataclasses.replace(
        config,
        num_gaussians=max(1, config.num_gaussians // QUICK_BUDGET_DIVISOR),
        max_growth=max(1, config.max_growth // QUICK_BUDGET_DIVISOR),
        iterations=QUICK_ITERATIONS)


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter downscale of an (H, W, 3) float image by an integer factor per side."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    if h == 0 or w == 0:
        raise io.InputError(f"image of {image.shape[1]}x{image.shape[0]} is too small to downscale {factor}x")
    cropped = image[: h * factor, : w * factor]
    return cropped.reshape(h, factor, w, factor, 3).mean(axis=(1, 3)).astype(np.float32)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise io.InputError(f"not a folder: {folder}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise io.InputError(f"no images in {folder}")
    return images


def protocol_images(folder: str | Path, *, quick: bool, limit: int | None = None,
                    shard: tuple[int, int] = (0, 1), skip: int = 0):
    """Yields ``(path, image)`` for the images of ``folder`` as an evaluation sees them:
    sorted by name, the first ``skip`` left out, then the first ``limit`` only, every ``shard[1]``-th from the ``shard[0]``-th
    (so that processes can share a folder), downscaled :data:`QUICK_DOWNSCALE` x per side when
    ``quick``. Images are (H, W, 3) float32 in [0, 1], loaded one at a time."""
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard must be K/N with 0 <= K < N, got {k}/{n}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    for path in list_images(folder)[skip:][:limit][k::n]:
        image = io.load_image(path)
        yield path, downscale(image, QUICK_DOWNSCALE) if quick else image


def render_fps(model, repeats: int = 100) -> float:
    """Renders per second of the fitted model at its size, timed with device sync."""
    from gipp_jax.model import activated_colors, filtered_covariance, pixel_means
    from gipp_jax.raster import render_with_stats
    from gipp_jax.raster import Capacity, model_usage

    cap = Capacity.fit(*model_usage(model), headroom=1.0)
    fn = jax.jit(lambda m: render_with_stats(pixel_means(m), filtered_covariance(m), activated_colors(m),
                                             m.height, m.width, cap.pairs, cap.chunks)[0])
    jax.block_until_ready(fn(model))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(model)
    jax.block_until_ready(out)
    return repeats / (time.perf_counter() - start)


def _fingerprint(config: FitConfig, quick: bool) -> dict:
    return {"config": config.as_dict(), "quick": quick}


def evaluate_image(path: Path, config: FitConfig, workdir: Path, *, quick: bool,
                   fps_repeats: int) -> dict:
    image = io.load_image(path)
    if quick:
        image = downscale(image, QUICK_DOWNSCALE)
    ckpt = workdir / f"{path.stem}.checkpoint.npz"
    start = time.perf_counter()
    state = Fitter(image, config, checkpoint_path=ckpt).run()
    fit_seconds = time.perf_counter() - start
    model = best_model(state)
    from gipp_jax.raster import render
    rendered = render(model)
    result = {
        "image": path.name,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "psnr": float(metrics.psnr(rendered, image)),
        "ms_ssim": float(metrics.ms_ssim(rendered, image)),
        "num_gaussians": model.num_active(),
        "fit_seconds": round(fit_seconds, 3),
        "render_fps": round(render_fps(model, fps_repeats), 1),
        **_fingerprint(config, quick),
    }
    io.atomic_write_text(workdir / f"{path.stem}.json", json.dumps(result, indent=2) + "\n")
    ckpt.unlink(missing_ok=True)
    return result


def summarize(results: list[dict], config: FitConfig, quick: bool) -> dict:
    keys = ("psnr", "ms_ssim", "fit_seconds", "render_fps")
    mean = {k: statistics.fmean(r[k] for r in results) for k in keys}
    device = jax.devices()[0]
    return {
        "num_images": len(results),
        "mean": mean,
        "images": [{k: r[k] for k in ("image", "height", "width", "num_gaussians") + keys} for r in results],
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "jax_version": jax.__version__,
        **_fingerprint(config, quick),
    }


def markdown_table(summary: dict) -> str:
    c = summary["config"]
    lines = [
        f"method {c['method'] if isinstance(c['method'], str) else c['method']['name']}, {c['parameterization']} covariance, M = {c['num_gaussians']}, "
        f"{c['iterations']} steps{', quick protocol' if summary['quick'] else ''}; "
        f"{summary['device']} ({summary['backend']}), jax {summary['jax_version']}",
        "",
        "| image | size | Gaussians | PSNR (dB) | MS-SSIM | fit (s) | render FPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["images"]:
        lines.append(f"| {r['image']} | {r['width']}x{r['height']} | {r['num_gaussians']} | "
                     f"{r['psnr']:.2f} | {r['ms_ssim']:.4f} | {r['fit_seconds']:.1f} | {r['render_fps']:.0f} |")
    m = summary["mean"]
    lines.append(f"| **mean** | | | **{m['psnr']:.2f}** | **{m['ms_ssim']:.4f}** | "
                 f"{m['fit_seconds']:.1f} | {m['render_fps']:.0f} |")
    return "\n".join(lines) + "\n"


def evaluate_folder(folder: str | Path, outdir: str | Path, config: FitConfig, *,
                    quick: bool = False, progress: bool = True, fps_repeats: int = 100,
                    limit: int | None = None) -> dict:
    """Fits every image in ``folder`` (the first ``limit`` in name order, if given) and
    writes the per-image results and the summary to ``outdir``; returns the summary."""
    images = list_images(folder)[:limit]
    if quick:
        config = quick_config(config)
    config = config.validate()
    outdir = Path(outdir)
    workdir = outdir / "images"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise io.InputError(f"cannot create output folder {workdir}: {err.strerror}") from None
    want = _fingerprint(config, quick)
    results = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(images), unit="image", dynamic_ncols=True)
    try:
        for path in images:
            done = workdir / f"{path.stem}.json"
            result = None
            if done.is_file():
                try:
                    result = json.loads(done.read_text())
                except (OSError, json.JSONDecodeError):
                    result = None
                if result is not None and {k: result.get(k) for k in want} != want:
                    raise io.InputError(f"{outdir} holds results of other settings; use another output folder")
            if result is None:
                if bar is not None:
                    bar.set_postfix_str(path.name)
                result = evaluate_image(path, config, workdir, quick=quick, fps_repeats=fps_repeats)
            results.append(result)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(mean_psnr=f"{statistics.fmean(r['psnr'] for r in results):.2f}")
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(results, config, quick)
    io.atomic_write_text(outdir / "results.json", json.dumps(summary, indent=2) + "\n")
    io.atomic_write_text(outdir / "results.md", markdown_table(summary))
    return summary
