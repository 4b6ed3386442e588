"""What a finished fit leaves on disk: ``render.png``, ``model.npz`` and ``metrics.json``.

``gipp fit`` writes them to its output folder, ``gipp fit-dir`` to one folder per image.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from gipp_jax import io, metrics
from gipp_jax import model as model_lib
from gipp_jax.environment import environment
from gipp_jax.train import FitConfig

FILES = ("render.png", "model.npz", "metrics.json")


def fit_report(image_path, image: np.ndarray, model, config: FitConfig, fit_seconds: float,
               rendered=None):
    """``(report, render)``: the metrics of a fitted model against its (H, W, 3) image,
    with the settings, and the clamped render they were measured on (``rendered``, if
    given: the model's (H, W, 3) render in [0, 1], e.g. :meth:`~gipp_jax.train.Fitter.render`)."""
    from gipp_jax.raster import render

    rendered = render(model) if rendered is None else rendered
    return {
        "image": str(image_path),
        "psnr": float(metrics.psnr(rendered, image)),
        "ms_ssim": float(metrics.ms_ssim(rendered, image)),
        "num_gaussians": model.num_active(),
        **({} if model.carriers is None else {"num_carriers": model_lib.num_carriers(model)}),
        "iterations": config.iterations,
        "method": config.method_name,
        "d3": config.use_d3,
        "caf": config.use_caf,
        "parameterization": config.parameterization,
        "seed": config.seed,
        "fit_seconds": round(fit_seconds, 3),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        **environment(),
    }, rendered


def write_fit_outputs(outdir: str | os.PathLike, report: dict, rendered, model) -> None:
    """Writes the three files of a fit into ``outdir``, each atomically, metrics last."""
    outdir = Path(outdir)
    io.save_png(outdir / "render.png", rendered)
    io.save_model(outdir / "model.npz", model)
    io.atomic_write_text(outdir / "metrics.json", json.dumps(report, indent=2) + "\n")


def publish_folder(staging: Path, final: Path) -> None:
    """Moves a fully written ``staging`` folder to ``final`` in one rename (replacing a
    stale ``final``), so an image's folder either holds all its files or does not exist."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
