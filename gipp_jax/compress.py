"""Image compression: representation, quantization-aware training, a ``.gipp`` file.

The reference's pipeline, every schedule a fraction of the run:

1. Representation (:class:`~gipp_jax.train.Fitter`) by the fit method (``gipp-fast`` by
   default; ``gaussianimage++``, or the ``compression-kodak`` config, for the reference's
   pipeline), best state kept, its colors through ``CompressConfig.colors``, else the
   method's :attr:`~gipp_jax.methods.Method.compression_colors` (the reference's: a sigmoid).
2. From it, ``warmup_fraction`` of the compression phase (6000 of 50000) in full precision
   with the method's optimizer continuing the fit (the reference: a fresh Adam at the
   learning rate the representation ended with).
3. Quantization-aware training to the end: a fresh Adam for the Gaussians (same rate,
   halved every 40%) and Adam at 1e-3 for the quantizers' scales and offsets (halved
   every 20%); the forward pass renders fake-quantized attributes. Best state kept.
4. Codes of the best state; Gaussians no longer positive definite are dropped; the codes
   are refined against the image (:mod:`gipp_jax.refine`) and go to a ``.gipp`` file
   (:mod:`gipp_jax.bitstream`).

Departures from the reference, all on by default and all off in the ``compression-kodak``
config. Bit depths 10/7/5 instead of 12/10/6 on a 192-px side, the position depth one bit
more per doubling of the image's longer side (12/7/5 at Kodak's 768x512, the same step in
pixels; :func:`~gipp_jax.quantize.position_bits_for`; rate control gives sparse budgets a
position and a covariance bit less, :func:`~gipp_jax.rate.entry_for_density`): on the Kodak quick protocol (all 24
images, docs/studies/compression.md) they cost fewer bits for the same quality at every budget
(BD-rate against JPEG -31.8% against -12.1%). Switched together by
``CompressConfig.correlation``, the covariance's off-diagonal is quantized as the
correlation ``b / sqrt(a c)`` (every decoded covariance positive definite), and before QAT
no Gaussian is left wider than the image (:func:`bound_sizes`). Fits with log-scale
covariances can end with a few needles thousands of pixels long; coding ``b`` itself, their
off-diagonals stretched the quantizer past float16 and such files lost every Gaussian. And
(``CompressConfig.arcsine``) the correlation's codes are uniform in its arcsine, finer where
those needles are. And (``CompressConfig.refine_sweeps``) the codes QAT rounds to are
refined against the image by a search over neighbouring codes (:mod:`gipp_jax.refine`).
And (``CompressConfig.coarsen_to_fit``) a file over its size limit (``--bpp``) is also
coded with uniformly coarser steps that fit (:func:`coarsened_to_fit`) and refined again,
and the better of that file and the one pruned to fit is kept (:func:`encode_refined`):
the coarser steps gained 0.12-0.31 dB on full-size Kodak at 0.15 and 0.5 bpp where the rate
table's budget overran by 5-13%, and lost at 1 bpp (docs/studies/compression.md).
And (``CompressConfig.sized_colors``) each Gaussian's color step shrinks with its size, in
classes read off its covariance codes (:func:`~gipp_jax.quantize.color_weights`): -0.02 to
+0.13 dB on full-size files at the same size, +0.03 on the mean of twelve (docs/studies/compression.md). With ``CompressConfig.colors = "identity"`` the fit's own colors, not squashed by a
sigmoid, are quantized, two bits finer (:func:`~gipp_jax.quantize.color_bits_for`) for about
the sigmoid's step over their wider range. The fit is better (kodim03: +0.46 dB), but the
colors cost 0.6-2.7 bits per Gaussian more, and full-size files at 0.5 bpp ranged from
+0.28 to -0.40 dB, -0.05 on the mean of six (docs/studies/compression.md): not the default.

Bit depths below the reference's (12/10/6) are reached by stepping down rather than trained
from the start: QAT runs at the reference depths, then its best state is re-quantized onto
every 2^k-th level (:func:`~gipp_jax.quantize.with_bits`) and fine-tuned at the target
depths for the last ``step_down_fraction`` of the phase. Coarse quantizers from the start
train worse: on the Kodak quick protocol at 10/7/5, QAT from the start ended below merely
re-quantizing the 12/10/6 result (29.25 against 29.40 dB at 625 Gaussians).

What the encoder reports is what :func:`decode_image` makes of the file's bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gipp_jax import bitstream, codec, metrics
from gipp_jax import methods as methods_lib
from gipp_jax import parameterization as param_lib
from gipp_jax import model as model_lib
from gipp_jax import quantize as q_lib
from gipp_jax.codec import coarser_codes, decode_image, model_codes
from gipp_jax.loop import Checkpoints, FitLoop, keep_best, progress_bar, scan_steps
from gipp_jax.raster import Capacity, model_usage, render_with_stats
from gipp_jax.refine import refine_codes
from gipp_jax.train import FitConfig, Fitter, clamp01, mse_to_psnr


CHECKPOINT_SECONDS = 60.0  # between checkpoints of the compression phase
# encode_to_size drops at most this fraction of the Gaussians between measurements of costs.
PRUNE_ROUND = 0.02
# coarsened_to_fit: the largest factor on the quantizers' steps, and the bisection's steps.
MAX_COARSENING = 2.0
COARSENING_SEARCH = 8
# gipp compress's representation fit when nothing sets its steps: this many, or the method's
# share of them (Method.compression_fit_steps), then the method's compression phase
# (gipp-fast: 1000 steps). With the XLA:CPU flags 6000 steps cost what 5000 did before
# (kodim01 at 0.5 bpp: 312 s, 26.23 dB against 301 s, 26.19 dB); what the 1000 extra steps
# gain is within the pipeline's run-to-run spread (docs/studies/compression.md).
COMPRESS_ITERATIONS = 6000
DEPTH_FIELDS = ("position_bits", "covariance_bits", "color_bits")  # CompressConfig's, in --bits order
SIGMOID_COLOR_BITS = 5  # CompressConfig's color depth on sigmoid colors (Kodak quick protocol)


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """Compression-phase settings (see the module docstring)."""

    # None: by the image's size (quantize.position_bits_for: 10 bits on a 192-px side, 12 on
    # 768). The reference's depths are 12/10/6 (quantize.DEFAULT_BITS).
    position_bits: int | None = None
    covariance_bits: int = 7
    # None: by the fit's colors (quantize.color_bits_for: 5 bits on sigmoid colors, 7 on the
    # identity's). The reference's depth is 6 (sigmoid colors).
    color_bits: int | None = None
    iterations: int | None = None  # compression phase length; default: the method's (Method.compression_steps)
    warmup_fraction: float = 0.12
    quantizer_learning_rate: float = 1e-3
    quantizer_decay_fraction: float = 0.2
    step_down_fraction: float = 0.2  # of the phase, at bit depths below the reference's
    # The off-diagonal coded as the correlation b / sqrt(a c) (every decoded covariance
    # positive definite); False: b itself, as the reference.
    correlation: bool = True
    # The correlation's codes uniform in asin(rho): finer steps near +-1, where needle-shaped
    # Gaussians are (quantize's module docstring); False: uniform in rho (format 4).
    arcsine: bool = True
    # Passes of the codes' refinement against the image after QAT (gipp_jax.refine); 0: the
    # codes QAT rounds to, as the reference.
    refine_sweeps: int = 4
    # The color activation of the fit that QAT quantizes ("identity" or "sigmoid"); None:
    # the fit method's (Method.compression_colors).
    colors: str | None = None
    # Each Gaussian's color step divided by a weight of its size (quantize's module
    # docstring, format 6); False: one color step for all, as the reference.
    sized_colors: bool = True
    # A file over its size limit is also made to fit by coarser quantizer steps
    # (coarsened_to_fit), and the better file is kept (encode_refined); False: Gaussians are
    # dropped until it fits.
    coarsen_to_fit: bool = True
    # QAT minimises MSE + rate_weight * bpp, the bits estimated from the quantized codes
    # (quantize.estimated_bits; carriers not counted); 0: distortion alone, as the reference.
    rate_weight: float = 0.0
    # The carriers' grid (quantize.CarrierQuantizer), for methods whose primitives carry one.
    frequency_bits: int = q_lib.FREQUENCY_BITS
    phase_bits: int = q_lib.PHASE_BITS

    def colors_for(self, fit_config: FitConfig) -> str:
        """The color activation of compression's fit: :attr:`colors`, else the method's."""
        return self.colors or fit_config.recipe.compression_colors

    def phase_steps(self, fit_config: FitConfig) -> int:
        """Steps of the compression phase after ``fit_config``'s fit: ``iterations``, else
        the fit method's (:meth:`~gipp_jax.methods.Method.compression_steps`)."""
        return self.iterations or fit_config.recipe.compression_steps(fit_config.iterations)

    def with_bits(self, bits) -> CompressConfig:
        """These settings at bit depths ``(position, covariance, color)``."""
        return dataclasses.replace(self, **dict(zip(DEPTH_FIELDS, bits)))

    def for_image(self, height: int, width: int) -> CompressConfig:
        """These settings with the position depth fixed for an image of that size."""
        if self.position_bits is not None:
            return self
        return dataclasses.replace(self, position_bits=q_lib.position_bits_for(height, width))

    def fit_config_for(self, fit_config: FitConfig) -> FitConfig:
        """The representation fit compression runs: ``fit_config`` with the colors of
        :meth:`colors_for`, validated."""
        return dataclasses.replace(fit_config, color_activation=self.colors_for(fit_config)).validate()

    def for_colors(self, activation: str) -> CompressConfig:
        """These settings with the color depth fixed for colors with ``activation``
        (:func:`~gipp_jax.quantize.color_bits_for` of :data:`SIGMOID_COLOR_BITS`)."""
        if self.color_bits is not None:
            return self
        return dataclasses.replace(self, color_bits=q_lib.color_bits_for(activation, SIGMOID_COLOR_BITS))

    @property
    def bits(self) -> dict:
        """The bit depths per attribute (position None until :meth:`for_image`, color until
        :meth:`for_colors`)."""
        return {"position": self.position_bits, "covariance": self.covariance_bits,
                "color": self.color_bits}

    @property
    def training_bits(self) -> dict:
        """The depths QAT starts at: the reference's, or the target's where it is finer."""
        return {k: max(v, q_lib.DEFAULT_BITS[k]) for k, v in self.bits.items()}

    def validate(self) -> CompressConfig:
        if self.position_bits is not None and not 1 <= self.position_bits <= q_lib.MAX_POSITION_BITS:
            raise ValueError(f"position bits must be in 1..{q_lib.MAX_POSITION_BITS}")
        if not (1 <= self.covariance_bits <= 16 and (self.color_bits is None or 1 <= self.color_bits <= 16)):
            raise ValueError("covariance and color bits must be in 1..16")
        if not 0.0 <= self.step_down_fraction < 1.0:
            raise ValueError("step_down_fraction must be in [0, 1)")
        if self.refine_sweeps < 0:
            raise ValueError("refine_sweeps must be >= 0")
        if not self.rate_weight >= 0.0:
            raise ValueError("rate_weight must be >= 0")
        if self.colors is not None:
            model_lib.check_color_activation(self.colors)
        self.carrier_quantizer.validate()
        return self

    @property
    def carrier_quantizer(self) -> q_lib.CarrierQuantizer:
        return q_lib.CarrierQuantizer(self.frequency_bits, self.phase_bits)

    def quantizers_for(self, model: model_lib.GaussianModel, bits: dict) -> q_lib.GaussianQuantizers:
        """Quantizers initialised on ``model``'s attributes at depths ``bits``, with these
        settings (and the carriers' grid where the model has carriers)."""
        return q_lib.init_gaussian_quantizers(
            *codec.attributes(model), bits, correlation=self.correlation, arcsine=self.arcsine,
            sized_colors=self.sized_colors, carriers=None if model.carriers is None else self.carrier_quantizer)


@flax.struct.dataclass
class QatState:
    model: model_lib.GaussianModel
    quantizers: q_lib.GaussianQuantizers
    opt_model: Any
    opt_quant: Any
    step: jax.Array
    best_model: model_lib.GaussianModel
    best_quantizers: q_lib.GaussianQuantizers
    best_psnr: jax.Array
    last_psnr: jax.Array
    # The phase's settings as data, so that one compiled program runs every phase: whether
    # the render is fake-quantized and the quantizers trained (False in the warm-up), and
    # the (4,) largest codes (quantize.quantizer_levels) of the phase's depths.
    quantized: jax.Array
    levels: jax.Array


def _qat_loss(params, qparams, state: QatState, target, capacity, rate_weight: float = 0.0):
    """The QAT loss and ``(mse, usage)``: the MSE of the (fake-quantized, once ``state``
    is quantized) render against ``target``, plus ``rate_weight`` times the bits per pixel
    the file would spend (:func:`~gipp_jax.quantize.estimated_bits`; ``rate_weight`` is
    static, and 0 traces no rate term)."""
    model = state.model.with_trainable(params)
    qs = state.quantizers.replace(**qparams)

    def quantized(a):
        return q_lib.fake_quantize_primitives(qs, a, state.levels)

    attributes = tuple(codec.attributes(model))
    carriers = model_lib.active_carriers(model)
    if carriers is not None:
        attributes += (carriers,)
    means, cov3, colors, *carriers = jax.lax.cond(state.quantized, quantized, lambda a: tuple(a), attributes)
    image, usage = render_with_stats(means, cov3, colors, model.height, model.width,
                                     capacity.pairs, capacity.chunks, backend=capacity.backend,
                                     carriers=carriers[0] if carriers else None)
    mse = jnp.mean(jnp.square(clamp01(image) - target))
    if not rate_weight:
        return mse, (mse, usage)
    bits = q_lib.estimated_bits(qs, *attributes[:3], model.active, model.height, model.width, state.levels)
    return mse + jnp.where(state.quantized, rate_weight * bits / (model.height * model.width), 0.0), (mse, usage)


def _qat_step(opt_m, opt_q, capacity, state: QatState, *, target, rate_weight: float = 0.0):
    """One QAT step. The best state is the one of the least loss: with a rate term, its
    ``best_psnr`` is the PSNR of that loss taken as an MSE (distortion and rate together)."""
    params = state.model.trainable()
    qparams = q_lib.learned_quantizers(state.quantizers)
    (loss, (mse, usage)), (g_m, g_q) = jax.value_and_grad(_qat_loss, argnums=(0, 1), has_aux=True)(
        params, qparams, state, target, capacity, rate_weight)
    up_m, opt_model = opt_m.update(g_m, state.opt_model, params)
    psnr = mse_to_psnr(mse)
    score = mse_to_psnr(loss) if rate_weight else psnr
    better = score > state.best_psnr
    up_q, opt_quant = opt_q.update(g_q, state.opt_quant, qparams)
    trained = state.quantizers.replace(**optax.apply_updates(qparams, up_q))
    if_quantized = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(state.quantized, new, old))
    quantizers, opt_quant = if_quantized((trained, opt_quant), (state.quantizers, state.opt_quant))
    new = state.replace(
        model=state.model.with_trainable(optax.apply_updates(params, up_m)),
        quantizers=quantizers, opt_model=opt_model, opt_quant=opt_quant, step=state.step + 1,
        best_model=keep_best(better, state.best_model, state.model),
        best_quantizers=keep_best(better, state.best_quantizers, state.quantizers),
        best_psnr=jnp.where(better, score, state.best_psnr), last_psnr=psnr)
    return new, usage


def _qat_chunk(opt_m, opt_q, rate_weight, capacity, chunk_steps, state, target, num_steps):
    step = functools.partial(_qat_step, opt_m, opt_q, capacity, target=target, rate_weight=rate_weight)
    return scan_steps(step, state, chunk_steps, num_steps)


@jax.jit
def bound_sizes(model: model_lib.GaussianModel) -> model_lib.GaussianModel:
    """Caps every Gaussian's standard deviation at the image's longer side (eigenvalues of
    the covariance at ``max(H, W)^2``, orientation kept). Fits with unbounded log-scales can
    leave a few needles thousands of pixels long, whose near-1 correlation no quantizer
    level holds; within the image such a Gaussian changes little, and QAT adapts the rest."""
    cov = param_lib.covariance(model.parameterization, model.cov_params)
    a, b, c = cov[:, 0], cov[:, 1], cov[:, 2]
    half_gap = jnp.sqrt(jnp.square(0.5 * (a - c)) + jnp.square(b))
    mid = 0.5 * (a + c)
    big, small = mid + half_gap, mid - half_gap
    limit = float(max(model.height, model.width)) ** 2 - model.filter_var
    new_big, new_small = jnp.minimum(big, limit), jnp.minimum(small, limit)
    # Same eigenvectors: cov' = new_small I + (new_big - new_small) v v^T, v the major axis.
    spread = jnp.where(half_gap > 0, (new_big - new_small) / jnp.maximum(2.0 * half_gap, 1e-30), 0.0)
    capped = jnp.stack([new_small + spread * (a - small), spread * b, new_small + spread * (c - small)], axis=-1)
    raw = param_lib.from_covariance(model.parameterization, capped)
    return model.replace(cov_params=jnp.where((big > limit)[:, None], raw, model.cov_params))


@dataclasses.dataclass(frozen=True)
class _Phase:
    name: str
    end: int        # the step the phase ends at, counted from the compression phase's start
    quantized: bool
    bits: dict


def qat_start(model: model_lib.GaussianModel, fit_config: FitConfig, config: CompressConfig, total: int):
    """The quantization-aware phases of ``total`` steps for a fitted ``model`` (compacted):
    ``(state, opt_m, opt_q, phases)``, the first phase's state (the warm-up's: the render
    not yet fake-quantized), the Gaussians' and quantizers' optimizers and the phases."""
    opt_m, opt_q = _optimizers(fit_config, config, total, model.height, model.width)
    phases = _phases(config, total)
    qs = config.quantizers_for(model, phases[0].bits)
    state = QatState(model=model, quantizers=qs, opt_model=opt_m.init(model.trainable()),
                     opt_quant=opt_q.init(q_lib.learned_quantizers(qs)), step=jnp.int32(0), best_model=model,
                     best_quantizers=qs, best_psnr=jnp.float32(-jnp.inf), last_psnr=jnp.float32(-jnp.inf),
                     quantized=jnp.bool_(False), levels=q_lib.quantizer_levels(qs))
    return state, opt_m, opt_q, phases


def qat_chunk_program(opt_m, opt_q, rate_weight: float = 0.0):
    """The jitted chunk of QAT steps (every phase's): ``fn(capacity, chunk_steps, state,
    target, num_steps) -> (state, usage)``, ``capacity`` and ``chunk_steps`` static;
    ``rate_weight``: the rate term's weight (:func:`_qat_loss`)."""
    return jax.jit(functools.partial(_qat_chunk, opt_m, opt_q, float(rate_weight)), static_argnums=(0, 1))


def _optimizers(fit_config: FitConfig, config: CompressConfig, total: int, height: int, width: int):
    """The fit method's optimizer continuing a finished fit for the Gaussians (for
    GaussianImage++: Adam from the rate the representation ended with, decayed as in the
    fit) and Adam for the quantizers' scales and offsets, over ``total`` steps."""
    opt_m = fit_config.recipe.finetune_optimizer(fit_config, height, width, total)
    opt_q = optax.adam(optax.exponential_decay(config.quantizer_learning_rate,
                                               max(1, int(round(config.quantizer_decay_fraction * total))),
                                               0.5, staircase=True))
    return opt_m, opt_q


def _phases(config: CompressConfig, total: int) -> list[_Phase]:
    """Warm-up, QAT at :attr:`CompressConfig.training_bits` and, when those are finer than
    the target depths, the step-down."""
    start_bits = config.training_bits
    down = int(round(config.step_down_fraction * total)) if start_bits != config.bits else 0
    phases = [_Phase("warm-up", int(round(config.warmup_fraction * total)), False, start_bits),
              _Phase("qat", total - down, True, start_bits)]
    return phases + ([_Phase("step-down", total, True, config.bits)] if down else [])


def _phase_checkpoints(path, fingerprint: str, phase: _Phase) -> Checkpoints:
    """Where and under which fingerprint a phase's state is saved (one file for every phase)."""
    return Checkpoints(path, f"{fingerprint} phase={phase.name}", CHECKPOINT_SECONDS)


def _resume(path, fingerprint: str, phases: list[_Phase], state: QatState) -> tuple[int, QatState]:
    """The phase to run first and its state: the latest phase whose checkpoint is at
    ``path``, else the first phase and ``state``."""
    for i in reversed(range(len(phases)) if path else ()):
        loaded = _phase_checkpoints(path, fingerprint, phases[i]).load(state)
        if loaded is not state:
            return i, loaded
    return 0, state


def _checkpoint_file(checkpoint, part: str):
    return None if checkpoint is None else f"{os.fspath(checkpoint)}.{part}.npz"


def checkpoint_files(checkpoint) -> list[str]:
    """The files :func:`compress` (and :func:`compress_to_rate`, whose second encode uses the
    prefix ``checkpoint.refined``) keeps under the prefix ``checkpoint`` while it runs."""
    return [_checkpoint_file(f"{os.fspath(checkpoint)}{again}", part)
            for again in ("", ".refined") for part in ("fit", "qat")]


def _enter_phase(state: QatState, phase: _Phase, opt_m, opt_q, config: CompressConfig) -> QatState:
    """The state a phase starts from. QAT starts from the warmed-up state with quantizers
    initialised on it and fresh optimizers for both groups; stepping down starts from the
    best QAT state re-quantized to the target depths, the Gaussians' optimizer kept.
    Quantizers stay labelled with the training depths (one compiled program for every
    phase); the phase's depths are ``levels`` (see :func:`_file_quantizers`)."""
    if phase.name == "qat":
        qs = config.quantizers_for(state.model, phase.bits)
        state = _restart(state, state.model, qs, opt_m, opt_q, fresh_model_optimizer=True)
        return state.replace(levels=q_lib.quantizer_levels(qs))
    if phase.name == "step-down":
        qs = q_lib.gaussian_quantizers_with_bits(state.best_quantizers, phase.bits)
        if config.sized_colors:  # the classes at the new covariance step
            qs = q_lib.with_color_classes(qs, codec.attributes(state.best_model)[1])
        state = _restart(state, state.best_model, q_lib.tagged_with_bits(qs, config.training_bits), opt_m, opt_q,
                         fresh_model_optimizer=False)
        return state.replace(levels=q_lib.quantizer_levels(qs))
    return state


def _file_quantizers(state: QatState, phase: _Phase) -> q_lib.GaussianQuantizers:
    """The best quantizers of a state that ended ``phase``, labelled with its depths."""
    return q_lib.tagged_with_bits(state.best_quantizers, phase.bits)


def _restart(state: QatState, model, qs, opt_m, opt_q, *, fresh_model_optimizer: bool) -> QatState:
    """Continues QAT from ``model`` with quantizers ``qs``: a fresh quantizer optimizer and
    best state (whose first candidate is the starting point itself)."""
    return state.replace(
        model=model, quantizers=qs, best_model=model, best_quantizers=qs, quantized=jnp.bool_(True),
        opt_model=opt_m.init(model.trainable()) if fresh_model_optimizer else state.opt_model,
        opt_quant=opt_q.init(q_lib.learned_quantizers(qs)), best_psnr=jnp.float32(-jnp.inf))


@dataclasses.dataclass
class CompressResult:
    blob: bytes
    image: np.ndarray
    psnr: float
    ms_ssim: float
    bpp: float
    num_gaussians: int
    encode_seconds: float
    num_carriers: int = 0  # primitives of the file that carry a carrier


def compress(image, fit_config: FitConfig, config: CompressConfig = CompressConfig(), *,
             max_bytes: int | None = None, progress: bool = False,
             checkpoint: str | os.PathLike | None = None) -> CompressResult:
    """Fits, quantizes and encodes ``image`` ((H, W, 3) in [0, 1]); see the module docstring.

    With ``max_bytes``, Gaussians are dropped until the file fits (:func:`encode_to_size`).
    With ``checkpoint`` (a path prefix), both training phases checkpoint to
    :func:`checkpoint_files` every minute and at phase ends, and a new call with the same
    image and settings resumes from them; the caller removes them when it is done."""
    colors = config.colors_for(fit_config)
    config = config.for_image(int(image.shape[0]), int(image.shape[1])).for_colors(colors).validate()
    start = time.perf_counter()
    target = jnp.asarray(image, jnp.float32)
    fit_config = config.fit_config_for(fit_config)
    fitter = Fitter(target, fit_config, progress=progress, checkpoint_path=_checkpoint_file(checkpoint, "fit"))
    model = codec.compact(fitter.run().best)
    if config.correlation:  # this project's pipeline (the reference's quantizes sizes as they are)
        model = bound_sizes(model)

    fingerprint = json.dumps({"fit": fit_config.as_dict(), "compress": dataclasses.asdict(config),
                              "image": fitter.image_digest}, sort_keys=True)
    state, last = run_qat(model, target, fit_config, config, fingerprint=fingerprint,
                          checkpoint_path=_checkpoint_file(checkpoint, "qat"), progress=progress)
    blob = encode_refined(model_codes(state.best_model, _file_quantizers(state, last)), image,
                          sweeps=config.refine_sweeps, max_bytes=max_bytes, coarsen=config.coarsen_to_fit,
                          progress=progress)
    decoded, data = decode_image(blob), bitstream.decode(blob)
    return CompressResult(
        blob=blob, image=decoded, psnr=float(metrics.psnr(decoded, image)),
        ms_ssim=float(metrics.ms_ssim(decoded, image)),
        bpp=len(blob) * 8.0 / (image.shape[0] * image.shape[1]),
        num_gaussians=int(data.codes.shape[0]), encode_seconds=time.perf_counter() - start,
        num_carriers=data.num_carriers)


def run_qat(model: model_lib.GaussianModel, target: jax.Array, fit_config: FitConfig, config: CompressConfig, *,
            fingerprint: str = "", checkpoint_path=None, progress: bool = False) -> tuple[QatState, _Phase]:
    """The compression phase after a fit of ``target`` ((H, W, 3)) to ``model`` (compacted):
    its warm-up, QAT and step-down (:func:`_phases`) run by one :class:`~gipp_jax.loop.FitLoop`
    with one compiled program and one progress bar. With ``checkpoint_path``, each phase's
    state is saved there under ``fingerprint`` and the phase, and resumed. Returns the final
    state and its phase."""
    total = config.phase_steps(fit_config)
    state, opt_m, opt_q, phases = qat_start(model, fit_config, config, total)
    program = qat_chunk_program(opt_m, opt_q, config.rate_weight)

    def chunk(capacity: Capacity, state: QatState, num_steps: int):
        new, usage = program(capacity, fit_config.chunk_steps, state, target, num_steps)
        return new, np.asarray(usage)

    loop = FitLoop(chunk, None, fit_config.chunk_steps)
    first, state = _resume(checkpoint_path, fingerprint, phases, state)
    bar = progress_bar(total, int(state.step)) if progress else None
    try:
        for i in range(first, len(phases)):
            phase = phases[i]
            loop.checkpoints = _phase_checkpoints(checkpoint_path, fingerprint, phase)
            loop.postfix = lambda s, name=phase.name: {"psnr": f"{float(s.last_psnr):.2f}", "phase": name}
            if i > first or int(state.step) == 0:
                state = _enter_phase(state, phase, opt_m, opt_q, config)
            usage = model_usage(state.model)
            if loop.capacity is None or not loop.capacity.holds(usage):  # else the compiled program is reused
                loop.capacity = Capacity.fit(*usage, headroom=2.0, backend=fit_config.backend)
            state = loop.run(state, int(state.step), phase.end, bar)
    finally:
        if bar is not None:
            bar.close()
    return state, phases[-1]


def encode_refined(data: bitstream.Encoded, image, *, sweeps: int, max_bytes: int | None = None,
                   coarsen: bool = False, progress: bool = False) -> bytes:
    """The file :func:`compress` writes of ``data``: its codes refined against ``image``
    ((H, W, 3) in [0, 1]; ``sweeps`` passes of :func:`~gipp_jax.refine.refine_codes`) and,
    with ``max_bytes``, made to fit (:func:`_pruned_to_fit`). With ``coarsen``, a file over
    the limit is also coded with coarser steps that fit (:func:`coarsened_to_fit`), refined
    again and made to fit the same way (the refinement may cost a few bytes more), and of
    the two files the one nearer ``image`` is kept: coarser steps cost less than fewer
    Gaussians where these are few, more where they are many (docs/studies/compression.md).
    ``progress`` shows the refinement's bar."""
    data = refine_codes(data, image, sweeps=sweeps, progress=progress)
    if max_bytes is None:
        return bitstream.encode(data)
    target = np.asarray(image, np.float32)
    blob = _pruned_to_fit(data, target, sweeps, max_bytes, progress)
    if coarsen and len(bitstream.encode(data)) > max_bytes:
        coarse = refine_codes(coarsened_to_fit(data, max_bytes), image, sweeps=sweeps, progress=progress)
        blob = min((blob, _pruned_to_fit(coarse, target, sweeps, max_bytes, progress)),
                   key=lambda b: _squared_error(b, target))
    return blob


def _squared_error(blob: bytes, target: np.ndarray) -> float:
    return float(np.sum(np.square(decode_image(blob) - target)))


def _pruned_to_fit(data: bitstream.Encoded, target: np.ndarray, sweeps: int, max_bytes: int,
                   progress: bool) -> bytes:
    """The file of refined ``data`` with Gaussians dropped until it fits
    (:func:`encode_to_size`), the rest refined once more without them and, where the
    refined codes cost a few bytes more, pruned to fit again; of the two files the one
    nearer ``target`` is kept."""
    blob = encode_to_size(data, target, max_bytes)
    pruned = bitstream.decode(blob)
    if sweeps and 0 < pruned.codes.shape[0] < data.codes.shape[0]:
        # The pruned file sits within a few bytes of the limit, which the refined codes
        # often pass; dropping a few more Gaussians keeps their refinement (0.4 dB on
        # kodim03 at 0.5 bpp, where discarding the refined file cost that).
        again = encode_to_size(refine_codes(pruned, target, sweeps=sweeps, progress=progress), target, max_bytes)
        blob = min((blob, again), key=lambda b: _squared_error(b, target))
    return blob


def bisect_least(lo, hi, make, fits, *, halvings: int | None = None):
    """``make(x)`` for the least ``x`` between ``lo`` (does not fit) and ``hi`` (fits) whose
    candidate ``fits``, by bisection: over the integers until ``hi - lo`` is 1, or with
    ``halvings``, that many halvings of a real interval. ``fits`` is assumed to hold from
    some ``x`` on. Returns the fitting candidate of the least ``x`` tried, or None."""
    best, tried = None, 0
    while (hi - lo > 1) if halvings is None else (tried < halvings):
        mid = (lo + hi) // 2 if halvings is None else 0.5 * (lo + hi)
        candidate = make(mid)
        if fits(candidate):
            hi, best = mid, candidate
        else:
            lo = mid
        tried += 1
    return best


def coarsened_to_fit(data: bitstream.Encoded, max_bytes: int) -> bitstream.Encoded:
    """``data`` coded with the finest uniformly coarser steps
    (:func:`~gipp_jax.codec.coarser_codes`, factors up to :data:`MAX_COARSENING`, bisected
    :data:`COARSENING_SEARCH` times) whose file fits ``max_bytes``, else the coarsest."""
    best = bisect_least(1.0, MAX_COARSENING, lambda factor: coarser_codes(data, factor),
                        lambda candidate: len(bitstream.encode(candidate)) <= max_bytes, halvings=COARSENING_SEARCH)
    return best if best is not None else coarser_codes(data, MAX_COARSENING)


def encode_to_size(data: bitstream.Encoded, target, max_bytes: int) -> bytes:
    """The file of as many of ``data``'s Gaussians as fit in ``max_bytes``, those whose
    removal costs the least squared error against ``target`` ((H, W, 3) in [0, 1]) dropped
    first. Costs are the decoded image's (:func:`gipp_jax.refine.removal_costs`), and they
    change as Gaussians go (two that overlap may each be spare, not both), so they are
    measured again after every :data:`PRUNE_ROUND` of the Gaussians dropped; the last round
    drops the fewest of the cheapest that make the file fit (a bisection over the count).
    Raises ValueError when not even an empty file fits."""
    from gipp_jax.refine import removal_costs

    blob = bitstream.encode(data)
    if len(blob) <= max_bytes:
        return blob
    empty = len(bitstream.encode(data.take(slice(0, 0))))
    if empty > max_bytes:
        raise ValueError(f"{max_bytes} bytes is less than an empty file ({empty} bytes)")
    target = np.asarray(target, np.float32)
    keep = np.arange(data.codes.shape[0])

    def file_of(rows: np.ndarray) -> bytes:
        return bitstream.encode(data.take(rows))

    while True:
        n = len(keep)
        per_gaussian = (len(blob) - empty) / n
        needed = math.ceil((len(blob) - max_bytes) / per_gaussian)
        cheapest = keep[np.argsort(removal_costs(data, target, keep), kind="stable")]
        round_size = max(1, math.ceil(PRUNE_ROUND * n))
        if needed > round_size:
            keep = np.setdiff1d(keep, cheapest[:round_size])
            blob = file_of(keep)
            continue
        # Dropping all n cheapest fits (at worst the empty file), none does not.
        best = bisect_least(0, n, lambda count: file_of(np.setdiff1d(keep, cheapest[:count])),
                            lambda candidate: len(candidate) <= max_bytes)
        return best if best is not None else file_of(keep[:0])


def compression_fit_config(method: str | None = None) -> FitConfig:
    """The representation fit ``gipp compress`` runs when nothing else is given: ``method``
    (default :data:`~gipp_jax.methods.DEFAULT_COMPRESS_METHOD`) for its
    :meth:`~gipp_jax.methods.Method.compression_fit_steps` of :data:`COMPRESS_ITERATIONS`."""
    config = FitConfig(method=method or methods_lib.DEFAULT_COMPRESS_METHOD)
    return dataclasses.replace(config, iterations=config.recipe.compression_fit_steps(COMPRESS_ITERATIONS))


def compress_to_rate(image, fit_config: FitConfig | None = None, config: CompressConfig | None = None, *,
                     bpp: float | None = None, psnr: float | None = None, num_gaussians: int | None = None,
                     bits: tuple[int, int, int] | None = None, plan=None, progress: bool = False,
                     checkpoint: str | os.PathLike | None = None):
    """Compresses ``image`` to a target rate (``bpp``, bits per pixel: the file is at most
    that large) or quality (``psnr``, dB). The Gaussian budget and the bit depths come from
    :mod:`gipp_jax.rate`, unless ``num_gaussians`` or ``bits`` fix them; everything else
    (method, steps) from ``fit_config`` (None: :func:`compression_fit_config`, what
    ``gipp compress`` runs) and ``config`` (None: the defaults).

    A ``bpp`` target is met by aiming above it and pruning to fit; a file that lands more
    than :data:`~gipp_jax.rate.TOLERANCE` below it (the table overestimated this image's
    bits per Gaussian) is encoded once more with the budget scaled by what was measured.
    A ``psnr`` file more than :data:`~gipp_jax.rate.PSNR_TOLERANCE_DB` off its target (how
    many Gaussians a quality takes depends on the image) is encoded once more with the
    budget moved along the table's slope, and the smaller of the files within the tolerance
    of the target or above it is kept (else the better one). Neither second encode happens
    when ``num_gaussians`` was given. ``plan``: the first encode's
    :class:`~gipp_jax.rate.RatePlan` when the caller made it already
    (:func:`~gipp_jax.rate.plan_for_target` of the same arguments, e.g. to show it first).
    Returns ``(CompressResult, RatePlan)``, the plan of the file returned."""
    from gipp_jax import rate

    fit_config = fit_config or compression_fit_config()
    config = config or CompressConfig()
    colors = config.colors_for(fit_config)
    config = config.for_colors(colors)
    height, width = int(image.shape[0]), int(image.shape[1])
    if plan is None:
        plan = rate.plan_for_target(height, width, fit_config.method_name, bpp=bpp, psnr=psnr,
                                    bits=bits, num_gaussians=num_gaussians, colors=colors, image=image)
    elif (bpp is None) == (psnr is None):
        raise ValueError("give exactly one of bpp and psnr")
    config = config.with_bits(plan.bits)

    def run(n: int, part: str) -> CompressResult:
        prefix = None if checkpoint is None else f"{checkpoint}{part}"
        return compress(image, dataclasses.replace(fit_config, num_gaussians=n), config,
                        max_bytes=plan.max_bytes, progress=progress, checkpoint=prefix)

    result = run(plan.num_gaussians, "")
    if (plan.max_bytes is not None and num_gaussians is None
            and len(result.blob) < (1.0 - rate.TOLERANCE) * plan.max_bytes):
        per_gaussian = len(result.blob) / max(fit_config.recipe.budget_units(result.num_gaussians,
                                                                             result.num_carriers), 1)
        larger = max(plan.num_gaussians + 1, int(plan.overshoot * plan.max_bytes / per_gaussian))
        plan = dataclasses.replace(plan, num_gaussians=larger)
        result = run(larger, ".refined")
    elif (psnr is not None and num_gaussians is None
          and abs(result.psnr - psnr) > rate.PSNR_TOLERANCE_DB):
        budget = plan.budget_for_psnr(psnr, result.psnr)
        if budget != plan.num_gaussians:
            second = dataclasses.replace(plan, num_gaussians=budget)
            tries = [(result, plan), (run(budget, ".refined"), second)]
            good = [t for t in tries if t[0].psnr >= psnr - rate.PSNR_TOLERANCE_DB]
            result, plan = (min(good, key=lambda t: len(t[0].blob)) if good
                            else max(tries, key=lambda t: t[0].psnr))
    return result, plan
