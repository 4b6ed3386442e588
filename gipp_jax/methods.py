"""Fit methods: each a recipe of how the Gaussians start, how they grow and how they are
optimized.

A method is a small frozen dataclass with its own knobs and four hooks, called by the
training loop (:mod:`gipp_jax.train`) and by batch fitting and compression through it:

* :meth:`Method.initial_model`: the first model of a fit, from the config and the image;
* :meth:`Method.optimizer`: the ``optax`` transformation of the whole fit;
* :meth:`Method.growth_schedule` and :meth:`Method.grow`: the steps after which the
  host-side growth event runs, and the event itself;
* :meth:`Method.levels`: the resolutions the fit runs at (coarse to fine), and from which
  step;
* :meth:`Method.finetune_optimizer` and :meth:`Method.compression_steps`: the optimizer that
  continues a finished fit (compression's warm-up and quantization-aware phases), and how
  many steps those phases take; :attr:`Method.compression_colors`, the color activation of
  the fit that compression quantizes.

``FitConfig.method`` takes a registered name (:data:`METHODS`) or an instance, so a
variant is ``FitConfig(method=GippFast(start_fraction=0.8))``. Each method also names the
:class:`~gipp_jax.train.FitConfig` fields it sets unless a config does (:attr:`Method.preset`).

Registered:

* ``gipp-fast`` (the default, :class:`GippFast`): GaussianImage++'s idea (start sparse,
  add Gaussians where the error is), with a start sized to the image so that no filter is
  needed, made to converge in hundreds of steps rather than tens of thousands
  (docs/CONVERGENCE.md says why and by how much).
* ``gaussianimage++`` (:class:`GaussianImagePlusPlus`): the authors' recipe, exact.
* ``gaussianimage`` (:class:`GaussianImage`): its predecessor's recipe, exact.
* ``gipp-gabor`` (:class:`GippGabor`): ``gipp-fast`` whose primitives may carry a cosine
  carrier, placed where the residual oscillates (matching pursuit's best atom).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gipp_jax import carriers as carriers_lib
from gipp_jax import densify
from gipp_jax import model as model_lib
from gipp_jax import parameterization as param_lib
from gipp_jax.levels import Level, level_size
from gipp_jax.raster import Capacity, budget_capacity, host, least_squares_colors, model_attributes, model_usage

if TYPE_CHECKING:  # pragma: no cover
    from gipp_jax.train import FitConfig, TrainState


@dataclasses.dataclass(frozen=True)
class Method:
    """A fit recipe. Subclasses set :attr:`name` and :attr:`preset` and may override any hook."""

    name: ClassVar[str] = ""
    # FitConfig fields this method sets unless the config gives them.
    preset: ClassVar[dict] = {}
    # The color activation of compression's fit (CompressConfig.colors overrides it): the
    # reference's sigmoid bounds the colors the quantizer spans. The fit's own colors, two
    # bits finer, gave gipp-fast's files from +0.28 to -0.40 dB (docs/studies/compression.md).
    compression_colors: ClassVar[str] = "sigmoid"
    # Whether the method's primitives carry cosine carriers (a model with ``carriers``).
    carriers: ClassVar[bool] = False

    def budget_units(self, num_primitives: int, num_carriers: int = 0) -> float:
        """How much of a budget ``FitConfig.num_gaussians`` that many primitives, of which
        ``num_carriers`` carry a carrier, use: one Gaussian each here."""
        return float(num_primitives)

    def initial_model(self, config: FitConfig, image: np.ndarray) -> model_lib.GaussianModel:
        """The first model of a fit of ``image`` ((H, W, 3) in [0, 1])."""
        raise NotImplementedError

    def optimizer(self, config: FitConfig, height: int, width: int, factor: int = 1) -> optax.GradientTransformation:
        """The optimizer of a ``height x width`` fit over ``config.iterations`` steps, for
        its level downscaled ``factor`` x (see :meth:`levels`)."""
        raise NotImplementedError

    def growth_schedule(self, config: FitConfig) -> list[int]:
        """Steps after which :meth:`grow` runs; none without D3."""
        return []

    def grow(self, config: FitConfig, state: TrainState, rendered: np.ndarray,
             target: np.ndarray) -> TrainState:
        """The growth event after ``state.step`` (host-side) from the unclamped (H, W, 3)
        render of ``state.model``; returns the state with Gaussians added."""
        return state

    def levels(self, config: FitConfig, height: int, width: int) -> list[Level]:
        """The resolutions of a fit of a ``height x width`` image, coarse to fine (see
        :mod:`gipp_jax.levels`): the first starts at step 0, the last is full size."""
        return [Level(0, 1)]

    def finetune_optimizer(self, config: FitConfig, height: int, width: int,
                           total: int) -> optax.GradientTransformation:
        """Optimizer for ``total`` steps that continue a finished fit."""
        raise NotImplementedError

    def compression_fit_steps(self, default: int) -> int:
        """Steps of the representation fit that ``gipp compress`` runs when neither
        ``--iters`` nor a config sets them, given the command's ``default``: as many here."""
        return default

    def compression_steps(self, fit_steps: int) -> int:
        """Steps of compression's quantization-aware phase after a fit of ``fit_steps``
        (when the compression settings leave it open): as many, as the reference runs."""
        return fit_steps


# ---------------------------------------------------------------------------------------
# The authors' recipes


@dataclasses.dataclass(frozen=True)
class GaussianImagePlusPlus(Method):
    """GaussianImage++ as its authors' code runs it (../shared/REFERENCE.md): ``M/2``
    Gaussians uniform over the image, raw covariances ``U[0, 1)^3`` in the direct scheme,
    zero colors, the content-aware filter ``min(HW / (9 pi N), 300)``; Adam at 0.018 for
    every group, halved every 40% of the run; growth every 10% of the run at the pixels of
    highest L1 error (:func:`gipp_jax.densify.grow`); the best state kept."""

    name: ClassVar[str] = "gaussianimage++"
    preset: ClassVar[dict] = {
        "parameterization": "direct", "learning_rate": 0.018, "optimizer": "adam",
        "keep_best": True, "position_activation": "identity", "color_init": "zero",
        "d3": True, "caf": True, "iterations": 50000}

    def initial_model(self, config, image):
        c = config
        height, width = int(image.shape[0]), int(image.shape[1])
        n0 = max(1, c.num_gaussians // 2) if c.use_d3 else c.num_gaussians
        variance = float(model_lib.caf_variance(height, width, n0, c.caf_alpha)) if c.use_caf else 0.0
        return model_lib.init_model(jax.random.PRNGKey(c.seed), height, width, c.num_gaussians,
                                    num_active=n0, parameterization=c.parameterization,
                                    color_activation=c.color_activation, filter_variance=variance,
                                    position_activation=c.position_activation, color_init=c.color_init)

    def _transform(self, config, schedule):
        if config.optimizer == "adan":
            return optax.adan(schedule, b1=0.98, b2=0.92, b3=0.99, eps=1e-8)
        return optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)

    def optimizer(self, config, height, width, factor=1):
        """Adam (GaussianImage++) or Adan (GaussianImage), the rate halved every 40% of the run."""
        schedule = optax.exponential_decay(config.learning_rate, _decay_every(config, config.iterations),
                                           config.lr_decay_factor, staircase=True)
        return self._transform(config, schedule)

    def growth_schedule(self, config):
        return densify.growth_steps(config.iterations, config.growth_fraction) if config.use_d3 else []

    def grow(self, config, state, rendered, target):
        c = config
        step = int(state.step)
        schedule = self.growth_schedule(c)
        k = densify.growth_count(c.growth_rule, state.model.num_active(), c.num_gaussians,
                                 c.max_growth, last=step == schedule[-1])
        rng = np.random.default_rng([c.seed, step])
        grown = densify.grow(state.model, state.opt_state, np.clip(rendered, 0.0, 1.0), target, k,
                             rng=rng, new_color=c.new_color, caf=c.use_caf, caf_alpha=c.caf_alpha)
        return state.replace(model=grown.model, opt_state=grown.opt_state)

    def finetune_optimizer(self, config, height, width, total):
        """Adam (the reference's compression phase) from the rate the fit ended with,
        halved every 40% of the ``total`` steps."""
        lr = config.learning_rate * config.lr_decay_factor ** (
            config.iterations // _decay_every(config, config.iterations))
        return optax.adam(optax.exponential_decay(lr, _decay_every(config, total), config.lr_decay_factor,
                                                  staircase=True),
                          b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)


@dataclasses.dataclass(frozen=True)
class GaussianImage(GaussianImagePlusPlus):
    """GaussianImage, the predecessor: all M Gaussians from the start, no filter, Cholesky
    covariances, tanh positions, random colors ``U[0, 1)``, Adan at 1e-3, the final state.
    ``d3``/``caf`` switch on GaussianImage++'s components over this recipe (the ablation)."""

    name: ClassVar[str] = "gaussianimage"
    preset: ClassVar[dict] = {
        "parameterization": "cholesky", "learning_rate": 1e-3, "optimizer": "adan",
        "keep_best": False, "position_activation": "tanh", "color_init": "uniform",
        "d3": False, "caf": False, "iterations": 50000}


def _decay_every(config, total: int) -> int:
    return max(1, int(round(config.lr_decay_fraction * total)))


# ---------------------------------------------------------------------------------------
# gipp-fast


@dataclasses.dataclass(frozen=True)
class GippFast(Method):
    """GaussianImage++ made fast: a content-aware start, log-scale covariances with rates
    in natural units, and growth where the error is, early.

    * **Start**: ``start_fraction * M`` Gaussians at pixels drawn with probability mixing
      uniform and image-gradient magnitude (``detail_fraction`` of the mass on detail), each
      isotropic with a standard deviation of ``size_factor`` times the local spacing
      between Gaussians; colors by least squares (``color_solver_steps`` of CGLS through
      the renderer), so that step 0 is already a blurred photo.
    * **Covariances** in the ``log-rs`` scheme: a step on a log-scale is a relative change
      of size, whatever the size.
    * **Adam with rates in natural units**, cosine-decayed to ``final_lr_fraction`` of
      themselves over the run: positions move by ``position_lr`` spacings per step, sizes by
      ``scale_lr`` (relative), angles by ``rotation_lr`` radians, colors by ``color_lr``.
      ``FitConfig.learning_rate`` multiplies all of them (1.0: as tuned).
    * **Growth** (D3) after each fraction of the run in ``growth_fractions``, the last
      filling the budget: new Gaussians at pixels drawn in proportion to the squared error,
      colored with the residual there, ``grow_size_factor`` spacings wide.
    * **Relocation** after each fraction of the run in ``relocate_fractions`` (once the
      budget is full): the ``relocate_share`` of the Gaussians whose removal alone would
      cost the image least (its squared error, as drawn: :func:`raster.host.removal_costs
      <gipp_jax.raster.host.removal_costs>`) start again where the error is, as grown ones
      do. A fit settles Gaussians where the early error was; some end up nearly idle while
      detail elsewhere is still short of them.
    * **No filter by default**: the start already gives every Gaussian the size of the
      gap it fills, which is what CAF's floor is for, and the floor measured 1 dB worse at
      5000 steps (docs/CONVERGENCE.md). ``caf=True`` adds GaussianImage++'s
      ``min(HW / (9 pi N), 300)`` of each Gaussian's birth.
    * **Coarse to fine, off by default**: with ``coarse_factors`` and ``coarse_fractions``,
      the first ``coarse_fractions[i]`` of the run on the image downscaled
      ``coarse_factors[i]`` x per side, where a step costs a fraction of a full-size one,
      then the Gaussians carried to the next level (:mod:`gipp_jax.levels`); a level whose
      image would have a shorter side under ``coarse_min_side`` pixels is skipped.
      ``level_schedule="restart"`` restarts the cosine decay at every level. Measured at
      full size, 1000 steps, the coarse levels cost more quality than they save time
      (docs/CONVERGENCE.md): a level's fit, magnified, is no better than the level's image
      upsampled, and the detail must still be found at full size.
    """

    name: ClassVar[str] = "gipp-fast"
    preset: ClassVar[dict] = {
        "parameterization": "log-rs", "learning_rate": 1.0, "optimizer": "adam",
        "keep_best": True, "position_activation": "identity", "color_init": "zero",
        "d3": True, "caf": False, "iterations": 600}  # what gipp fit runs: 38 dB on the sample

    # Geometry rates measured at full size (docs/CONVERGENCE.md, "Rates measured at full
    # size"); 0.02 / 0.02 / 0.02 until 2026-12-02.
    start_fraction: float = 0.5
    detail_fraction: float = 0.5
    size_factor: float = 0.6
    color_solver_steps: int = 20
    position_lr: float = 0.04
    scale_lr: float = 0.08
    rotation_lr: float = 0.05
    # Those rates are for runs of up to short_run_steps; a long run does better slower: at
    # 5000 steps the former 0.02 / 0.02 / 0.02 gave +0.10 dB on kodim01's full-size 0.5 bpp
    # file and +0.06 dB on the quick protocol (docs/CONVERGENCE.md). Between the two lengths
    # each rate is interpolated in log steps (geometry_rates).
    short_run_steps: int = 1000
    long_run_steps: int = 5000
    long_run_rates: tuple[float, float, float] = (0.02, 0.02, 0.02)
    # Compression's quantization-aware phase: 1000 steps did as well as 3000 after a 3000-step
    # fit of kodim01 (docs/CONVERGENCE.md); the reference runs it as long as the fit.
    max_compression_steps: int = 1000
    color_lr: float = 0.01
    final_lr_fraction: float = 0.05
    growth_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    grow_size_factor: float = 0.5
    # Measured at full size and on the quick protocol (docs/CONVERGENCE.md, "Relocation").
    relocate_fractions: tuple[float, ...] = (0.5, 0.6, 0.7)
    relocate_share: float = 0.05
    coarse_factors: tuple[int, ...] = ()
    coarse_fractions: tuple[float, ...] = ()
    coarse_min_side: int = 128
    level_schedule: str = "continue"

    def compression_steps(self, fit_steps):
        return min(fit_steps, self.max_compression_steps)

    # --- levels

    def levels(self, config, height, width):
        if len(self.coarse_factors) != len(self.coarse_fractions):
            raise ValueError("coarse_factors and coarse_fractions must have the same length")
        if self.level_schedule not in LEVEL_SCHEDULES:
            raise ValueError(f"unknown level_schedule {self.level_schedule!r}; choose from {', '.join(LEVEL_SCHEDULES)}")
        out, start = [], 0
        for factor, share in zip(self.coarse_factors, self.coarse_fractions):
            if factor > 1 and share > 0 and min(level_size(height, width, factor)) >= self.coarse_min_side:
                out.append(Level(start, int(factor)))
                start += int(round(share * config.iterations))
        out.append(Level(min(start, config.iterations), 1))
        for coarse, fine in zip(out, out[1:]):
            if coarse.factor % fine.factor:
                raise ValueError(f"coarse_factors must each divide the one before, got {self.coarse_factors}")
        # A level that would run no step is left out.
        return [lv for i, lv in enumerate(out) if i + 1 == len(out) or out[i + 1].start > lv.start]

    # --- start

    def initial_model(self, config, image):
        c = config
        image = np.asarray(image, np.float32)
        height, width = image.shape[:2]
        n0 = c.num_gaussians
        if c.use_d3 and self.growth_fractions:
            n0 = max(1, int(round(self.start_fraction * c.num_gaussians)))
        rng = np.random.default_rng([c.seed, 0])
        weights = (1.0 - self.detail_fraction) / (height * width) + self.detail_fraction * _normalised(
            detail_map(image))
        x, y = sample_pixels(rng, weights, n0)
        spacing = 1.0 / np.sqrt(n0 * weights[y, x])
        xy = np.stack([x, y], -1).astype(np.float32) + rng.uniform(-0.5, 0.5, (n0, 2)).astype(np.float32)
        # Free rows sit anywhere over the image with the size growth will give them, so that
        # the renderer's buffers, sized from the whole budget before the fit, fit the grown
        # model too (no recompile). Built in NumPy: no initialiser to compile.
        m = c.num_gaussians
        free = rng.uniform((0.0, 0.0), (width, height), (m, 2)).astype(np.float32)
        grown = self.grow_size_factor * math.sqrt(height * width / m)
        model = model_lib.GaussianModel(
            means=jnp.asarray(free), cov_params=jnp.asarray(self._isotropic(c, np.full(m, grown))),
            colors=jnp.zeros((m, 3), jnp.float32), filter_var=jnp.zeros(m, jnp.float32),
            active=jnp.zeros(m, bool), parameterization=c.parameterization,
            color_activation=c.color_activation, height=height, width=width)
        model = _write_rows(model, np.arange(n0), xy, self._isotropic(c, self.size_factor * spacing),
                            np.zeros((n0, 3), np.float32),
                            filter_variance=np.full(n0, self._filter(c, height, width, n0), np.float32))
        # The fit's buffers: their usage count is the one the fit measures next, and the
        # solve's program draws no more than the exact buffers would.
        return solve_colors(model, image, self.color_solver_steps, capacity=budget_capacity(model, c.backend))

    @staticmethod
    def _filter(config, height, width, count) -> float:
        return float(model_lib.caf_variance(height, width, count, config.caf_alpha)) if config.use_caf else 0.0

    @staticmethod
    def _isotropic(config, sigma: np.ndarray) -> np.ndarray:
        """Raw covariance parameters of isotropic Gaussians of standard deviation ``sigma`` px."""
        var = np.maximum(np.asarray(sigma, np.float32), 0.3) ** 2
        cov3 = np.stack([var, np.zeros_like(var), var], -1)
        return np.asarray(param_lib.from_covariance(config.parameterization, cov3))

    # --- optimizer

    def geometry_rates(self, iterations: int) -> tuple[float, float, float]:
        """(position, size, angle) rates of a run of ``iterations`` steps: the short-run
        rates up to ``short_run_steps``, ``long_run_rates`` from ``long_run_steps``, and
        between, each rate geometrically interpolated in log steps."""
        short = (self.position_lr, self.scale_lr, self.rotation_lr)
        if iterations <= self.short_run_steps or self.long_run_steps <= self.short_run_steps:
            return short
        t = min(1.0, math.log(iterations / self.short_run_steps)
                / math.log(self.long_run_steps / self.short_run_steps))
        return tuple(float(a * (b / a) ** t) for a, b in zip(short, self.long_run_rates))

    def _group_scales(self, config, height, width) -> dict:
        spacing = math.sqrt(height * width / config.num_gaussians)
        position_lr, scale_lr, rotation_lr = self.geometry_rates(config.iterations)
        cov = (jnp.array([scale_lr, scale_lr, rotation_lr], jnp.float32)
               if config.parameterization == "log-rs" else jnp.float32(scale_lr))
        return {"means": jnp.float32(position_lr * spacing), "cov_params": cov,
                "colors": jnp.float32(self.color_lr)}

    def _adam(self, config, height, width, schedule):
        return optax.chain(
            optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps),
            scale_by_tree(self._group_scales(config, height, width)),
            optax.scale_by_learning_rate(schedule))

    def optimizer(self, config, height, width, factor=1):
        levels = self.levels(config, height, width)
        if self.level_schedule == "restart" and len(levels) > 1:
            ends = [lv.start for lv in levels[1:]] + [config.iterations]
            schedule = optax.join_schedules(
                [optax.cosine_decay_schedule(config.learning_rate, max(1, end - lv.start), alpha=self.final_lr_fraction)
                 for lv, end in zip(levels, ends)], [lv.start for lv in levels[1:]])
        else:
            schedule = optax.cosine_decay_schedule(config.learning_rate, config.iterations,
                                                   alpha=self.final_lr_fraction)
        return self._adam(config, height / factor, width / factor, schedule)

    def finetune_optimizer(self, config, height, width, total):
        """The rate the fit ended with, cosine-decayed by the same factor over ``total``."""
        lr = config.learning_rate * self.final_lr_fraction
        return self._adam(config, height, width,
                          optax.cosine_decay_schedule(lr, total, alpha=self.final_lr_fraction))

    # --- growth

    def growth_schedule(self, config):
        return sorted(set(self._growth_steps(config)) | set(self._relocation_steps(config)))

    def _growth_steps(self, config) -> list[int]:
        if not config.use_d3:
            return []
        return self._steps_at(config, self.growth_fractions)

    def _relocation_steps(self, config) -> list[int]:
        return self._steps_at(config, self.relocate_fractions) if self.relocate_share > 0 else []

    @staticmethod
    def _steps_at(config, fractions) -> list[int]:
        steps = sorted({int(round(f * config.iterations)) for f in fractions})
        return [s for s in steps if 0 < s < config.iterations]

    def grow(self, config, state, rendered, target):
        step = int(state.step)
        growth = self._growth_steps(config)
        if step in growth:
            return self._grow(config, state, rendered, target, growth)
        if step in self._relocation_steps(config):
            return self._relocate(config, state, rendered, target)
        return state

    def _grow(self, config, state, rendered, target, growth: list[int]):
        """D3's event: an equal share of the Gaussians still missing at each growth step."""
        model = state.model
        events_left = len([s for s in growth if s >= int(state.step)])
        active = np.asarray(model.active)
        free = np.flatnonzero(~active)
        used = self.budget_used(model)
        k = min(free.size, math.ceil((config.num_gaussians - used) / max(1, events_left) - 1e-9))
        if k <= 0:
            return state
        residual = np.asarray(target, np.float32) - np.clip(np.asarray(rendered, np.float32), 0.0, 1.0)
        return self._place(config, state, free[:k], residual, int(round(used)) + k)

    def budget_used(self, model: model_lib.GaussianModel) -> float:
        """How much of the budget ``config.num_gaussians`` the model's active rows use, in
        Gaussians (host-side; :meth:`budget_units`)."""
        return self.budget_units(model.num_active(), model_lib.num_carriers(model))

    def _relocate(self, config, state, rendered, target):
        """The ``relocate_share`` of the active Gaussians that cost least to remove, placed
        again where the error is without them."""
        model = state.model
        active = np.flatnonzero(np.asarray(model.active))
        k = int(round(self.relocate_share * active.size))
        if k <= 0:
            return state
        means, cov3, colors = (np.asarray(a, np.float64)[active] for a in model_attributes(model))
        carriers = model_lib.active_carriers(model)
        geo = host.geometry(means, cov3, model.height, model.width,
                            None if carriers is None else np.asarray(carriers)[active])
        rendered, target = np.asarray(rendered, np.float64), np.asarray(target, np.float64)
        cheapest = np.argsort(host.removal_costs(geo, colors, rendered, target), kind="stable")[:k]
        without = rendered - host.render(geo.take(cheapest), colors[cheapest], model.height, model.width)
        residual = (target - np.clip(without, 0.0, 1.0)).astype(np.float32)
        return self._place(config, state, active[cheapest], residual, active.size)

    def _place(self, config, state, rows: np.ndarray, residual: np.ndarray, count: int):
        """``state`` with Gaussians ``rows`` started afresh at pixels drawn in proportion to
        :meth:`_placement_energy` of the (H, W, 3) ``residual`` (the target minus the clamped
        render), colored with the residual blurred over 3x3 pixels there, ``grow_size_factor``
        spacings wide for ``count`` active Gaussians, their optimizer moments cleared; of
        those, :meth:`_new_primitives` says which start and how (the rest are freed)."""
        model = state.model
        blurred = _box3(residual)
        rng = np.random.default_rng([config.seed, int(state.step)])
        x, y = sample_pixels(rng, _normalised(self._placement_energy(residual, blurred)), rows.size)
        sigma = self.grow_size_factor * math.sqrt(model.height * model.width / count)
        jitter = rng.uniform(-0.5, 0.5, (rows.size, 2)).astype(np.float32)
        xy = np.stack([x, y], -1).astype(np.float32) + jitter
        kept, colors, carriers = self._new_primitives(config, model, rows, residual, blurred[y, x], x, y, sigma,
                                                      jitter)
        if model.color_activation == "sigmoid":
            colors = _logit(colors)
        model = _freed(model, rows[np.setdiff1d(np.arange(rows.size), kept)])
        model = _write_rows(model, rows[kept], xy[kept], self._isotropic(config, np.full(kept.size, sigma)),
                            colors[kept], self._filter(config, model.height, model.width, count),
                            None if carriers is None else carriers[kept])
        return state.replace(model=model, opt_state=_cleared(state.opt_state, rows, model.budget))

    def _placement_energy(self, residual: np.ndarray, blurred: np.ndarray) -> np.ndarray:
        """(H, W) weights new Gaussians are drawn by: the squared blurred residual."""
        return np.square(blurred).sum(-1)

    def _new_primitives(self, config, model, rows, residual, colors, x, y, sigma, jitter):
        """``(kept, colors, carriers)`` of the candidates at pixels ``(x, y)`` for ``rows``:
        which of them start (indices into ``rows``), their (k, 3) colors before the color
        activation (``colors``: the blurred residual's) and (k, 3) carriers or None. Here
        every candidate starts, a plain Gaussian."""
        return np.arange(rows.size), colors, None


def _freed(model, rows: np.ndarray):
    """``model`` with rows ``rows`` (indices) inactive, and plain where it has carriers."""
    if rows.size == 0:
        return model
    active = np.array(model.active)
    active[rows] = False
    model = model.replace(active=jnp.asarray(active))
    if model.carriers is not None:
        carriers = np.array(model.carriers)
        carriers[rows] = 0.0
        model = model.replace(carriers=jnp.asarray(carriers))
    return model


def _cleared(opt_state, rows: np.ndarray, budget: int):
    """``opt_state`` with the optimizer moments of ``rows`` (indices) zeroed."""
    mask = np.zeros(budget, bool)
    mask[rows] = True
    return densify.clear_rows(opt_state, jnp.asarray(mask), budget)


LEVEL_SCHEDULES = ("continue", "restart")


def scale_by_tree(factors) -> optax.GradientTransformation:
    """Multiplies each leaf of the updates by the matching leaf of ``factors`` (a pytree
    prefix of the parameters): per-group rates in one ``optax`` chain."""

    def update(updates, state, params=None):
        return jax.tree_util.tree_map(lambda f, u: f * u, factors, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# ---------------------------------------------------------------------------------------
# Image-driven placement (host-side, numpy)


def detail_map(image: np.ndarray) -> np.ndarray:
    """(H, W) gradient magnitude of an (H, W, 3) image (central differences over RGB),
    box-blurred over 3x3 pixels."""
    image = np.asarray(image, np.float32)
    gy, gx = np.gradient(image, axis=(0, 1)) if min(image.shape[:2]) > 1 else (0 * image, 0 * image)
    return _box3(np.sqrt(np.square(gx).sum(-1) + np.square(gy).sum(-1)))


def sample_pixels(rng: np.random.Generator, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` pixels drawn with probability proportional to ``weights`` (H, W), spread out:
    systematic sampling along a Hilbert curve (the ``k`` quantiles ``(i + u) / k`` of the
    weights' running sum in curve order, one random ``u``), so that every region gets its
    share of the ``k`` and neighbours do not pile up as independent draws would. A pixel
    whose weight exceeds ``1 / k`` of the total can be drawn more than once.
    Returns integer ``(x, y)``, each (k,)."""
    height, width = weights.shape
    ys, xs = np.divmod(np.arange(height * width), width)
    order = np.argsort(hilbert_index(xs, ys, max(1, int(np.ceil(np.log2(max(height, width)))))), kind="stable")
    cumulative = np.cumsum(np.asarray(weights, np.float64).ravel()[order])
    if not cumulative[-1] > 0:
        cumulative = np.arange(1, order.size + 1, dtype=np.float64)
    quantiles = (np.arange(k) + rng.random()) / k * cumulative[-1]
    picked = order[np.minimum(np.searchsorted(cumulative, quantiles, side="right"), order.size - 1)]
    y, x = np.divmod(picked, width)
    return x, y


def hilbert_index(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """Position of integer points ``(x, y)`` in ``[0, 2^order)^2`` along the Hilbert curve."""
    x, y = np.array(x, np.int64), np.array(y, np.int64)
    n = 1 << order
    d = np.zeros_like(x)
    s = n >> 1
    while s > 0:
        rx, ry = (x & s) > 0, (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x, y = np.where(flip, n - 1 - x, x), np.where(flip, n - 1 - y, y)
        x, y = np.where(~ry, y, x), np.where(~ry, x, y)
        s >>= 1
    return d


def _normalised(weights: np.ndarray) -> np.ndarray:
    total = float(weights.sum())
    return weights / total if total > 0 else np.full_like(weights, 1.0 / weights.size)


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 box blur of an (H, W, ...) array with edge replication."""
    p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    h, w = a.shape[:2]
    return sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def _logit(colors: np.ndarray) -> np.ndarray:
    c = np.clip(colors, 0.02, 0.98)
    return np.log(c / (1.0 - c)).astype(np.float32)


def _write_rows(model, rows, pixels, cov_params, colors, filter_variance=None, carriers=None):
    """``model`` with rows ``rows`` active at ``pixels`` (k, 2) with the given raw
    covariance parameters and raw colors (and, if given, filter variance). A model with
    carriers gets ``carriers`` (k, 3) there, or the plain Gaussian's ``(0, 0, 0)``."""
    def put(array, values):
        out = np.array(array)
        out[rows] = values
        return jnp.asarray(out)

    active = np.array(model.active)
    active[rows] = True
    changes = dict(means=put(model.means, np.asarray(model_lib.raw_means(model, pixels))),
                   cov_params=put(model.cov_params, cov_params), colors=put(model.colors, colors),
                   active=jnp.asarray(active))
    if filter_variance is not None:
        changes["filter_var"] = put(model.filter_var, filter_variance)
    if model.carriers is not None:
        changes["carriers"] = put(model.carriers, 0.0 if carriers is None else carriers)
    return model.replace(**changes)


# ---------------------------------------------------------------------------------------
# Colors by least squares


def solve_colors(model: model_lib.GaussianModel, image: np.ndarray, steps: int,
                 backend: str = "auto", capacity: Capacity | None = None) -> model_lib.GaussianModel:
    """``model`` with the colors that best reproduce ``image`` in the L2 sense, by
    ``steps`` iterations of CGLS through the renderer (the render is linear in the
    colors: :func:`gipp_jax.raster.least_squares_colors`; ``backend`` its rasterizer,
    ``capacity`` its buffers if they are known, e.g. the fit's, whose renders then share
    the solve's program, else measured). With a sigmoid color activation the solution is
    clipped and mapped back through the logit. ``steps == 0`` leaves the model as it is."""
    if steps <= 0 or model.num_active() == 0:
        return model
    if capacity is None:
        capacity = Capacity.fit(*model_usage(model), headroom=1.0, backend=backend)
    colors = np.asarray(least_squares_colors(model, image, steps, capacity))
    if model.color_activation == "sigmoid":
        colors = _logit(colors)
    active = np.asarray(model.active)[:, None]
    return model.replace(colors=jnp.asarray(np.where(active, colors, np.asarray(model.colors)), jnp.float32))


# ---------------------------------------------------------------------------------------
# gipp-gabor


@dataclasses.dataclass(frozen=True)
class GippGabor(GippFast):
    """``gipp-fast`` whose primitives may carry a cosine carrier, placed where the
    residual oscillates.

    Every row of the model has a carrier ``(kx, ky, phi)``; ``(0, 0, 0)`` is the plain
    Gaussian, and its gradient there is exactly zero (``sin 0``), so a plain row stays plain
    and gradient descent alone never grows a carrier. Carriers are placed, as in matching
    pursuit, at the growth and relocation events: for each pixel drawn for a new primitive,
    the windowed Fourier transform of the residual there gives the best carrier atom and
    the energy it and the plain Gaussian would take out (:func:`gipp_jax.carriers.best_atoms`,
    over the new primitive's envelope). Each candidate is then worth its energy per number it
    costs, a carrier ``1 + carrier_cost`` Gaussians (its 3 numbers over a Gaussian's 8), and
    the most valuable fill the event's share of the budget: the budget
    ``config.num_gaussians`` counts a carrier as ``carrier_cost`` of a Gaussian, so a fit
    holds as many numbers as ``gipp-fast``'s of the same budget. Pixels are drawn by the
    residual's local energy (its square blurred over 3x3 pixels), not the square of the
    blurred residual, which cancels an oscillation. The carriers then train with the rest:
    frequencies by Adam at ``frequency_lr`` cycles per pixel per step, phases at ``phase_lr``
    radians.
    """

    name: ClassVar[str] = "gipp-gabor"
    carriers: ClassVar[bool] = True
    carrier_cost: float = 3.0 / 8.0
    frequency_lr: float = 0.002
    # 0.1 against 0.05 and 0.02: +0.02 to +0.12 dB on three textured 192x192 Kodak crops (600 steps).
    phase_lr: float = 0.1
    # gipp compress's fit runs this share of its default steps: a step with carriers costs
    # 1.4x one without, and on kodim06 at 0.5 bpp 4000 steps gave 29.41 dB against 29.47 at
    # 6000 in 296 s against 367 (docs/studies/carriers.md).
    compression_fit_share: float = 2.0 / 3.0

    def compression_fit_steps(self, default):
        return max(1, round(default * self.compression_fit_share))

    def initial_model(self, config, image):
        return model_lib.with_carriers(super().initial_model(config, image))

    def _group_scales(self, config, height, width):
        scales = super()._group_scales(config, height, width)
        scales["carriers"] = jnp.array([self.frequency_lr, self.frequency_lr, self.phase_lr], jnp.float32)
        return scales

    def budget_units(self, num_primitives, num_carriers=0):
        return float(num_primitives) + self.carrier_cost * num_carriers

    def _placement_energy(self, residual, blurred):
        """The residual's local energy: an oscillation survives it, where its blur cancels."""
        return _box3(np.square(residual).sum(-1))

    def _new_primitives(self, config, model, rows, residual, colors, x, y, sigma, jitter):
        """Each candidate the plain Gaussian or the carrier atom that takes out more energy
        per number; the most valuable kept within the budget the rows held (their number,
        and the carriers relocated rows give back), never past ``config.num_gaussians``."""
        units = rows.size + self.carrier_cost * int(np.isin(rows, model_lib.carrier_rows(model)).sum())
        # Never past the budget: an event's share is whole rows, rounded up.
        others = np.array(model.active)
        others[rows] = False
        units = min(units, config.num_gaussians - self.budget_used(model.replace(active=jnp.asarray(others))))
        atoms = carriers_lib.best_atoms(residual, x, y, max(0.3, sigma))
        textured = atoms.carrier_energy > (1.0 + self.carrier_cost) * atoms.plain_energy
        cost = np.where(textured, 1.0 + self.carrier_cost, 1.0)
        value = np.where(textured, atoms.carrier_energy, atoms.plain_energy) / cost
        order = np.argsort(-value, kind="stable")
        kept = order[np.cumsum(cost[order]) <= units + 1e-6]
        colors = np.where(textured[:, None], atoms.colors, colors)
        # The atom's phase is relative to its pixel; its center moved by the jitter.
        carriers = np.where(textured[:, None], atoms.carriers, 0.0).astype(np.float32)
        carriers[:, 2] += 2.0 * np.pi * np.sum(carriers[:, :2] * jitter, -1) * textured
        return kept, colors, carriers


METHODS: dict[str, Method] = {m.name: m for m in (GippFast(), GaussianImagePlusPlus(), GaussianImage(),
                                                  GippGabor())}
DEFAULT_METHOD = GippFast.name
# gipp compress's: on full-size kodim01-08 at 0.15, 0.5 and 1 bpp every file is 0.5-1.9 dB
# above gipp-fast's at 1.2-1.3x the encode time (docs/BENCHMARKS.md). gipp fit keeps
# gipp-fast, whose steps cost 1.5x less.
DEFAULT_COMPRESS_METHOD = GippGabor.name


def method_spec(method: str | Method) -> str | dict:
    """JSON data naming ``method``: the name of a registered method (a name, or an instance
    equal to the registered one), else ``{"name": ..., knobs...}``."""
    method = get_method(method)
    if METHODS.get(method.name) == method:
        return method.name
    return {"name": method.name, **dataclasses.asdict(method)}


def get_method(method: str | Method) -> Method:
    """The method a name (or instance) stands for; ValueError for an unknown name."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method]
