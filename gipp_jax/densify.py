"""GaussianImage++'s density control over fixed-budget buffers.

* **Pruning** (:func:`prune`, pure and jittable; it runs inside the compiled training
  chunk): rows whose rendered (filtered) covariance is not positive definite are freed and
  their Adam moments cleared.
* **Growth** (:func:`grow`, host-side, between compiled chunks): new Gaussians are written
  into free rows at the pixels of highest L1-over-RGB distortion; their Adam moments are
  cleared. Neither changes a shape, so the training step never recompiles.

Counts follow the reference code by default (``k = min(max_growth, M - N_t)``, the last
growth event filling the budget) or the paper (``k = (M - N_t) / 2``, the last event also
filling the budget).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import model as model_lib

GROWTH_RULES = ("code", "paper")
NEW_COLORS = ("target", "zero")


def is_positive_definite(cov3: jax.Array) -> jax.Array:
    """(N, 3) ``(a, b, c)`` -> (N,) bool: ``a > 0``, ``c > 0`` and ``a c - b^2 > 0``."""
    a, b, c = cov3[..., 0], cov3[..., 1], cov3[..., 2]
    return (a > 0) & (c > 0) & (a * c - b * b > 0)


def clear_rows(opt_state, rows: jax.Array, budget: int):
    """Zeroes rows ``rows`` (an (M,) bool mask) of every optimizer-state array with a
    leading dimension of ``budget`` (Adam's moments); scalars such as the step count stay."""
    def clear(x):
        if isinstance(x, jax.Array | np.ndarray) and x.ndim >= 1 and x.shape[0] == budget:
            mask = jnp.reshape(rows, (budget,) + (1,) * (x.ndim - 1))
            return jnp.where(mask, jnp.zeros_like(x), x)
        return x
    return jax.tree_util.tree_map(clear, opt_state)


def prune(model: model_lib.GaussianModel, opt_state):
    """Frees active rows whose filtered covariance is not positive definite.

    Returns ``(model, opt_state, num_pruned)``; pure, so it can run inside ``jax.jit``.
    """
    cov = model_lib.filtered_covariance(model.replace(active=jnp.ones_like(model.active)))
    dead = model.active & ~is_positive_definite(cov)
    model = model.replace(active=model.active & ~dead)
    return model, clear_rows(opt_state, dead, model.budget), jnp.sum(dead)


def growth_count(rule: str, num_active: int, budget: int, max_growth: int, last: bool) -> int:
    """How many Gaussians a growth event adds (before non-PD candidates are dropped)."""
    free = budget - num_active
    if last:
        return free
    if rule == "code":
        return min(max_growth, free)
    if rule == "paper":
        return free // 2
    raise ValueError(f"unknown growth rule {rule!r}; choose from {GROWTH_RULES}")


def worst_pixels(rendered: np.ndarray, target: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` pixels of highest L1-over-RGB distortion, worst first (ties: row-major
    order). Returns integer ``(x, y)`` coordinates, each (k,)."""
    distortion = np.abs(np.asarray(rendered, np.float32) - np.asarray(target, np.float32)).sum(-1)
    order = np.argsort(-distortion.ravel(), kind="stable")[:k]
    y, x = np.divmod(order, distortion.shape[1])
    return x, y


@dataclasses.dataclass(frozen=True)
class GrowthResult:
    model: model_lib.GaussianModel
    opt_state: object
    added: int


def new_cov_params(rng: np.random.Generator, parameterization: str, k: int) -> np.ndarray:
    """Raw covariance parameters of new Gaussians, as the reference draws them:
    ``U[0,1)^3 + (0.5, 0, 0.5)`` for the direct scheme, the scheme's initialisation otherwise."""
    raw = rng.random((k, 3), dtype=np.float32)
    if parameterization == "direct":
        raw += np.array([0.5, 0.0, 0.5], np.float32)
    elif parameterization == "log-rs":
        raw = np.concatenate([np.log(raw[:, :2] + 0.5), raw[:, 2:] * np.float32(2 * np.pi)], -1)
    return raw


def grow(model: model_lib.GaussianModel, opt_state, rendered, target, k: int, *,
         rng: np.random.Generator, new_color: str = "zero", caf: bool = True,
         caf_alpha: float = model_lib.CAF_ALPHA) -> GrowthResult:
    """Adds up to ``k`` Gaussians at the worst pixels of ``rendered`` (host-side).

    Args:
      model, opt_state: the current state; new rows are written into inactive rows.
      rendered: (H, W, 3) current clamped render; target: (H, W, 3) the image.
      k: number of candidates (at most the number of free rows).
      rng: source of the new covariance parameters.
      new_color: ``zero`` (the code) or ``target`` (the pixel's color, the paper).
      caf: give new Gaussians the filter variance ``min(HW / (alpha N), 300)`` with N the
        count after this growth; otherwise 0.
    Returns:
      The new model and optimizer state, and how many Gaussians were added. Candidates
      whose covariance (before the filter) is not positive definite are dropped.
    """
    if new_color not in NEW_COLORS:
        raise ValueError(f"unknown new-Gaussian color {new_color!r}; choose from {NEW_COLORS}")
    active = np.asarray(model.active)
    free = np.flatnonzero(~active)
    k = min(k, free.size, model.height * model.width)  # one new Gaussian per pixel at most
    if k <= 0:
        return GrowthResult(model, opt_state, 0)
    x, y = worst_pixels(rendered, target, k)
    raw = new_cov_params(rng, model.parameterization, k)
    from gipp_jax.parameterization import covariance
    keep = np.asarray(is_positive_definite(covariance(model.parameterization, jnp.asarray(raw))))
    x, y, raw = x[keep], y[keep], raw[keep]
    added = int(keep.sum())
    if added == 0:
        return GrowthResult(model, opt_state, 0)
    rows = free[:added]
    target = np.asarray(target, np.float32)
    if new_color == "target":
        colors = target[y, x]
        if model.color_activation == "sigmoid":
            c = np.clip(colors, 1e-4, 1 - 1e-4)
            colors = np.log(c / (1 - c))
    else:  # raw zeros, as the code writes them (0.5 grey under a sigmoid activation)
        colors = np.zeros((added, 3), np.float32)
    num_after = int(active.sum()) + added
    variance = float(model_lib.caf_variance(model.height, model.width, num_after, caf_alpha)) if caf else 0.0

    def put(array, values):
        out = np.array(array)
        out[rows] = values
        return jnp.asarray(out)

    new_active = active.copy()
    new_active[rows] = True
    model = model.replace(
        means=put(model.means, np.asarray(model_lib.raw_means(model, np.stack([x, y], -1).astype(np.float32)))),
        cov_params=put(model.cov_params, raw),
        colors=put(model.colors, colors.astype(np.float32)),
        filter_var=put(model.filter_var, variance),
        active=jnp.asarray(new_active),
    )
    mask = np.zeros(model.budget, bool)
    mask[rows] = True
    return GrowthResult(model, clear_rows(opt_state, jnp.asarray(mask), model.budget), added)


def growth_steps(iterations: int, fraction: float = 0.1) -> list[int]:
    """Steps after which growth runs: every ``fraction`` of the run, the last one before
    the end (the reference: 5000, 10000, ..., 45000 of 50000)."""
    every = max(1, int(round(fraction * iterations)))
    return list(range(every, iterations, every))
