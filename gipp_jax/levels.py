"""Resolution levels of a coarse-to-fine fit.

A fit may run its first steps on the image downscaled ``k`` times per side (a *level*), where a
step costs a fraction of a full-size one, and carry the Gaussians to the next, finer level
by the change of coordinates: the representation is continuous, so the same Gaussians
describe the same image at any size. Level ``k``'s pixel ``j`` is the mean of full-size
pixels ``k j .. k j + k - 1`` (the image edge-padded to whole blocks), so its center sits
at full-size ``x = k j + (k - 1) / 2``.

:class:`Level` says where a level starts; :func:`downscale` makes its image;
:func:`magnify_state` carries a training state from one level to a finer one.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import model as model_lib
from gipp_jax import parameterization as param_lib


@dataclasses.dataclass(frozen=True)
class Level:
    """From step ``start`` on, a fit runs on its image downscaled ``factor`` x per side."""

    start: int
    factor: int


def level_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """``(height, width)`` of a ``height x width`` image at level ``factor``."""
    return -(-int(height) // factor), -(-int(width) // factor)


def level_at(levels: list[Level], step: int) -> Level:
    """The level a fit is on after ``step`` steps: the last one started by then."""
    return [lv for lv in levels if lv.start <= step][-1]


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) float image -> (ceil(H / k), ceil(W / k), C) means of k x k blocks, the
    image edge-padded to whole blocks (``factor`` 1: the image itself)."""
    image = np.asarray(image, np.float32)
    if factor == 1:
        return image
    h, w = level_size(image.shape[0], image.shape[1], factor)
    padded = np.pad(image, ((0, h * factor - image.shape[0]), (0, w * factor - image.shape[1]), (0, 0)),
                    mode="edge")
    return padded.reshape(h, factor, w, factor, -1).mean(axis=(1, 3)).astype(np.float32)


def magnify_model(model: model_lib.GaussianModel, ratio: int, height: int,
                  width: int) -> model_lib.GaussianModel:
    """``model`` on a grid ``ratio`` x finer, ``height x width``: centers at
    ``ratio x + (ratio - 1) / 2``, covariances (and filter variances) times ``ratio^2``,
    colors as they are. Log-scale, Cholesky and direct parameters map exactly; ``rs``
    through the covariance. Works on batched models (leading axes) too."""
    r = float(ratio)
    pixels = model_lib.pixel_means(model) * r + 0.5 * (r - 1.0)
    new = model.replace(height=int(height), width=int(width))
    raw = model.cov_params
    if model.parameterization == "log-rs":
        cov_params = raw + jnp.array([math.log(r), math.log(r), 0.0], raw.dtype)
    elif model.parameterization == "direct":
        cov_params = raw * r * r
    elif model.parameterization == "cholesky":
        offset = jnp.array([0.5, 0.0, 0.5], raw.dtype)
        cov_params = (raw + offset) * r - offset
    else:
        cov = param_lib.covariance(model.parameterization, raw.reshape(-1, 3)) * r * r
        cov_params = param_lib.from_covariance(model.parameterization, cov).reshape(raw.shape)
    # A carrier's frequency is in cycles per pixel: 1 / ratio of itself on the finer grid.
    carriers = None if model.carriers is None else model.carriers * jnp.array([1.0 / r, 1.0 / r, 1.0])
    return new.replace(means=model_lib.raw_means(new, pixels), cov_params=cov_params,
                       filter_var=model.filter_var * r * r, carriers=carriers)


def magnify_moments(opt_state, ratio: int):
    """Adam's moments (``mu``, ``nu``) of the centers as they are in coordinates ``ratio`` x
    finer: a center's gradient there is ``1 / ratio`` of what it was, so its first moment
    scales by ``1 / ratio`` and its second by ``1 / ratio^2``, and the next updates are
    neither damped nor boosted by moments of the old scale. Other entries are unchanged
    (a log-scale's gradient does not depend on the unit; raw covariances of other schemes
    keep their moments, which Adam normalises)."""
    def scale(path, x):
        keys = [getattr(k, "name", getattr(k, "key", None)) for k in path]
        if "means" not in keys:
            return x
        if "mu" in keys:
            return x / ratio
        if "nu" in keys:
            return x / (ratio * ratio)
        return x

    return jax.tree_util.tree_map_with_path(scale, opt_state)


def magnify_state(state, ratio: int, height: int, width: int):
    """A :class:`~gipp_jax.train.TrainState` carried to a level ``ratio`` x finer: model and
    Adam moments mapped, the best state restarted (PSNRs of two levels do not compare)."""
    model = magnify_model(state.model, ratio, height, width)
    return state.replace(model=model, opt_state=magnify_moments(state.opt_state, ratio), best=model,
                         best_psnr=jnp.full_like(state.best_psnr, -jnp.inf))
