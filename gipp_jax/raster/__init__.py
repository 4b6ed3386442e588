"""Rendering: a sum of 2D Gaussians over an image.

A primitive may carry a cosine carrier ``(kx, ky, phi)`` (cycles per pixel, radians): its
weight is then the Gaussian envelope's times ``cos(2 pi k.d + phi)``, and it draws texture;
``k = 0, phi = 0`` is the plain Gaussian. Every function here takes ``carriers=None``
(plain Gaussians, traced without a carrier) or an (N, 3) array; binning is the envelope's.

:func:`render_gaussians` is the one entry point; the rasterizer behind it (``backend``) is
an implementation detail. :func:`render_with_stats` is the jit-friendly form used by the
training loop: it takes a static pair capacity and reports how many pairs were needed,
so that an overflow can be detected and the work re-run with a larger capacity.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import model as model_lib
from gipp_jax.raster import binning, pallas_gpu, xla
from gipp_jax.raster.binning import (
    DEFAULT_CHUNK_SIZE,
    bin_gaussians,
    covariance_to_triple,
    footprint,
    round_capacity,
)
from gipp_jax.raster.dense import render_dense

try:  # public in jax 0.10; kept private-import fallback for later releases
    from jax.core import Tracer as _Tracer
except ImportError:  # pragma: no cover
    from jax._src.core import Tracer as _Tracer

BACKENDS = ("auto", "xla", "pallas")
# The least chunk buffer of a render sized from its scene (render_triples).
MIN_RENDER_CHUNKS = 256

__all__ = [
    "BACKENDS",
    "budget_capacity",
    "Capacity",
    "CapacityOverflowError",
    "KernelFallbackWarning",
    "KernelUnsupportedError",
    "kernel_support",
    "check_kernels",
    "kernel_check_case",
    "count_pairs",
    "measure_usage",
    "model_attributes",
    "model_usage",
    "padded_rows",
    "render_dense",
    "render",
    "render_gaussians",
    "render_model",
    "render_at_capacity",
    "least_squares_colors",
    "linear_in_colors",
    "render_triples",
    "resolve_backend",
    "render_with_stats",
    "scale_carriers",
    "scale_gaussians",
]


class CapacityOverflowError(RuntimeError):
    """A render needed more (tile, Gaussian) pairs than its static capacity holds."""


class KernelFallbackWarning(RuntimeWarning):
    """The Mosaic GPU kernels failed their check on this device; XLA renders instead."""


class KernelUnsupportedError(ValueError):
    """``backend="pallas"`` on a GPU the Mosaic GPU kernels cannot run on."""


_UNCHECKED = object()
_kernel_problem: object = _UNCHECKED  # None once the kernels passed, else why they failed


def _on_cuda() -> bool:
    return jax.default_backend() == "gpu"


def resolve_backend(backend: str = "auto") -> str:
    """The rasterizer ``backend`` stands for here: ``"xla"`` or ``"pallas"`` (host-side).

    ``"xla"`` and ``"pallas"`` are kept as they are (a forced ``"pallas"`` reports any
    error of the kernels; on a GPU they cannot run on, :func:`kernel_support`, it raises
    :class:`KernelUnsupportedError`). ``"auto"`` is the Mosaic GPU kernels on CUDA once
    they have passed :func:`check_kernels` on this device, checked once per process; on a
    GPU they do not support, or if they fail to compile or disagree with XLA, one
    :class:`KernelFallbackWarning` says why and XLA renders instead. Elsewhere ``"auto"``
    is XLA.
    """
    global _kernel_problem
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "pallas" and _on_cuda() and (problem := kernel_support(jax.devices()[0])):
        raise KernelUnsupportedError(f"backend pallas: {problem}")
    if backend != "auto":
        return backend
    if not _on_cuda():
        return "xla"
    if _kernel_problem is _UNCHECKED:
        _kernel_problem = kernel_support(jax.devices()[0]) or check_kernels()
        if _kernel_problem is not None:
            warnings.warn(f"the Mosaic GPU kernels failed their check on this device ({_kernel_problem}); "
                          "rendering with XLA (--backend pallas forces them)", KernelFallbackWarning, stacklevel=2)
    return "xla" if _kernel_problem is not None else "pallas"


# The kernels run one warpgroup per tile: Hopper (compute capability 9.0) and newer.
MIN_COMPUTE_CAPABILITY = 9.0


def kernel_support(device) -> str | None:
    """None where the Mosaic GPU kernels may run on ``device`` (a CUDA GPU with warpgroups,
    compute capability 9.0 or newer, or one that does not say), else why not, in one line.
    They are never tried on an older GPU: Mosaic GPU's compiler aborts the process there
    (an A100: "LLVM ERROR: Cannot select: intrinsic %llvm.nvvm.elect.sync")."""
    capability = getattr(device, "compute_capability", None)
    try:
        if float(capability) >= MIN_COMPUTE_CAPABILITY:
            return None
    except (TypeError, ValueError):
        return None
    return (f"the Mosaic GPU kernels need compute capability {MIN_COMPUTE_CAPABILITY:g} or newer (warpgroups); "
            f"this {getattr(device, 'device_kind', 'GPU')} has {capability}")


def check_kernels(tolerance: float = 1e-3) -> str | None:
    """Renders a small scene (40 Gaussians over a 40x56 image, some straddling the border),
    plain and with carriers, with the Mosaic GPU kernels and with XLA, forward and the
    gradients of every attribute. Returns None when they agree within ``tolerance`` (relative to
    ``max(1, largest value)``), else one line saying what failed."""
    image_and_grads, args = kernel_check_case()
    try:
        got = jax.block_until_ready(jax.jit(functools.partial(image_and_grads, "pallas"))(*args))
    except Exception as err:  # noqa: BLE001 - any failure to compile or run is the answer
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}"[:300]
    want = jax.jit(functools.partial(image_and_grads, "xla"))(*args)
    for name, a, b in zip(("image", "means gradient", "covariance gradient", "color gradient",
                           "carrier gradient"), got, want):
        err = float(jnp.max(jnp.abs(a - b))) / max(1.0, float(jnp.max(jnp.abs(b))))
        if not err <= tolerance:  # NaN fails too
            return f"{name} differs from XLA's by {err:.3g} (tolerance {tolerance:g})"
    return None


def kernel_check_case():
    """The case :func:`check_kernels` renders: ``(fn, args)``, ``fn(backend, *args)`` the
    image and the gradients of means, covariances, colors and carriers; ``args`` its four
    arrays (``backend`` static)."""
    rng = np.random.default_rng(0)
    h, w, n = 40, 56, 40
    means = jnp.asarray(rng.uniform([-4.0, -4.0], [w + 4.0, h + 4.0], (n, 2)), jnp.float32)
    l11, l22, l21 = rng.uniform(0.8, 4.0, n), rng.uniform(0.8, 4.0, n), rng.uniform(-2.0, 2.0, n)
    cov3 = jnp.asarray(np.stack([l11 ** 2, l11 * l21, l21 ** 2 + l22 ** 2], -1), jnp.float32)
    colors = jnp.asarray(rng.uniform(-1.0, 1.0, (n, 3)), jnp.float32)
    carriers = jnp.asarray(np.concatenate([rng.uniform(-0.4, 0.4, (n, 2)), rng.uniform(-3, 3, (n, 1))], 1),
                           jnp.float32)
    weights = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)
    pairs, chunks = measure_usage(means, cov3, h, w)

    def image_and_grads(backend, *args):
        def loss(m, c, k, f):
            plain = render_with_stats(m, c, k, h, w, int(pairs), int(chunks), backend=backend)[0]
            textured = render_with_stats(m, c, k, h, w, int(pairs), int(chunks), backend=backend,
                                         carriers=f)[0]
            return jnp.sum(weights * (jnp.sin(plain) + jnp.sin(textured))), plain + textured
        grads, image = jax.grad(loss, (0, 1, 2, 3), has_aux=True)(*args)
        return (image,) + tuple(grads)

    return image_and_grads, (means, cov3, colors, carriers)


def render_with_stats(means: jax.Array, cov3: jax.Array, colors: jax.Array, height: int,
                      width: int, pair_capacity: int, chunk_capacity: int | None = None, *,
                      backend: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
                      carriers: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Renders and reports the pair count; traceable, differentiable w.r.t. the arrays.

    Args:
      means: (N, 2) centers (x, y) in pixels.
      cov3: (N, 3) covariances ``(a, b, c)`` = ``[[a, b], [b, c]]`` in pixels^2.
      colors: (N, K) colors.
      height, width, pair_capacity, chunk_capacity, chunk_size: static ints; see
        :func:`gipp_jax.raster.binning.bin_gaussians`.
      carriers: None or (N, 3) cosine carriers ``(kx, ky, phi)``.
    Returns:
      ``(image, usage)``: the (height, width, K) unclamped image and an int32 array
      ``[num_pairs, num_chunks]`` of what the image needed. The image is complete iff
      ``num_pairs <= pair_capacity`` and ``num_chunks <= chunk_capacity``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose from {BACKENDS}")
    fp, bins = _binned(means, cov3, height, width, pair_capacity, chunk_capacity, chunk_size)
    image = _rasterize(means, fp.precisions, colors, bins, height, width, backend, carriers)
    return image, bins.usage()


def _binned(means, cov3, height, width, pair_capacity, chunk_capacity, chunk_size=DEFAULT_CHUNK_SIZE):
    """The footprints and tile bins of a render (no gradient flows through the binning;
    the precisions carry the covariances' gradients)."""
    fp = footprint(jax.lax.stop_gradient(means), cov3, height, width)
    return fp, bin_gaussians(jax.lax.stop_gradient(fp), height, width, pair_capacity, chunk_capacity, chunk_size)


def _rasterize(means, precisions, colors, bins, height, width, backend, carriers=None):
    """The image of binned Gaussians (with ``carriers``, if not None) by the rasterizer
    ``backend`` stands for."""
    args = (means, precisions, colors, bins)
    if backend == "xla":
        return xla.rasterize(*args, height, width, carriers)
    if backend == "pallas":
        # Off a CUDA host, compiled or interpreted by the platform the program is lowered for
        # (so a program lowered here for a GPU holds the compiled kernels); on a CUDA host,
        # compiled: the interpreter's ordered effect would bar programs over several GPUs.
        return pallas_gpu.rasterize(*args, height, width, False if _on_cuda() else None, carriers)
    return jax.lax.platform_dependent(
        *args, carriers,
        cuda=lambda m, p, c, b, f: pallas_gpu.rasterize(m, p, c, b, height, width, False, f),
        default=lambda m, p, c, b, f: xla.rasterize(m, p, c, b, height, width, f))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _count_pairs(means, cov3, height, width):
    return binning.count_pairs(footprint(means, cov3, height, width), height, width)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _count_usage(means, cov3, height, width, pair_capacity, chunk_size):
    bins = bin_gaussians(footprint(means, cov3, height, width), height, width, pair_capacity, 1, chunk_size)
    return bins.usage()


def measure_usage(means: jax.Array, cov3: jax.Array, height: int, width: int,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Exact ``[num_pairs, num_chunks]`` the renderer needs for concrete Gaussians
    (host-side): the buffer sizes :func:`render_with_stats` takes, before any headroom.

    Args:
      means: (N, 2) centers in pixels; cov3: (N, 3) covariances ``(a, b, c)`` in pixels^2.
    Returns: (2,) int64.
    """
    means, cov3 = padded_rows(means, cov3)
    pairs = int(_count_pairs(means, cov3, int(height), int(width)))
    capacity = round_capacity(pairs, headroom=1.0)
    return np.asarray(_count_usage(means, cov3, int(height), int(width), capacity, int(chunk_size)), np.int64)


def count_pairs(means: jax.Array, covariances: jax.Array, height: int, width: int) -> int:
    """Exact pair capacity the renderer needs for concrete inputs (host-side)."""
    return _count_triple_pairs(means, _host_triples(covariances), height, width)


def _count_triple_pairs(means, cov3, height: int, width: int) -> int:
    """:func:`count_pairs` for (N, 3) covariances ``(a, b, c)``."""
    return int(_count_pairs(*padded_rows(means, cov3), int(height), int(width)))


def _host_triples(covariances) -> np.ndarray:
    """:func:`~gipp_jax.raster.binning.covariance_to_triple` in NumPy (no compile per N)."""
    c = np.asarray(covariances, np.float32)
    return np.stack([c[:, 0, 0], 0.5 * (c[:, 0, 1] + c[:, 1, 0]), c[:, 1, 1]], axis=-1)


def padded_rows(*arrays) -> tuple[np.ndarray, ...]:
    """Concrete per-Gaussian arrays ((N, ...) each) as NumPy arrays (floats as float32)
    padded with zero rows to a bucket of :func:`~gipp_jax.raster.binning.round_capacity`
    (at least 64).

    A zero covariance is culled (it reaches no tile), so padded Gaussians change no image and
    no count; host-side renders and counts of N and N + 1 Gaussians, as a decoder, a pruning
    loop or a growing fit makes, then share one compiled program."""
    arrays = [np.asarray(x) for x in arrays]
    arrays = [x.astype(np.float32) if x.dtype.kind == "f" else x for x in arrays]
    n = arrays[0].shape[0]
    pad = round_capacity(n, headroom=1.0, minimum=64) - n
    return tuple(np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) for x in arrays)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _render_jit(means, cov3, colors, height, width, pair_capacity, chunk_capacity, backend, chunk_size,
                carriers=None):
    return render_with_stats(means, cov3, colors, height, width, pair_capacity, chunk_capacity,
                             backend=backend, chunk_size=chunk_size, carriers=carriers)


def _check_shapes(means, covariances, colors, height, width, carriers=None):
    n = means.shape[0] if means.ndim == 2 else -1
    if means.ndim != 2 or means.shape[1] != 2:
        raise ValueError(f"means must have shape (N, 2), got {means.shape}")
    if covariances.shape != (n, 2, 2):
        raise ValueError(f"covariances must have shape ({n}, 2, 2), got {covariances.shape}")
    if colors.ndim != 2 or colors.shape[0] != n:
        raise ValueError(f"colors must have shape ({n}, K), got {colors.shape}")
    if carriers is not None and carriers.shape != (n, 3):
        raise ValueError(f"carriers must have shape ({n}, 3), got {carriers.shape}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")


def render_gaussians(means: jax.Array, covariances: jax.Array, colors: jax.Array,
                     height: int, width: int, *, backend: str = "auto",
                     pair_capacity: int | None = None,
                     chunk_size: int = DEFAULT_CHUNK_SIZE,
                     carriers: jax.Array | None = None) -> jax.Array:
    """Renders ``C(x) = sum_i colors_i exp(-0.5 d^T Sigma_i^-1 d)``, ``d = x - means_i``
    (with carriers, each term times ``cos(2 pi k_i.d + phi_i)``).

    Every Gaussian that touches a tile is rendered; there is no per-tile limit.

    Args:
      means: (N, 2) float centers (x, y) in pixels; pixel (row i, column j) is at x=j, y=i.
      covariances: (N, 2, 2) float covariance matrices in pixels^2.
      colors: (N, K) float colors (K = 3 for RGB).
      height, width: output size in pixels.
      backend: ``"auto"`` (the Mosaic GPU kernels on CUDA once they passed their check on the
        device, XLA elsewhere: :func:`resolve_backend`), ``"xla"`` or ``"pallas"`` (the
        Mosaic GPU kernels; interpreted, and slow, off CUDA).
      pair_capacity: static number of (tile, Gaussian) pairs to allocate. ``None`` sizes it
        exactly from concrete inputs; under a trace (inside ``jax.jit``) it defaults to a
        heuristic, and an overflow makes the image NaN rather than silently incomplete.
      chunk_size: Gaussians evaluated together per tile (a tuning knob).
      carriers: optional (N, 3) float cosine carriers ``(kx, ky, phi)``: frequency in
        cycles per pixel (x, y) and phase in radians.
    Returns:
      (height, width, K) float32 image, NOT clamped. Differentiable w.r.t. means,
      covariances, colors and carriers.
    """
    traced = any(isinstance(x, _Tracer) for x in (means, covariances, colors, carriers))
    if not traced:  # host-side: sized exactly, in buckets of rows (see render_triples)
        means, covariances, colors = (np.asarray(x, np.float32) for x in (means, covariances, colors))
        carriers = None if carriers is None else np.asarray(carriers, np.float32)
        _check_shapes(means, covariances, colors, height, width, carriers)
        return render_triples(means, _host_triples(covariances), colors, height, width, backend=backend,
                              pair_capacity=pair_capacity, chunk_size=chunk_size, carriers=carriers)
    means = jnp.asarray(means, jnp.float32)
    covariances = jnp.asarray(covariances, jnp.float32)
    colors = jnp.asarray(colors, jnp.float32)
    carriers = None if carriers is None else jnp.asarray(carriers, jnp.float32)
    _check_shapes(means, covariances, colors, height, width, carriers)
    height, width = int(height), int(width)
    if means.shape[0] == 0:
        return jnp.zeros((height, width, colors.shape[1]), jnp.float32)
    if pair_capacity is None:  # under a trace, a heuristic; the worst case of chunks for it
        pair_capacity = round_capacity(8 * means.shape[0], headroom=1.0)
    image, (num_pairs, _) = _render_jit(means, covariance_to_triple(covariances), colors, height, width,
                                        int(pair_capacity), None, backend, int(chunk_size), carriers)
    return jnp.where(num_pairs <= pair_capacity, image, jnp.nan)


def render_triples(means, cov3, colors, height: int, width: int, *, backend: str = "auto",
                   pair_capacity: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   carriers=None) -> jax.Array:
    """:func:`render_gaussians` of concrete Gaussians given by covariance triples, host-side.

    Args:
      means: (N, 2), cov3: (N, 3) ``(a, b, c)``, colors: (N, K), carriers: None or (N, 3);
        arrays, not tracers.
    Returns: the unclamped (height, width, K) float32 image.

    The rows are padded (:func:`padded_rows`): renders of N and N + 1 Gaussians share one
    compiled program, and the image is the same as without padding.
    """
    height, width = int(height), int(width)
    if np.shape(means)[0] == 0:
        return jnp.zeros((height, width, np.shape(colors)[1]), jnp.float32)
    if carriers is None:
        means, cov3, colors = padded_rows(means, cov3, colors)
    else:
        means, cov3, colors, carriers = padded_rows(means, cov3, colors, carriers)
    backend = resolve_backend(backend)
    pairs, chunks = measure_usage(means, cov3, height, width, chunk_size)
    if pair_capacity is None:
        pair_capacity = round_capacity(int(pairs), headroom=1.0)
    # At least MIN_RENDER_CHUNKS: small scenes then share one compiled program per image
    # size (a few hundred spare chunks cost about a millisecond).
    chunk_capacity = round_capacity(int(chunks), headroom=1.0, minimum=MIN_RENDER_CHUNKS)
    image, (num_pairs, _) = _render_jit(means, cov3, colors, height, width, int(pair_capacity),
                                        chunk_capacity, backend, int(chunk_size), carriers)
    if int(num_pairs) > pair_capacity:
        raise CapacityOverflowError(
            f"render needed {int(num_pairs)} tile/Gaussian pairs but pair_capacity is "
            f"{pair_capacity}; pass pair_capacity=None to size it automatically")
    return image


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Static renderer settings of a compiled fit: buffer sizes (see
    :func:`gipp_jax.raster.binning.bin_gaussians`) and the rasterizer (``"auto"``: the
    Mosaic GPU kernels on CUDA, XLA elsewhere; ``"xla"`` or ``"pallas"`` to force one)."""

    pairs: int
    chunks: int
    backend: str = "auto"

    @staticmethod
    def fit(num_pairs: int, num_chunks: int, headroom: float = 1.5, backend: str = "auto") -> Capacity:
        """Buffers for a measured usage with ``headroom``, and the rasterizer ``backend``
        stands for (:func:`resolve_backend`: ``"auto"`` is decided here, host-side)."""
        def up(v: int) -> int:  # to a multiple of 1/16 of a power of two: few distinct shapes
            v = max(256, int(math.ceil(v * headroom)))
            step = max(1, (1 << (v.bit_length() - 1)) // 16)
            return -(-v // step) * step
        return Capacity(up(num_pairs), up(num_chunks), resolve_backend(backend))

    def holds(self, usage: np.ndarray) -> bool:
        return int(usage[0]) <= self.pairs and int(usage[1]) <= self.chunks

    def grown(self, usage: np.ndarray) -> Capacity:
        """A capacity that holds ``usage`` (``[pairs, chunks]``) with headroom, for the
        recompile an overflow forces anyway: the pair buffer never shrinks, the chunk buffer
        (the rasterizers' work) is sized from what was measured, which may be less than now:
        as Gaussians spread, their boxes grow faster than the tiles they reach."""
        return Capacity.fit(max(int(usage[0]), self.pairs), int(usage[1]), backend=self.backend)


def model_usage(model: model_lib.GaussianModel, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Exact ``[num_pairs, num_chunks]`` the renderer needs for ``model`` (host-side)."""
    return measure_usage(*model_attributes(model)[:2], model.height, model.width, chunk_size)


def budget_capacity(model: model_lib.GaussianModel, backend: str = "auto") -> Capacity:
    """Render buffers for ``model``'s whole budget (every row drawn, the free rows as they
    are: a fit gives them the size growth will) with room for the Gaussians to spread
    (about 1.7x more tile pairs by the end of a typical run): what a fit compiles with, once.

    The chunk buffer is the most the pair buffer can fill (:func:`~gipp_jax.raster.binning.max_chunks`),
    so only the pairs are counted (the chunks would need a binning program of their own to
    compile): the work follows the pairs and chunks in use, not these buffers."""
    means, cov3 = model_attributes(model.replace(active=jnp.ones_like(model.active)))[:2]
    pairs = _count_triple_pairs(means, cov3, model.height, model.width)
    capacity = Capacity.fit(pairs, 0, headroom=2.0, backend=backend)
    return dataclasses.replace(capacity, chunks=binning.max_chunks(capacity.pairs, model.height, model.width,
                                                                   DEFAULT_CHUNK_SIZE))


@jax.jit
def model_attributes(model: model_lib.GaussianModel) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What the renderer draws of ``model`` (one program): (N, 2) pixel centers, (N, 3)
    filtered covariances ``(a, b, c)`` and (N, 3) colors in [0, 1], inactive rows zero."""
    return (model_lib.pixel_means(model), model_lib.filtered_covariance(model),
            model_lib.activated_colors(model))


def render_model(model: model_lib.GaussianModel, capacity: Capacity) -> tuple[jax.Array, jax.Array]:
    """Unclamped (H, W, 3) render of ``model`` at its own size, and the renderer usage;
    traceable (the capacity is static)."""
    return render_with_stats(model_lib.pixel_means(model), model_lib.filtered_covariance(model),
                             model_lib.activated_colors(model), model.height, model.width,
                             capacity.pairs, capacity.chunks, backend=capacity.backend,
                             carriers=model_lib.active_carriers(model))


def linear_in_colors(model: model_lib.GaussianModel, capacity: Capacity):
    """``(forward, adjoint)``: the render of ``model`` as the linear map of its (M, 3) raw
    colors to the (H, W, 3) unclamped image (identity color activation; inactive rows draw
    nothing), and its adjoint, (H, W, 3) -> (M, 3). The Gaussians are binned once, here,
    for every application of either (a least-squares solve applies them many times).
    Traceable; ``capacity`` static."""
    forward, adjoint, _ = _linear_in_colors(model, capacity)
    return forward, adjoint


def _linear_in_colors(model, capacity):
    """:func:`linear_in_colors` and the usage ``[pairs, chunks]`` of its binning."""
    height, width = model.height, model.width
    means, cov3 = model_lib.pixel_means(model), model_lib.filtered_covariance(model)
    fp, bins = _binned(means, cov3, height, width, capacity.pairs, capacity.chunks)
    drawn = model.active[:, None]

    carriers = model_lib.active_carriers(model)

    def forward(colors):
        return _rasterize(means, fp.precisions, jnp.where(drawn, colors, 0.0), bins, height, width,
                          capacity.backend, carriers)

    _, transpose = jax.vjp(forward, jnp.zeros_like(model.colors))
    return forward, lambda image: transpose(image)[0], bins.usage()


def render_at_capacity(capacity: Capacity, model: model_lib.GaussianModel) -> tuple[jax.Array, jax.Array]:
    """:func:`render_model` in one compiled program per capacity (and model layout): a
    fit's growth events and final render share it with its color solve
    (:func:`least_squares_colors`; renders sized exactly compiled anew whenever a size fell
    in a new bucket of rows, 0.5 s each at full size). Returns the unclamped (H, W, 3)
    image and the usage ``[pairs, chunks]``."""
    target = jnp.zeros((model.height, model.width, 3), jnp.float32)
    image, usage, _ = _render_and_solve(capacity, model, target, jnp.int32(0))
    return image, usage


def least_squares_colors(model: model_lib.GaussianModel, image: jax.Array, steps: int,
                         capacity: Capacity) -> jax.Array:
    """The (M, 3) raw colors whose render of ``model``'s geometry (identity activation) is
    closest to ``image`` ((H, W, 3)) in the L2 sense: ``steps`` iterations of CGLS from zero
    through the renderer's linear map (:func:`linear_in_colors`, binned once), clipped to
    [-1, 2] against rows the image barely constrains; inactive rows zero. Compiled once per
    capacity and model layout, in the program :func:`render_at_capacity` renders with."""
    return _render_and_solve(capacity, model, jnp.asarray(image, jnp.float32), jnp.int32(steps))[2]


@functools.partial(jax.jit, static_argnums=0)
def _render_and_solve(capacity, model, target, steps):
    """``(image, usage, colors)``: :func:`render_model`'s render and usage, and the CGLS
    solution of :func:`least_squares_colors` for ``target`` after ``steps`` iterations
    (zero when ``steps`` is 0, and then not computed). One program for both: a fit's
    renders and its color solve bin the same Gaussians in the same buffers, and compiling
    them apart cost as much again."""
    forward, adjoint, usage = _linear_in_colors(model, capacity)
    image = forward(model_lib.activated_colors(model))

    def cgls():
        x = jnp.zeros_like(model.colors)
        r = target - forward(x)
        s = adjoint(r)

        def body(_, carry):
            x, r, p, gamma = carry
            q = forward(p)
            alpha = gamma / jnp.maximum(jnp.vdot(q, q), 1e-30)
            x, r = x + alpha * p, r - alpha * q
            s = adjoint(r)
            gamma_new = jnp.vdot(s, s)
            return x, r, s + gamma_new / jnp.maximum(gamma, 1e-30) * p, gamma_new

        x, *_ = jax.lax.fori_loop(0, steps, body, (x, r, s, jnp.vdot(s, s)))
        return jnp.clip(x, -1.0, 2.0)

    colors = jax.lax.cond(steps > 0, cgls, lambda: jnp.zeros_like(model.colors))
    return image, usage, colors


def scale_gaussians(means: jax.Array, cov3: jax.Array, scale_x: float, scale_y: float):
    """Maps Gaussians to an image resized by ``(scale_x, scale_y)``: the representation is
    continuous, so resizing is a change of coordinates. Returns ``(means, cov3)``."""
    s = np.array([scale_x, scale_y], np.float32)  # NumPy in, NumPy out: no compile per N
    cov_scale = np.array([scale_x * scale_x, scale_x * scale_y, scale_y * scale_y], np.float32)
    return means * s, cov3 * cov_scale


def scale_carriers(carriers, scale_x: float, scale_y: float):
    """(N, 3) carriers on an image resized by ``(scale_x, scale_y)`` (as
    :func:`scale_gaussians`): offsets grow by the scale, so frequencies shrink by it; the
    phase stays. None stays None."""
    if carriers is None:
        return None
    return np.asarray(carriers, np.float32) * np.array([1.0 / scale_x, 1.0 / scale_y, 1.0], np.float32)


def render(model, height: int | None = None, width: int | None = None, *,
           backend: str = "auto") -> jax.Array:
    """Renders a :class:`~gipp_jax.model.GaussianModel`, clamped to [0, 1].

    Args:
      model: a fitted model.
      height, width: output size; default the model's own. Another size renders the same
        continuous image resampled (e.g. twice the size for 2x upscaling).
    Returns:
      (height, width, 3) float32 in [0, 1].
    """
    height = model.height if height is None else int(height)
    width = model.width if width is None else int(width)
    means, cov3, colors = (np.asarray(x) for x in model_attributes(model))
    carriers = model_lib.active_carriers(model)
    sx, sy = width / model.width, height / model.height
    means, cov3 = scale_gaussians(means, cov3, sx, sy)
    image = render_triples(means, cov3, colors, height, width, backend=backend,
                           carriers=scale_carriers(carriers, sx, sy))
    return jnp.clip(image, 0.0, 1.0)
