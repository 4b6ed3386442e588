"""Fitting many images at once: ``jax.vmap`` over the Gaussian pytrees, ``jax.sharding``
over devices.

Images of one size form a *bucket*; a bucket is fitted by one compiled program, the
single-image chunk function (:mod:`gipp_jax.train`) under ``jax.vmap`` over the training
state and the targets, and under ``jax.shard_map`` over a one-axis device mesh, so each
device runs the vmapped chunk on its share of the batch with no communication. Growth
events stay host-side and per image: every image grows at its own worst pixels, into its
own free rows, between compiled chunks, so a fit never recompiles.

Image ``i`` of a batch fitted with seed ``s`` starts from exactly the model it starts from
when fitted alone with seed ``s``, and takes the same steps at the same growth events, but
the two programs round differently (the batched one fuses and reduces in another order),
and growth at error-sampled pixels and relocation amplify that: the fits are equally good,
not equal. Measured (``tools/batch_agreement.py``, 8 Kodak images at 64x48, 150 Gaussians,
600 steps, seeds 5 and 11): per-image PSNR differences from -0.46 to +0.23 dB, -0.12 and
-0.11 dB on the means (docs/BATCH.md).

Across hosts, :func:`host_share` splits a list of images by ``jax.process_index()`` after
``jax.distributed.initialize()``; each host then fits its share on its local devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gipp_jax import levels as levels_lib
from gipp_jax.compile_cache import relieve_memory_maps
from gipp_jax import methods as methods_lib
from gipp_jax import model as model_lib
from gipp_jax.loop import Checkpoints, FitLoop
from gipp_jax.raster import Capacity, render_model
from gipp_jax.train import (DEFAULT_SEED, FitConfig, TrainState, at_level, enter_level, fit_events, fit_levels,
                            grow_state, image_digest, init_state, initial_capacity, initial_model,
                            make_optimizer, run_chunk, run_to_end)

BATCH_AXIS = "batch"


def stack(trees: Sequence) -> object:
    """Stacks equally shaped pytrees along a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, index: int):
    """Element ``index`` of a pytree with a leading batch axis."""
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def buckets_by_size(shapes: Sequence[tuple[int, ...]]) -> dict[tuple[int, int], list[int]]:
    """Indices of the images of each (height, width), in order of first appearance.
    A portrait and a landscape image of the same dimensions are two buckets."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, shape in enumerate(shapes):
        groups[(int(shape[0]), int(shape[1]))].append(i)
    return dict(groups)


def host_share(items: Sequence, process_index: int | None = None, process_count: int | None = None) -> list:
    """This host's share of ``items`` (every ``process_count``-th, from ``process_index``;
    by default from JAX's distributed runtime, one host when it is not initialised)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return list(items)[index::count]


def default_batch_size() -> int:
    """Images per compiled batch when none is asked for: 8 on accelerators, 1 on CPU,
    where a batch runs no faster per image than single fits (docs/studies/platform.md)."""
    return 1 if jax.default_backend() == "cpu" else 8


def device_mesh(devices: Sequence | None = None) -> Mesh:
    """A one-axis mesh over ``devices`` (default: this host's devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devices), (BATCH_AXIS,))


class BatchFitter:
    """Host loop of a batch fit: B images of one size, one compiled program.

    Args:
      images: (B, H, W, 3) floats in [0, 1].
      config: fit settings shared by every image.
      seeds: one initialisation seed per image (default: ``config.seed`` for all).
      devices: the devices the batch is split over (default: this host's); B is padded to
        a multiple of their number with copies of the first image, dropped at the end.
      progress: a progress bar over steps.
      checkpoint_path: if set, the batched state is written there atomically every
        ``checkpoint_seconds`` and at the end; a compatible checkpoint is resumed.

    Its loop (:class:`~gipp_jax.loop.FitLoop`) runs one vmapped chunk program for the batch.
    """

    def __init__(self, images, config: FitConfig, *, seeds: Sequence[int] | None = None,
                 devices: Sequence | None = None, progress: bool = False,
                 checkpoint_path: str | os.PathLike | None = None, checkpoint_seconds: float = 60.0):
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[3] != 3 or 0 in images.shape:
            raise ValueError(f"images must have shape (B, H, W, 3), got {tuple(images.shape)}")
        self.config = config.validate()
        self.num_images, self.height, self.width = (int(v) for v in images.shape[:3])
        self.seeds = [self.config.seed] * self.num_images if seeds is None else [int(s) for s in seeds]
        if len(self.seeds) != self.num_images:
            raise ValueError(f"got {len(self.seeds)} seeds for {self.num_images} images")
        self.mesh = device_mesh(devices)
        num_devices = self.mesh.devices.size
        padded = -(-self.num_images // num_devices) * num_devices
        self.images_host = np.concatenate([images, np.repeat(images[:1], padded - self.num_images, 0)])
        self.sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXIS))
        self.progress = progress
        self.checkpoint_path, self.checkpoint_seconds = checkpoint_path, checkpoint_seconds
        self.optimizer = make_optimizer(self.config, self.height, self.width)
        self.growth_steps = self.config.growth_schedule
        self.levels = fit_levels(self.config, self.height, self.width)
        self.loop = FitLoop(self._chunk, None, self.config.chunk_steps, postfix=self._postfix)
        self._use_level(self.levels[0])

    def _use_level(self, level: levels_lib.Level) -> None:
        """Points the loop at ``level``: its targets and its compiled programs."""
        self.level = level
        self.targets_host = np.stack([levels_lib.downscale(image, level.factor) for image in self.images_host])
        self.targets = jax.device_put(self.targets_host, self.sharding)
        self.chunk_fn, self.render_fn = _programs(dataclasses.replace(self.config, seed=0),
                                                  tuple(self.mesh.devices.flat), self.height, self.width,
                                                  level.factor)

    def _next_level(self, state: TrainState) -> TrainState:
        new = self.levels[self.levels.index(self.level) + 1]
        state = enter_level(jax.device_get(state), self.level, new, self.height, self.width)
        self._use_level(new)
        self._size_capacity(state)
        return self._place(state)

    def _size_capacity(self, state: TrainState) -> None:
        caps = [initial_capacity(unstack(state.model, i), self.config.backend) for i in range(self.num_images)]
        self.loop.capacity = Capacity(max(c.pairs for c in caps), max(c.chunks for c in caps), caps[0].backend)

    def _config_for(self, index: int) -> FitConfig:
        return dataclasses.replace(self.config, seed=self.seeds[min(index, self.num_images - 1)])

    def initial_state(self) -> TrainState:
        """The batched first state: each image's :func:`~gipp_jax.train.initial_model`."""
        states = [init_state(initial_model(self._config_for(i), self.images_host[i]), self.optimizer)
                  for i in range(self.images_host.shape[0])]
        return stack(states)

    def _place(self, state: TrainState) -> TrainState:
        return jax.device_put(state, self.sharding)

    def _grow(self, state: TrainState) -> TrainState:
        """Each real image's growth event, host-side, from one batched render."""
        rendered = self.loop.render_held(self.render_fn, state.model)
        # Slices of sharded arrays would be cross-device programs: slice on the host.
        state = jax.device_get(state)
        rows = [unstack(state, i) for i in range(self.targets_host.shape[0])]
        for i in range(self.num_images):  # padding rows are never read: left as they are
            rows[i] = grow_state(self._config_for(i), rows[i], rendered[i], self.targets_host[i])
        return self._place(stack(rows))

    def _fingerprint(self) -> str:
        digest = [image_digest(t) for t in self.images_host[: self.num_images]]
        return json.dumps({"config": self.config.as_dict(), "seeds": self.seeds,
                           "shape": [self.num_images, self.height, self.width], "targets": digest,
                           "padded": int(self.images_host.shape[0])}, sort_keys=True)

    def _chunk(self, capacity: Capacity, state: TrainState, num_steps: int) -> tuple[TrainState, np.ndarray]:
        new_state, usage = self.chunk_fn(capacity, self.config.chunk_steps, state, self.targets,
                                         jnp.int32(num_steps))
        return new_state, np.asarray(usage).max(axis=0)

    def _postfix(self, state: TrainState) -> dict:
        return {"psnr": f"{np.asarray(state.last_psnr)[: self.num_images].mean():.2f}",
                "images": self.num_images}

    def run(self) -> TrainState:
        """Fits every image to the end; returns the batched final state (leading axis B,
        sharded over the devices, padding dropped; its ``best`` holds the kept models)."""
        relieve_memory_maps()
        if self.checkpoint_path:
            self.loop.checkpoints = Checkpoints(self.checkpoint_path, self._fingerprint(), self.checkpoint_seconds)
        self.loop.events = fit_events(self.growth_steps, self.levels, self._grow, self._next_level)
        state = self.loop.checkpoints.load(self.initial_state())
        step = int(state.step[0])
        level = levels_lib.level_at(self.levels, step)
        if level != self.level:  # resumed past a level change
            state = at_level(state, level, self.height, self.width)
            self._use_level(level)
        self._size_capacity(state)
        state = run_to_end(self.loop, self._place(state), step, self.config, self.progress)
        if self.images_host.shape[0] > self.num_images:
            state = jax.tree_util.tree_map(lambda x: x[: self.num_images], state)
        return state


@functools.lru_cache(maxsize=16)
def _programs(config: FitConfig, devices: tuple, height: int, width: int, factor: int = 1):
    """The jitted batched chunk and render functions for ``config`` (its seed unused) on
    ``devices`` for ``height x width`` images at their level downscaled ``factor`` x:
    shared by every :class:`BatchFitter` with them, so batches of one image size and buffer
    capacity compile once."""
    mesh = device_mesh(devices)
    optimizer = make_optimizer(config, height, width, factor)
    # Outputs pinned to the batch sharding: left to XLA, a one-device mesh may return some
    # leaves replicated, and the next chunk would compile again for that input sharding.
    batched = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    chunk = jax.jit(functools.partial(_batched_chunk, optimizer, config.pruning_period, mesh),
                    static_argnums=(0, 1), out_shardings=(batched, batched))
    return chunk, jax.jit(functools.partial(_batched_render, mesh), static_argnums=0)


def _per_device(fn, mesh, num_batched: int, num_shared: int = 0):
    """``fn`` vmapped over the leading axis of its first ``num_batched`` arguments and run
    by every device of ``mesh`` on its share of them (``shard_map``: no communication);
    the last ``num_shared`` arguments reach every device whole."""
    spec = PartitionSpec(BATCH_AXIS)
    vmapped = jax.vmap(fn, in_axes=(0,) * num_batched + (None,) * num_shared)
    return jax.shard_map(vmapped, mesh=mesh, in_specs=(spec,) * num_batched + (PartitionSpec(),) * num_shared,
                         out_specs=spec, check_vma=False)


def _batched_chunk(optimizer, prune_every, mesh, capacity, chunk_steps, state, targets, num_steps):
    """The single-image chunk over the batch. Returns the batched state and each image's
    renderer usage (B, 2)."""
    per_image = functools.partial(run_chunk, optimizer, prune_every, capacity, chunk_steps)
    return _per_device(per_image, mesh, 2, 1)(state, targets, num_steps)


def _batched_render(mesh, capacity, models):
    """Unclamped renders (B, H, W, 3) of batched models, and each one's usage (B, 2)."""
    return _per_device(lambda m: render_model(m, capacity), mesh, 1)(models)


def fit_batch(images, num_gaussians: int = 5000, iterations: int | None = None,
              parameterization: str | None = None, seed: int = DEFAULT_SEED, *,
              method: str | methods_lib.Method = methods_lib.DEFAULT_METHOD, seeds: Sequence[int] | None = None,
              devices: Sequence | None = None, progress: bool = False,
              **options) -> list[model_lib.GaussianModel]:
    """Fits every image of ``images`` and returns one model per image, in order.

    Args:
      images: (B, H, W, 3) array, or a sequence of (H, W, 3) arrays of any sizes, in [0, 1].
        Images of one size are fitted together in one program (:func:`buckets_by_size`).
      num_gaussians, iterations, parameterization, method, **options: as :func:`gipp_jax.fit`.
      seed: the initialisation seed of every image (image ``i`` starts where
        ``gipp_jax.fit(images[i], seed=seed)`` starts); ``seeds`` gives one per image.
      devices: devices each batch is split over (default: this host's).
      progress: a progress bar per bucket.
    Returns:
      A list of B :class:`~gipp_jax.model.GaussianModel` (best or final state, as ``fit``).
    """
    images = [np.asarray(image, np.float32) for image in images]
    seeds = [seed] * len(images) if seeds is None else list(seeds)
    if len(seeds) != len(images):
        raise ValueError(f"got {len(seeds)} seeds for {len(images)} images")
    config = FitConfig(num_gaussians=num_gaussians, iterations=iterations,
                       parameterization=parameterization, seed=seed, method=method, **options)
    models: list = [None] * len(images)
    for (_, _), indices in buckets_by_size([image.shape for image in images]).items():
        fitter = BatchFitter(np.stack([images[i] for i in indices]), config,
                             seeds=[seeds[i] for i in indices], devices=devices, progress=progress)
        state = fitter.run()
        for row, i in enumerate(indices):
            models[i] = jax.tree_util.tree_map(jnp.asarray, unstack(state.best, row))
    return models


def fit_folder(folder: str | os.PathLike, outdir: str | os.PathLike, config: FitConfig, *,
               batch_size: int | None = None, devices: Sequence | None = None, progress: bool = True,
               limit: int | None = None) -> dict:
    """Fits every image of ``folder`` (this host's share of them, see :func:`host_share`)
    in batches of up to ``batch_size`` images of one size (default:
    :func:`default_batch_size`), and writes ``OUTDIR/NAME/``
    with ``gipp fit``'s files per image and ``OUTDIR/results.json``.

    Resumable: an image whose folder exists is done and skipped (folders appear in one
    rename, complete); the batch in flight is checkpointed to ``OUTDIR/checkpoint.npz``
    (``checkpoint-I.npz`` on host I of several) and picks up from it when the same command
    runs again. Returns the summary (``results-I.json`` on host I of several).
    """
    from gipp_jax import io
    from gipp_jax.evaluate import list_images
    from gipp_jax.environment import environment
    from gipp_jax.outputs import fit_report, publish_folder, write_fit_outputs

    config = config.validate()
    batch_size = batch_size or default_batch_size()
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise io.InputError(f"cannot create output folder {outdir}: {err.strerror}") from None
    paths = host_share(list_images(folder)[:limit])
    settings = config.as_dict()
    reports, todo = {}, []
    for path in paths:
        done = outdir / path.stem / "metrics.json"
        if done.is_file():
            report = json.loads(done.read_text())
            if report.get("settings") != settings:
                raise io.InputError(f"{outdir} holds results of other settings; use another output folder")
            reports[path.stem] = report
        else:
            todo.append(path)
    images = {path: io.load_image(path) for path in todo}
    batches = [[todo[i] for i in idx[start:start + batch_size]]
               for idx in buckets_by_size([images[p].shape for p in todo]).values()
               for start in range(0, len(idx), batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(paths), initial=len(reports), unit="image", dynamic_ncols=True)
    one_host = jax.process_count() == 1
    checkpoint = outdir / ("checkpoint.npz" if one_host else f"checkpoint-{jax.process_index()}.npz")
    start_all = time.perf_counter()
    try:
        for batch in batches:
            start = time.perf_counter()
            fitter = BatchFitter(np.stack([images[p] for p in batch]), config, devices=devices,
                                 progress=progress, checkpoint_path=checkpoint)
            state = jax.device_get(fitter.run())
            seconds = (time.perf_counter() - start) / len(batch)
            for row, path in enumerate(batch):
                model = jax.tree_util.tree_map(jnp.asarray, unstack(state.best, row))
                report, rendered = fit_report(path, images[path], model, config, seconds)
                report.update(batch_size=len(batch), settings=settings)
                staging = outdir / f".{path.stem}.partial"
                staging.mkdir(exist_ok=True)
                write_fit_outputs(staging, report, rendered, model)
                publish_folder(staging, outdir / path.stem)
                reports[path.stem] = report
                if bar is not None:
                    bar.update(1)
            checkpoint.unlink(missing_ok=True)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start_all
    ordered = [reports[p.stem] for p in paths]
    summary = {
        **environment(),
        "num_images": len(ordered),
        "fitted_now": len(todo),
        "seconds": round(elapsed, 3),
        "images_per_hour": round(3600 * len(todo) / elapsed, 2) if todo else None,
        "mean_psnr": float(np.mean([r["psnr"] for r in ordered])) if ordered else None,
        "batch_size": batch_size,
        "num_devices": len(jax.local_devices() if devices is None else devices),
        "process": [jax.process_index(), jax.process_count()],
        "images": [{k: r[k] for k in ("image", "psnr", "ms_ssim", "num_gaussians", "fit_seconds")}
                   for r in ordered],
        "settings": settings,
    }
    name = "results.json" if one_host else f"results-{jax.process_index()}.json"
    io.atomic_write_text(outdir / name, json.dumps(summary, indent=2) + "\n")
    return summary
