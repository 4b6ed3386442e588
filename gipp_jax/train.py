"""Fitting a Gaussian model to one image by gradient descent on the L2 loss.

The work is split in two layers:

* a pure, jitted *chunk function* that runs up to ``chunk_steps`` Adam steps in one
  ``lax.scan`` (loss on the clamped render, best-PSNR state tracking), compiled once per
  fit because every shape is fixed by the budget M;
* a host loop (:class:`Fitter`, on :class:`gipp_jax.loop.FitLoop`) that calls it, checks
  the renderer's capacity, shows progress, writes checkpoints and runs the method's
  host-side events (growth, a change of level) between chunks.

Schedules are fractions of the run: the learning rate halves every ``0.4 * iterations``
steps, which is the reference's every 20000 of 50000.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gipp_jax import densify
from gipp_jax import levels as levels_lib
from gipp_jax.compile_cache import relieve_memory_maps
from gipp_jax import methods as methods_lib
from gipp_jax import model as model_lib
from gipp_jax.loop import Checkpoints, FitLoop, keep_best, progress_bar, scan_steps
from gipp_jax.raster import BACKENDS, Capacity, budget_capacity, render_at_capacity, render_model

DEFAULT_SEED = 3047
OPTIMIZERS = ("adam", "adan")
METHODS = tuple(methods_lib.METHODS)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Settings of one fit.

    Fields left ``None`` take the method's preset (:attr:`gipp_jax.methods.Method.preset`)
    in :meth:`validate`.

    Attributes:
      num_gaussians: budget M.
      iterations: optimisation steps (None: the method's, ``gipp-fast``'s 600 as ``gipp
        fit`` runs, the authors' 50000 for ``gaussianimage++`` and ``gaussianimage``).
      parameterization: ``cholesky``, ``rs`` or ``direct``.
      seed: PRNG seed of the initialisation.
      learning_rate: for every parameter group (GaussianImage++: 0.018); ``gipp-fast``
        multiplies its per-group rates in natural units by it (1.0).
      optimizer: ``adam`` (GaussianImage++: betas 0.9/0.999, eps 1e-15) or ``adan``
        (GaussianImage: betas 0.98/0.92/0.99, eps 1e-8).
      keep_best: return the state with the best training PSNR (GaussianImage++) rather
        than the final one (GaussianImage).
      position_activation: ``identity`` (pixel positions, GaussianImage++) or ``tanh``
        (GaussianImage's normalised positions).
      color_init: ``zero`` (GaussianImage++) or ``uniform`` (GaussianImage's U[0, 1)).
      lr_decay_fraction: the learning rate is multiplied by ``lr_decay_factor`` every
        ``lr_decay_fraction * iterations`` steps.
      color_activation: ``identity`` (representation) or ``sigmoid`` (compression).
      chunk_steps: steps per call of the compiled chunk function.
      method: a name of :data:`gipp_jax.methods.METHODS` or a
        :class:`~gipp_jax.methods.Method`: ``gipp-fast`` (the default: content-aware start,
        log-scale covariances, early growth where the error is), ``gaussianimage++`` (the
        authors' recipe: D3 + CAF, direct covariances, Adam 0.018) or ``gaussianimage``
        (the predecessor: all M Gaussians from the start, no filter, Cholesky covariances,
        Adan at 1e-3, final state). ``d3`` and ``caf`` switch each component alone, on
        whichever recipe the method sets: the paper's ablation.
      growth_rule: ``code`` (``min(max_growth, M - N)`` per event) or ``paper`` (``(M - N)/2``).
      new_color: color of grown Gaussians, ``zero`` (the code; measured 0.23 dB better on
        the quick protocol, docs/studies/fitting.md) or ``target`` (the pixel's, the paper).
      growth_fraction: growth runs every this fraction of the run (0.1: 5000 of 50000).
      prune_fraction: pruning runs every this fraction of the run (0.002: 100 of 50000).
      caf_alpha: CAF's alpha in ``s = min(HW / (alpha N), 300)``.
      backend: the rasterizer: ``auto`` (the Mosaic GPU kernels on CUDA once they passed
        their check on the device, else XLA; :func:`gipp_jax.raster.resolve_backend`),
        ``xla`` or ``pallas``.
    """

    num_gaussians: int = 5000
    iterations: int | None = None
    parameterization: str | None = None
    seed: int = DEFAULT_SEED
    learning_rate: float | None = None
    optimizer: str | None = None
    keep_best: bool | None = None
    position_activation: str | None = None
    color_init: str | None = None
    lr_decay_fraction: float = 0.4
    lr_decay_factor: float = 0.5
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-15
    color_activation: str = "identity"
    chunk_steps: int = 100
    method: str | methods_lib.Method = methods_lib.DEFAULT_METHOD
    d3: bool | None = None
    caf: bool | None = None
    growth_rule: str = "code"
    max_growth: int = 1000
    new_color: str = "zero"
    growth_fraction: float = 0.1
    prune_fraction: float = 0.002
    caf_alpha: float = model_lib.CAF_ALPHA
    backend: str = "auto"

    @property
    def recipe(self) -> methods_lib.Method:
        """The :class:`~gipp_jax.methods.Method` object ``method`` names."""
        return methods_lib.get_method(self.method)

    @property
    def method_name(self) -> str:
        return self.recipe.name

    def as_dict(self) -> dict:
        """The settings as JSON data, for reports and checkpoint fingerprints: a registered
        method by its name, a variant by its name and knobs."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        settings["method"] = methods_lib.method_spec(self.method)
        return settings

    @property
    def use_d3(self) -> bool:
        return self.recipe.preset["d3"] if self.d3 is None else self.d3

    @property
    def use_caf(self) -> bool:
        return self.recipe.preset["caf"] if self.caf is None else self.caf

    @property
    def prune_every(self) -> int:
        return max(1, int(round(self.prune_fraction * self.iterations)))

    @property
    def pruning_period(self) -> int:
        """Steps between pruning passes inside the compiled chunks; 0 for none. Pruning
        only matters where covariances can leave the PD cone: always for the direct
        scheme, and with D3 (the reference prunes throughout)."""
        return self.prune_every if (self.use_d3 or self.parameterization == "direct") else 0

    @property
    def growth_schedule(self) -> list[int]:
        """The steps after which D3 grows Gaussians (none without D3)."""
        return self.recipe.growth_schedule(self)

    def validate(self) -> FitConfig:
        """Checks every field and returns the config with the method's preset filled in."""
        preset = {k: v for k, v in self.recipe.preset.items() if getattr(self, k) is None}
        if preset:
            return dataclasses.replace(self, **preset).validate()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.num_gaussians <= 0:
            raise ValueError(f"the number of Gaussians must be positive, got {self.num_gaussians}")
        if self.iterations <= 0:
            raise ValueError(f"the number of iterations must be positive, got {self.iterations}")
        if self.chunk_steps <= 0:
            raise ValueError(f"chunk_steps must be positive, got {self.chunk_steps}")
        from gipp_jax.parameterization import check_parameterization
        check_parameterization(self.parameterization)
        for name, value, allowed in [("growth_rule", self.growth_rule, densify.GROWTH_RULES),
                                     ("backend", self.backend, BACKENDS),
                                     ("new_color", self.new_color, densify.NEW_COLORS),
                                     ("color_activation", self.color_activation,
                                      model_lib.COLOR_ACTIVATIONS)]:
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(allowed)}")
        return self


@jax.custom_jvp
def clamp01(x: jax.Array) -> jax.Array:
    """``clip(x, 0, 1)`` whose gradient passes wherever ``0 <= x <= 1`` (bounds included),
    as ``torch.clamp`` does; ``jnp.clip`` would halve it at exact ties, e.g. at the
    all-zero first render."""
    return jnp.clip(x, 0.0, 1.0)


@clamp01.defjvp
def _clamp01_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    inside = (x >= 0.0) & (x <= 1.0)
    return clamp01(x), jnp.where(inside, t, 0.0)


def mse_to_psnr(mse: jax.Array) -> jax.Array:
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-20))


@flax.struct.dataclass
class TrainState:
    """Everything a fit carries between steps (a pytree).

    ``best`` is the model with the highest training PSNR seen so far (its active rows and
    filter variances included), and ``best_psnr`` that PSNR (dB).
    """

    model: model_lib.GaussianModel
    opt_state: Any
    step: jax.Array
    best: model_lib.GaussianModel
    best_psnr: jax.Array
    last_psnr: jax.Array


def make_optimizer(config: FitConfig, height: int, width: int, factor: int = 1) -> optax.GradientTransformation:
    """The optimizer of ``config``'s method for a ``height x width`` image, at the level
    downscaled ``factor`` x (its rates in pixels follow the level's pixels)."""
    return config.recipe.optimizer(config, height, width, factor)


def _loss(params, model, target, capacity):
    image, usage = render_model(model.with_trainable(params), capacity)
    mse = jnp.mean(jnp.square(clamp01(image) - target))
    return mse, usage


def train_step(optimizer: optax.GradientTransformation, prune_every: int, capacity: Capacity,
               state: TrainState, *, target: jax.Array) -> tuple[TrainState, jax.Array]:
    """One step of a fit: L2 loss on the clamped render of ``target`` ((H, W, 3)), the
    optimizer's update, the best state kept, and every ``prune_every`` steps (0: never) the
    pruning of non-positive-definite covariances. Returns the state and the renderer usage
    ``[pairs, chunks]`` of the step."""
    params = state.model.trainable()
    (mse, usage), grads = jax.value_and_grad(_loss, has_aux=True)(params, state.model, target, capacity)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    psnr = mse_to_psnr(mse)
    better = psnr > state.best_psnr
    best = keep_best(better, state.best, state.model)
    model = state.model.with_trainable(optax.apply_updates(params, updates))
    step = state.step + 1
    if prune_every:
        model, opt_state = jax.lax.cond(
            step % prune_every == 0,
            lambda m, o: densify.prune(m, o)[:2],
            lambda m, o: (m, o),
            model, opt_state)
    new = TrainState(
        model=model,
        opt_state=opt_state,
        step=step,
        best=best,
        best_psnr=jnp.where(better, psnr, state.best_psnr),
        last_psnr=psnr,
    )
    return new, usage


def run_chunk(optimizer: optax.GradientTransformation, prune_every: int, capacity: Capacity,
              chunk_steps: int, state: TrainState, target: jax.Array, num_steps) -> tuple[TrainState, jax.Array]:
    """``num_steps <= chunk_steps`` steps of :func:`train_step` in one ``lax.scan``: the
    compiled unit of a fit (jit it with ``capacity`` and ``chunk_steps`` static), shared by
    :class:`Fitter`, batch fitting and benchmarks. Returns the state and the maximum usage."""
    step = functools.partial(train_step, optimizer, prune_every, capacity, target=target)
    return scan_steps(step, state, chunk_steps, num_steps)


def init_state(model: model_lib.GaussianModel, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(model=model, opt_state=optimizer.init(model.trainable()), step=jnp.int32(0),
                      best=model, best_psnr=jnp.float32(-jnp.inf), last_psnr=jnp.float32(-jnp.inf))


def initial_model(config: FitConfig, image) -> model_lib.GaussianModel:
    """The first model of a fit of ``image`` ((H, W, 3) in [0, 1]) by ``config``'s method
    (for GaussianImage++: ``M/2`` Gaussians with D3, else ``M``, the CAF variance for that
    count), at the fit's first level (:func:`fit_levels`). A function of the config and the
    image only."""
    image = np.asarray(image, np.float32)
    first = fit_levels(config, image.shape[0], image.shape[1])[0]
    return config.recipe.initial_model(config, levels_lib.downscale(image, first.factor))


def fit_levels(config: FitConfig, height: int, width: int) -> list[levels_lib.Level]:
    """The resolution levels of a fit of a ``height x width`` image (``config``'s method's)."""
    return config.recipe.levels(config, int(height), int(width))


def enter_level(state: TrainState, old: levels_lib.Level, new: levels_lib.Level, height: int,
                width: int) -> TrainState:
    """``state`` carried from level ``old`` to the finer ``new`` of a ``height x width``
    fit (unbatched or batched)."""
    return levels_lib.magnify_state(state, old.factor // new.factor,
                                    *levels_lib.level_size(height, width, new.factor))


def at_level(state: TrainState, level: levels_lib.Level, height: int, width: int) -> TrainState:
    """``state`` (e.g. loaded from a checkpoint, whose arrays are those of ``level``) with
    the image size of ``level`` in its models' static fields."""
    h, w = levels_lib.level_size(height, width, level.factor)
    return state.replace(model=state.model.replace(height=h, width=w), best=state.best.replace(height=h, width=w))


def grow_state(config: FitConfig, state: TrainState, rendered: np.ndarray, target) -> TrainState:
    """The growth event after step ``state.step`` (host-side) of one image's unbatched
    state, from its unclamped (H, W, 3) render: ``config``'s method's growth."""
    return config.recipe.grow(config, state, np.asarray(rendered, np.float32), np.asarray(target, np.float32))


def initial_capacity(model: model_lib.GaussianModel, backend: str = "auto") -> Capacity:
    """Render buffers of a fit starting from ``model`` (D3 starts at M/2):
    :func:`~gipp_jax.raster.budget_capacity`, one compile per fit."""
    return budget_capacity(model, backend)


def image_digest(image) -> str:
    """A short hash of an image's float32 pixels, for checkpoint fingerprints."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(image, np.float32)).tobytes()).hexdigest()[:16]


def chunk_program(config: FitConfig, height: int, width: int, factor: int = 1) -> Callable:
    """The jitted :func:`run_chunk` of ``config``'s optimizer for a ``height x width`` fit at
    its level downscaled ``factor`` x (``capacity`` and ``chunk_steps`` static). Fits with
    equal settings share it, whatever their seed, so a second fit in a process traces and
    compiles nothing new."""
    return _chunk_program(dataclasses.replace(config, seed=0), int(height), int(width), int(factor))


@functools.lru_cache(maxsize=32)
def _chunk_program(config: FitConfig, height: int, width: int, factor: int) -> Callable:
    optimizer = make_optimizer(config, height, width, factor)
    return jax.jit(functools.partial(run_chunk, optimizer, config.pruning_period), static_argnums=(0, 1))


def fit_events(growth_steps, levels: list[levels_lib.Level], grow: Callable, next_level: Callable) -> dict:
    """A fit's host-side events for :class:`~gipp_jax.loop.FitLoop`: ``grow`` after each
    growth step, then ``next_level`` where each level after the first starts."""
    events = {step: (grow,) for step in growth_steps}
    for level in levels[1:]:
        events[level.start] = events.get(level.start, ()) + (next_level,)
    return events


def run_to_end(loop: FitLoop, state, step: int, config: FitConfig, progress: bool):
    """Runs ``loop`` from ``state`` at ``step`` to ``config.iterations`` (with a progress
    bar if ``progress``) and returns the final state, its ``best`` replaced by the final
    model unless ``config.keep_best``."""
    bar = progress_bar(config.iterations, step) if progress else None
    try:
        state = loop.run(state, step, config.iterations, bar)
    finally:
        if bar is not None:
            bar.close()
    if not config.keep_best:
        state = state.replace(best=state.model, best_psnr=state.last_psnr)
    return state


class Fitter:
    """Host loop around the compiled chunk function for one image.

    Args:
      image: (H, W, 3) float array in [0, 1].
      config: fit settings.
      progress: show a progress bar with the current PSNR (``tqdm``).
      checkpoint_path: if set, the state is written there atomically every
        ``checkpoint_seconds`` and at the end; an existing compatible checkpoint is resumed.
      on_chunk: called with the state after every chunk of steps (a trace of the fit).
    """

    def __init__(self, image, config: FitConfig, *, progress: bool = False,
                 checkpoint_path: str | os.PathLike | None = None, checkpoint_seconds: float = 60.0,
                 on_chunk: Callable[[TrainState], None] | None = None):
        image = jnp.asarray(image, jnp.float32)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image must have shape (H, W, 3), got {tuple(image.shape)}")
        self.config = config.validate()
        self.image = image
        self.height, self.width = int(image.shape[0]), int(image.shape[1])
        self.progress = progress
        self.checkpoint_path, self.checkpoint_seconds = checkpoint_path, checkpoint_seconds
        self.optimizer = make_optimizer(self.config, self.height, self.width)
        self.growth_steps = self.config.growth_schedule
        self.levels = fit_levels(self.config, self.height, self.width)
        self.loop = FitLoop(self._chunk, None, self.config.chunk_steps, postfix=self._postfix, on_chunk=on_chunk)
        self._use_level(self.levels[0])

    def _use_level(self, level: levels_lib.Level) -> None:
        """Points the loop at ``level``: its target image and its compiled chunk (whose
        optimizer's rates in pixels follow the level's size)."""
        self.level = level
        self.target = (self.image if level.factor == 1
                       else jnp.asarray(levels_lib.downscale(np.asarray(self.image), level.factor)))
        self.chunk_fn: Callable = chunk_program(self.config, self.height, self.width, level.factor)

    def _next_level(self, state: TrainState) -> TrainState:
        new = self.levels[self.levels.index(self.level) + 1]
        state = enter_level(state, self.level, new, self.height, self.width)
        self._use_level(new)
        self.loop.capacity = initial_capacity(state.model, self.config.backend)
        return state

    @functools.cached_property
    def image_digest(self) -> str:
        """:func:`image_digest` of the target (computed once, when a checkpoint needs it)."""
        return image_digest(self.image)

    def initial_model(self) -> model_lib.GaussianModel:
        """The first model, at the fit's first level."""
        return initial_model(self.config, self.image)

    def _chunk(self, capacity: Capacity, state: TrainState, num_steps: int) -> tuple[TrainState, np.ndarray]:
        new_state, usage = self.chunk_fn(capacity, self.config.chunk_steps, state, self.target, num_steps)
        return new_state, np.asarray(usage)

    def _grow(self, state: TrainState) -> TrainState:
        """The host-side growth event after step ``state.step``, from a render at the
        fit's capacity (grown, as after a chunk, if the model outgrew it)."""
        return grow_state(self.config, state, self.loop.render_held(render_at_capacity, state.model), self.target)

    def _postfix(self, state: TrainState) -> dict:
        shown = {"psnr": f"{float(state.last_psnr):.2f}", "best": f"{float(state.best_psnr):.2f}",
                 "n": int(jnp.sum(state.model.active))}
        if state.model.carriers is not None:
            shown["carriers"] = model_lib.num_carriers(state.model)
        return shown

    def render(self, model: model_lib.GaussianModel) -> np.ndarray:
        """``model`` (at this fit's size) rendered and clamped to [0, 1], (H, W, 3), by the
        program the fit's growth events render with: after :meth:`run`, the final render
        compiles nothing new (:func:`gipp_jax.raster.render` sizes its buffers, and so its
        programs, to the model)."""
        if self.loop.capacity is None:
            self.loop.capacity = initial_capacity(model, self.config.backend)
        return np.clip(self.loop.render_held(render_at_capacity, model), 0.0, 1.0)

    def _fingerprint(self) -> str:
        return json.dumps({"config": self.config.as_dict(), "image": self.image_digest,
                           "height": self.height, "width": self.width}, sort_keys=True)

    def run(self) -> TrainState:
        """Fits to the end and returns the final state (its ``best`` is the kept model)."""
        relieve_memory_maps()
        if self.checkpoint_path:
            self.loop.checkpoints = Checkpoints(self.checkpoint_path, self._fingerprint(), self.checkpoint_seconds)
        self.loop.events = fit_events(self.growth_steps, self.levels, self._grow, self._next_level)
        state = self.loop.checkpoints.load(init_state(self.initial_model(), self.optimizer))
        level = levels_lib.level_at(self.levels, int(state.step))
        if level != self.level:  # resumed past a level change
            state = at_level(state, level, self.height, self.width)
            self._use_level(level)
        self.loop.capacity = initial_capacity(state.model, self.config.backend)
        return run_to_end(self.loop, state, int(state.step), self.config, self.progress)


def best_model(state: TrainState) -> model_lib.GaussianModel:
    """The model with the best training PSNR of a finished state."""
    return state.best


def fit(image, num_gaussians: int = 5000, iterations: int | None = None,
        parameterization: str | None = None, seed: int = DEFAULT_SEED, *,
        method: str | methods_lib.Method = methods_lib.DEFAULT_METHOD, progress: bool = False,
        **options) -> model_lib.GaussianModel:
    """Fits ``num_gaussians`` 2D Gaussians to ``image`` and returns the best model.

    Args:
      image: (H, W, 3) float array in [0, 1].
      num_gaussians: budget M.
      iterations: optimisation steps (None: the method's; ``gipp-fast``'s 600, what ``gipp
        fit`` runs; the reference's 50000 for ``gaussianimage++``).
      parameterization: ``cholesky``, ``rs``, ``direct`` or ``log-rs`` (default: the
        method's: ``log-rs`` for gipp-fast, ``direct`` for GaussianImage++).
      seed: initialisation seed; the same seed gives the same result.
      method: ``gipp-fast`` (the default), ``gaussianimage++`` (the authors' recipe) or
        ``gaussianimage`` (its predecessor), or a :class:`~gipp_jax.methods.Method`.
      progress: show a progress bar.
      **options: any other :class:`FitConfig` field.
    Returns:
      The :class:`~gipp_jax.model.GaussianModel` with the highest training PSNR, or the
      final one for ``method="gaussianimage"``.
    """
    config = FitConfig(num_gaussians=num_gaussians, iterations=iterations,
                       parameterization=parameterization, seed=seed, method=method, **options)
    return best_model(Fitter(image, config, progress=progress).run())
