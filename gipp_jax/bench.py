"""``gipp bench``: correctness and speed of the renderer and of fitting, on whatever backend
JAX finds (CPU, GPU, TPU).

A run is a :class:`Suite` (``smoke``: every stage at tiny sizes, about a minute on a 2-core
CPU, mostly compiling; ``quick``: Kodak-sized 768x512 with 5000 and 10000 Gaussians;
``full``: that, the DIV2K-like 2040x1356 and the paper's 50000-step protocol) made of stages:

* ``check``: each rasterizer against the XLA one on Kodak-sized random cases (uniform,
  straddling the borders, piled up on a few tiles), forward and gradients, and XLA against
  the dense reference on a small case. A disagreement stops the run (:class:`CheckFailed`):
  timings of a wrong kernel mean nothing.
* ``binning``: footprints and tile binning alone.
* ``render``: per rasterizer, forward renders per second of a fitted-like model (the
  paper's FPS: ``repeats`` renders, timed with device synchronisation, 1 / mean time) and
  forward+backward time.
* ``step``: per rasterizer and method, one full training step (the method's optimizer and
  pruning), timed over a compiled chunk of steps (:func:`gipp_jax.train.run_chunk`).
* ``batch``: images per hour when ``B`` images are fitted together
  (:class:`~gipp_jax.batch.BatchFitter`), extrapolated to the protocol's step count from a
  steady (compiled) run.
* ``kodak`` (with a folder): :func:`~gipp_jax.batch.fit_folder` for the authors' recipe and
  the default method at each budget, mean PSNR / MS-SSIM against the paper, wall time.

Every stage but ``check`` is independent: one that fails is recorded with its error and the
run goes on. :func:`run_bench` returns everything as one dict (written as ``bench.json``;
:func:`markdown` makes the tables).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax.environment import environment

STAGES = ("check", "binning", "render", "step", "batch", "kodak")
# The paper's Kodak means for GaussianImage++ at 50000 steps (../REFERENCE: published numbers).
PAPER_KODAK = {5000: {"psnr": 31.83}, 10000: {"psnr": 35.41, "ms_ssim": 0.983}}
FORWARD_TOLERANCE = 1e-4   # max |a - b| / max(1, max |reference|), images in [0, 1]
GRADIENT_TOLERANCE = 1e-3  # the same for gradients (float32; the XLA backward's moment
#                            expansion costs covariance gradients some precision)


@dataclasses.dataclass(frozen=True)
class Suite:
    """Sizes of one benchmark run. ``sizes`` are (height, width) timed with every count of
    ``gaussians``; ``large`` sizes with the largest count only."""

    name: str
    sizes: tuple[tuple[int, int], ...]
    gaussians: tuple[int, ...]
    large: tuple[tuple[int, int], ...]
    check_size: tuple[int, int]
    check_gaussians: tuple[int, ...]
    dense_check: tuple[int, int, int]  # (height, width, Gaussians) for XLA against dense
    repeats: int                       # renders per FPS figure
    step_chunk: int                    # training steps per timed chunk
    step_repeats: int                  # timed chunks (after one that compiles)
    batch_sizes: tuple[int, ...]
    batch_size_hw: tuple[int, int]
    batch_gaussians: int
    batch_steps: int                   # steps of the timed batch run
    protocol_steps: int                # steps images per hour are given for
    kodak_budgets: tuple[int, ...]     # the protocol's budgets (the paper's: 5000, 10000)
    kodak_downscale: int               # per side; the budgets are divided by its square
    kodak_steps: int
    kodak_limit: int | None
    default_method_only: bool = False  # steps, batches and Kodak fits of the default method alone


SUITES = {
    "smoke": Suite("smoke", sizes=((24, 40),), gaussians=(30,), large=(),
                   check_size=(30, 44), check_gaussians=(24,), dense_check=(20, 28, 20), repeats=2,
                   step_chunk=1, step_repeats=1, batch_sizes=(2,), batch_size_hw=(16, 24), batch_gaussians=20,
                   batch_steps=8, protocol_steps=8, kodak_budgets=(5000,), kodak_downscale=16,
                   kodak_steps=8, kodak_limit=2, default_method_only=True),
    "quick": Suite("quick", sizes=((512, 768),), gaussians=(5000, 10000), large=(),
                   check_size=(512, 768), check_gaussians=(5000, 10000), dense_check=(64, 96, 200),
                   repeats=100, step_chunk=20, step_repeats=3, batch_sizes=(1, 8, 24), batch_size_hw=(512, 768),
                   batch_gaussians=10000, batch_steps=200, protocol_steps=50000,
                   kodak_budgets=(5000, 10000), kodak_downscale=4, kodak_steps=5000, kodak_limit=None),
    "full": Suite("full", sizes=((512, 768),), gaussians=(5000, 10000), large=((1356, 2040),),
                  check_size=(512, 768), check_gaussians=(5000, 10000), dense_check=(64, 96, 200),
                  repeats=100, step_chunk=50, step_repeats=3, batch_sizes=(1, 8, 24), batch_size_hw=(512, 768),
                  batch_gaussians=10000, batch_steps=500, protocol_steps=50000,
                  kodak_budgets=(5000, 10000), kodak_downscale=1, kodak_steps=50000, kodak_limit=None),
}


class CheckFailed(RuntimeError):
    """A rasterizer disagrees with the reference; the message says where and by how much."""


def default_backends() -> tuple[str, ...]:
    """The Mosaic GPU kernel and XLA on CUDA; XLA elsewhere (the kernel runs there only
    interpreted, far too slowly to time at Kodak sizes)."""
    return ("pallas", "xla") if jax.default_backend() == "gpu" else ("xla",)


# -- scenes ------------------------------------------------------------------------------

def fitted_like_scene(height: int, width: int, n: int, seed: int = 0, kind: str = "uniform"):
    """``(means (N, 2), cov3 (N, 3), colors (N, 3))`` shaped like a fitted model: Gaussians
    about as wide as the gap between them (std 0.6 spacings, anisotropy up to 2:1, random
    angles). ``kind``: ``"uniform"`` centers, ``"border"`` (centers up to 3 std outside the
    image, straddling its edges) or ``"piled"`` (all within 24 px of the center: many
    Gaussians per tile)."""
    rng = np.random.default_rng(seed)
    spacing = math.sqrt(height * width / n)
    std = 0.6 * spacing * np.exp(rng.uniform(-0.35, 0.35, (n, 2)))
    if kind == "uniform":
        means = rng.uniform(0, 1, (n, 2)) * [width, height]
    elif kind == "border":
        margin = 3 * std.max(axis=1, keepdims=True)
        means = rng.uniform(0, 1, (n, 2)) * ([width, height] + 2 * margin) - margin
        edge = rng.integers(0, 4, n)  # pin each to one edge, so every one straddles it
        means[edge == 0, 0] = rng.uniform(-margin[edge == 0, 0], margin[edge == 0, 0])
        means[edge == 1, 0] = width + rng.uniform(-margin[edge == 1, 0], margin[edge == 1, 0])
        means[edge == 2, 1] = rng.uniform(-margin[edge == 2, 0], margin[edge == 2, 0])
        means[edge == 3, 1] = height + rng.uniform(-margin[edge == 3, 0], margin[edge == 3, 0])
    elif kind == "piled":
        means = np.array([width / 2, height / 2]) + rng.uniform(-24, 24, (n, 2))
        std = np.minimum(std, 8.0)
    else:
        raise ValueError(f"unknown scene kind {kind!r}")
    angle = rng.uniform(0, np.pi, n)
    c, s = np.cos(angle), np.sin(angle)
    v1, v2 = std[:, 0] ** 2, std[:, 1] ** 2
    cov3 = np.stack([c * c * v1 + s * s * v2, c * s * (v1 - v2), s * s * v1 + c * c * v2], -1)
    # Gaussians of std 0.6 spacings overlap 2 pi 0.36 deep on average: colors scaled so
    # that the image stays near [0, 1], as a fitted one does.
    colors = rng.uniform(0, 1, (n, 3)) / (2 * math.pi * 0.36)
    return tuple(jnp.asarray(x, jnp.float32) for x in (means, cov3, colors))


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random (H, W, 3) image in [0, 1] with some detail, for timing fits."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (max(2, height // 16), max(2, width // 16), 3))
    image = jax.image.resize(jnp.asarray(coarse), (height, width, 3), "cubic")
    fine = 0.08 * rng.standard_normal((height, width, 3))
    return np.clip(np.asarray(image) + fine, 0, 1).astype(np.float32)


# -- timing helpers ----------------------------------------------------------------------

def time_calls(fn: Callable, args: tuple, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn(*args)`` after one warm-up (compile)
    call, each synchronised with the device."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 4)


def _usage(means, cov3, height, width):
    """Exact (pairs, chunks) of a scene, for tight renderer buffers."""
    from gipp_jax.raster import measure_usage
    pairs, chunks = measure_usage(means, cov3, height, width)
    return int(pairs), int(chunks)


# -- stages ------------------------------------------------------------------------------

def _rel_err(a, b) -> float:
    scale = max(1.0, float(jnp.max(jnp.abs(b))))
    return float(jnp.max(jnp.abs(a - b))) / scale


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _render_and_grads(backend: str, height: int, width: int, capacity: int, means, cov3, colors, weights):
    """The image of a scene and the gradients of ``sum(weights * sin(image))`` with respect
    to its means, covariances and colors, by ``backend`` (``"dense"``: the reference)."""
    from gipp_jax.parameterization import triple_to_matrix
    from gipp_jax.raster import render_dense, render_gaussians

    def loss(m, c, k):
        cov = triple_to_matrix(c)
        if backend == "dense":
            out = render_dense(m, cov, k, height, width)
        else:
            out = render_gaussians(m, cov, k, height, width, backend=backend, pair_capacity=capacity)
        return jnp.sum(weights * jnp.sin(out)), out

    grads, out = jax.grad(loss, (0, 1, 2), has_aux=True)(means, cov3, colors)
    return out, grads


def _check_capacity(scenes, height: int, width: int) -> int:
    """A pair capacity that holds every scene of ``scenes`` ((means, cov3, colors) each)."""
    from gipp_jax.parameterization import triple_to_matrix
    from gipp_jax.raster import count_pairs
    from gipp_jax.raster.binning import round_capacity
    return round_capacity(max(count_pairs(m, triple_to_matrix(c), height, width) for m, c, _ in scenes))


def stage_check(suite: Suite, backends: Sequence[str], log: Callable) -> list[dict]:
    """Compares every rasterizer with XLA, and XLA with the dense reference."""
    rows = []

    def compare(test: str, reference: str, case: str, height, width, scene, seed, capacity):
        means, cov3, colors = scene
        n = means.shape[0]
        weights = jnp.asarray(np.random.default_rng(seed).normal(size=(height, width, 3)), jnp.float32)
        out, grads = _render_and_grads(test, height, width, capacity, means, cov3, colors, weights)
        ref, ref_grads = _render_and_grads(reference, height, width, capacity, means, cov3, colors, weights)
        errors = {"forward": _rel_err(out, ref)}
        errors.update({f"grad_{name}": _rel_err(g, r) for name, g, r in
                       zip(("means", "cov", "colors"), grads, ref_grads)})
        ok = errors["forward"] <= FORWARD_TOLERANCE and all(
            v <= GRADIENT_TOLERANCE for k, v in errors.items() if k != "forward")
        row = {"backend": test, "reference": reference, "case": case, "height": height,
               "width": width, "gaussians": n, **{k: float(f"{v:.3g}") for k, v in errors.items()},
               "ok": ok}
        rows.append(row)
        log(f"check {test} vs {reference}, {case} {width}x{height}, {n} Gaussians: "
            f"forward {errors['forward']:.2g}, gradients "
            f"{max(v for k, v in errors.items() if k != 'forward'):.2g}: {'ok' if ok else 'MISMATCH'}")

    h, w, n = suite.dense_check
    scene = fitted_like_scene(h, w, n, 0, "uniform")
    compare("xla", "dense", "uniform", h, w, scene, 0, _check_capacity([scene], h, w))
    height, width = suite.check_size
    kinds = ("uniform", "border", "piled")
    for n in suite.check_gaussians if any(b != "xla" for b in backends) else ():
        scenes = [fitted_like_scene(height, width, n, seed + 1, kind) for seed, kind in enumerate(kinds)]
        capacity = _check_capacity(scenes, height, width)  # one for all three: one program per backend
        for test in (b for b in backends if b != "xla"):
            for seed, (kind, scene) in enumerate(zip(kinds, scenes)):
                compare(test, "xla", kind, height, width, scene, seed + 1, capacity)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        r = bad[0]
        worst = max((k for k in r if k == "forward" or k.startswith("grad_")), key=lambda k: r[k])
        raise CheckFailed(f"{r['backend']} disagrees with {r['reference']} on the {r['case']} case "
                          f"({r['width']}x{r['height']}, {r['gaussians']} Gaussians): {worst} error "
                          f"{r[worst]:.3g} (tolerance {FORWARD_TOLERANCE if worst == 'forward' else GRADIENT_TOLERANCE:g})")
    return rows


def _timed_sizes(suite: Suite) -> list[tuple[int, int, int]]:
    return ([(h, w, n) for h, w in suite.sizes for n in suite.gaussians]
            + [(h, w, max(suite.gaussians)) for h, w in suite.large])


def stage_binning(suite: Suite, backends: Sequence[str], log: Callable) -> list[dict]:
    from gipp_jax.raster.binning import bin_gaussians, footprint

    rows = []
    for h, w, n in _timed_sizes(suite):
        means, cov3, _ = fitted_like_scene(h, w, n)
        pairs, chunks = _usage(means, cov3, h, w)
        fn = jax.jit(lambda m, c: bin_gaussians(footprint(m, c, h, w), h, w, pairs, chunks))  # noqa: B023
        t = float(np.median(time_calls(fn, (means, cov3), suite.repeats)))
        rows.append({"height": h, "width": w, "gaussians": n, "tile_pairs": pairs, "chunks": chunks,
                     "binning_ms": _ms(t)})
        log(f"binning {w}x{h}, {n} Gaussians: {_ms(t):.3f} ms ({pairs} tile pairs)")
    return rows


def stage_render(suite: Suite, backends: Sequence[str], log: Callable) -> list[dict]:
    from gipp_jax.raster import render_with_stats

    rows = []
    for h, w, n in _timed_sizes(suite):
        means, cov3, colors = fitted_like_scene(h, w, n)
        pairs, chunks = _usage(means, cov3, h, w)
        target = jnp.asarray(synthetic_image(h, w), jnp.float32)
        for backend in backends:
            def forward(m, c, k, backend=backend):
                return render_with_stats(m, c, k, h, w, pairs, chunks, backend=backend)[0]  # noqa: B023

            def loss(m, c, k, forward=forward):
                return jnp.mean(jnp.square(jnp.clip(forward(m, c, k), 0, 1) - target))  # noqa: B023

            fwd = time_calls(jax.jit(forward), (means, cov3, colors), suite.repeats)
            both = time_calls(jax.jit(jax.value_and_grad(loss, (0, 1, 2))), (means, cov3, colors),
                              max(1, suite.repeats // 5))
            mean_fwd = float(np.mean(fwd))
            rows.append({"backend": backend, "height": h, "width": w, "gaussians": n,
                         "forward_fps": round(1.0 / mean_fwd, 1), "forward_ms": _ms(mean_fwd),
                         "forward_backward_ms": _ms(float(np.median(both)))})
            log(f"render {backend} {w}x{h}, {n} Gaussians: {1.0 / mean_fwd:.1f} FPS, "
                f"forward+backward {_ms(float(np.median(both))):.3f} ms")
    return rows


def bench_methods(suite: Suite | None = None) -> tuple[str, ...]:
    """The methods fits are timed with: the authors' recipe and the default (the default
    alone where ``suite`` says so: a smoke run checks that each stage runs)."""
    from gipp_jax.methods import DEFAULT_METHOD
    if suite is not None and suite.default_method_only:
        return (DEFAULT_METHOD,)
    return tuple(dict.fromkeys(("gaussianimage++", DEFAULT_METHOD)))


def stage_step(suite: Suite, backends: Sequence[str], log: Callable) -> list[dict]:
    from gipp_jax.train import (FitConfig, init_state, initial_capacity, initial_model, make_optimizer,
                                run_chunk)

    rows = []
    for h, w, n in _timed_sizes(suite):
        image = jnp.asarray(synthetic_image(h, w), jnp.float32)
        for method in bench_methods(suite):
            config = FitConfig(num_gaussians=n, iterations=suite.protocol_steps, method=method).validate()
            model = initial_model(config, image)
            optimizer = make_optimizer(config, h, w)
            state = init_state(model, optimizer)
            chunk = jax.jit(functools.partial(run_chunk, optimizer, config.pruning_period),
                            static_argnums=(0, 1))
            for backend in backends:
                capacity = dataclasses.replace(initial_capacity(model), backend=backend)
                steps = suite.step_chunk
                times = time_calls(chunk, (capacity, steps, state, image, steps), suite.step_repeats)
                per_step = float(np.median(times)) / steps
                rows.append({"backend": backend, "method": method, "height": h, "width": w,
                             "gaussians": n, "prune_every": config.pruning_period,
                             "step_ms": _ms(per_step),
                             "fit_seconds_at_protocol": round(per_step * suite.protocol_steps, 2),
                             "protocol_steps": suite.protocol_steps})
                log(f"step {backend} {method} {w}x{h}, {n} Gaussians: {_ms(per_step):.3f} ms per step "
                    f"({per_step * suite.protocol_steps:.1f} s for {suite.protocol_steps} steps)")
    return rows


def stage_batch(suite: Suite, backends: Sequence[str], log: Callable, images=None) -> list[dict]:
    """Images per hour for each batch size, on the default rasterizer (``"auto"``)."""
    from gipp_jax.batch import BatchFitter
    from gipp_jax.train import FitConfig

    h, w = suite.batch_size_hw
    if images is None:
        images = np.stack([synthetic_image(h, w, seed) for seed in range(max(suite.batch_sizes))])
    rows = []
    for method in bench_methods(suite):
        config = FitConfig(num_gaussians=suite.batch_gaussians, iterations=suite.batch_steps,
                           method=method).validate()
        for b in suite.batch_sizes:
            fitter = BatchFitter(images[:b], config)
            runs = []
            for _ in range(2):  # the first compiles
                start = time.perf_counter()
                jax.block_until_ready(fitter.run().best.means)
                runs.append(time.perf_counter() - start)
            per_step = runs[1] / suite.batch_steps
            rate = 3600.0 * b / (per_step * suite.protocol_steps)
            rows.append({"method": method, "batch_size": b, "height": h, "width": w,
                         "gaussians": suite.batch_gaussians, "steps_run": suite.batch_steps,
                         "first_run_seconds": round(runs[0], 3), "steady_seconds": round(runs[1], 3),
                         "images_per_hour": round(rate, 1), "protocol_steps": suite.protocol_steps})
            log(f"batch {method} B={b} {w}x{h}, {suite.batch_gaussians} Gaussians: {rate:.1f} images "
                f"per hour at {suite.protocol_steps} steps (steady run of {suite.batch_steps} steps "
                f"{runs[1]:.2f} s)")
    return rows


def _downscaled_copy(folder: Path, factor: int, out: Path, limit: int | None) -> Path:
    from gipp_jax import io
    from gipp_jax.evaluate import downscale, list_images

    out.mkdir(parents=True, exist_ok=True)
    for path in list_images(folder)[:limit]:
        dest = out / (path.stem + ".png")
        if not dest.exists():
            io.save_png(dest, downscale(io.load_image(path), factor))
    return out


def stage_kodak(suite: Suite, backends: Sequence[str], log: Callable, folder: Path, outdir: Path) -> list[dict]:
    """:func:`~gipp_jax.batch.fit_folder` per method and budget (resumable: finished
    images are kept in ``outdir/kodak/``)."""
    from gipp_jax.batch import default_batch_size, fit_folder
    from gipp_jax.train import FitConfig

    steps = suite.kodak_steps
    images = folder
    if suite.kodak_downscale > 1 or suite.kodak_limit:
        images = _downscaled_copy(folder, suite.kodak_downscale, outdir / "kodak" / "images",
                                  suite.kodak_limit)
    divisor = suite.kodak_downscale ** 2
    rows = []
    for method in bench_methods(suite):
        for budget in suite.kodak_budgets:
            gaussians = max(1, budget // divisor)
            config = FitConfig(num_gaussians=gaussians, iterations=steps, method=method)
            start = time.perf_counter()
            summary = fit_folder(images, outdir / "kodak" / f"{method}-{gaussians}", config,
                                 batch_size=default_batch_size(), progress=False, limit=suite.kodak_limit)
            seconds = time.perf_counter() - start
            reports = summary["images"]
            row = {"method": method, "gaussians": gaussians, "steps": steps,
                   "downscale": suite.kodak_downscale, "images": len(reports),
                   "mean_psnr": round(float(np.mean([r["psnr"] for r in reports])), 3),
                   "mean_ms_ssim": round(float(np.mean([r["ms_ssim"] for r in reports])), 4),
                   "wall_seconds": round(seconds, 1)}
            paper = PAPER_KODAK.get(budget) if suite.kodak_downscale == 1 and steps == 50000 else None
            if paper:
                row["paper_psnr"] = paper["psnr"]
                row["paper_ms_ssim"] = paper.get("ms_ssim")
            rows.append(row)
            log(f"kodak {method} {gaussians} Gaussians, {steps} steps: mean PSNR {row['mean_psnr']:.2f} dB, "
                f"MS-SSIM {row['mean_ms_ssim']:.4f}, {seconds:.0f} s for {len(reports)} images")
    return rows


# -- the run -----------------------------------------------------------------------------

def run_bench(suite: str | Suite = "quick", *, backends: Sequence[str] | None = None,
              stages: Sequence[str] = STAGES, kodak: str | Path | None = None,
              outdir: str | Path = "bench-output", log: Callable = print) -> dict:
    """Runs the stages of ``suite`` named in ``stages`` (``kodak`` only with a folder) and
    returns the report: ``{"suite", "environment", "stages": {name: {"status", "rows" |
    "error"}}}``. Raises :class:`CheckFailed` (after recording it) when ``check`` fails."""
    suite = SUITES[suite] if isinstance(suite, str) else suite
    backends = tuple(backends or default_backends())
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    outdir = Path(outdir)
    report = {"suite": suite.name, "backends": list(backends), "environment": environment(),
              "suite_settings": dataclasses.asdict(suite), "stages": {}}
    runners = {"check": stage_check, "binning": stage_binning, "render": stage_render,
               "step": stage_step, "batch": stage_batch}
    if kodak is not None:
        runners["kodak"] = functools.partial(stage_kodak, folder=Path(kodak), outdir=outdir)
    for name in STAGES:
        if name not in stages or name not in runners:
            report["stages"][name] = {"status": "skipped"}
            continue
        start = time.perf_counter()
        try:
            rows = runners[name](suite, backends, log)
            report["stages"][name] = {"status": "ok", "rows": rows}
        except CheckFailed as err:
            report["stages"][name] = {"status": "failed", "error": str(err)}
            raise
        except Exception as err:  # noqa: BLE001 - a failing stage must not lose the others
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            report["stages"][name] = {"status": "failed", "error": message,
                                      "traceback": traceback.format_exc(limit=8)}
            log(f"{name}: FAILED: {message}")
        report["stages"][name]["seconds"] = round(time.perf_counter() - start, 1)
    return report


_COLUMNS = {
    "check": ("backend", "reference", "case", "width", "height", "gaussians", "forward",
              "grad_means", "grad_cov", "grad_colors", "ok"),
    "binning": ("width", "height", "gaussians", "tile_pairs", "binning_ms"),
    "render": ("backend", "width", "height", "gaussians", "forward_fps", "forward_ms",
               "forward_backward_ms"),
    "step": ("backend", "method", "width", "height", "gaussians", "step_ms", "fit_seconds_at_protocol"),
    "batch": ("method", "batch_size", "width", "height", "gaussians", "steady_seconds", "steps_run",
              "images_per_hour"),
    "kodak": ("method", "gaussians", "steps", "downscale", "images", "mean_psnr", "paper_psnr",
              "mean_ms_ssim", "paper_ms_ssim", "wall_seconds"),
}


def markdown(report: dict) -> str:
    """The report as Markdown: a heading with the environment, one table per stage."""
    env = report["environment"]
    lines = [f"# gipp bench, suite {report['suite']}", "",
             f"{env['device']} ({env['backend']}, {env['num_devices']} device(s)), jax {env['jax_version']}, "
             f"jaxlib {env['jaxlib_version']}, Python {env['python']}, {env['date']}"
             + (f"; {env['nvidia_smi']}" if env.get("nvidia_smi") else ""),
             ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    for name, stage in report["stages"].items():
        if stage["status"] == "skipped":
            continue
        lines.append(f"## {name} ({stage['status']}, {stage.get('seconds', 0):.0f} s)")
        lines.append("")
        if stage["status"] != "ok":
            lines += [f"Error: {stage['error']}", ""]
            continue
        cols = [c for c in _COLUMNS[name] if any(c in r for r in stage["rows"])]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for row in stage["rows"]:
            lines.append("| " + " | ".join("" if row.get(c) is None else str(row[c]) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, outdir: str | Path) -> tuple[Path, Path]:
    """Writes ``bench.json`` and ``bench.md`` to ``outdir`` atomically; returns their paths."""
    from gipp_jax.io import atomic_write_text

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = outdir / "bench.json", outdir / "bench.md"
    atomic_write_text(paths[0], json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths[1], markdown(report) + "\n")
    return paths


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
