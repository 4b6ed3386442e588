"""The Gaussian image model: a pytree of fixed-budget padded buffers.

A model holds M rows (the budget); ``active`` marks the rows in use. Inactive rows are
culled before binning, so they draw nothing and receive exactly zero gradient, and the
step function never changes shape when Gaussians are added or removed.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax import parameterization as param_lib

COLOR_ACTIVATIONS = ("identity", "sigmoid")
POSITION_ACTIVATIONS = ("identity", "tanh")
COLOR_INITS = ("zero", "uniform")
CAF_ALPHA = 9.0 * math.pi
CAF_MAX_VARIANCE = 300.0


@flax.struct.dataclass
class GaussianModel:
    """Gaussians of one image, in pixels of a ``height x width`` image.

    Attributes:
      means: (M, 2) raw centers: pixels (x, y) with the identity position activation
        (GaussianImage++; pixel (row i, column j) sits at x=j, y=i), or values mapped to
        pixels by ``(tanh(raw) + 1) / 2 * (W, H)`` with ``tanh`` (GaussianImage).
        :func:`pixel_means` gives pixels either way.
      cov_params: (M, 3) raw covariance parameters (see :mod:`gipp_jax.parameterization`).
      colors: (M, 3) raw colors, passed through ``color_activation``.
      filter_var: (M,) content-aware filter variance ``s_i`` in pixels^2, added to the
        covariance diagonal. Fixed at a Gaussian's birth; not trained.
      active: (M,) bool, rows in use.
      carriers: None (plain Gaussians: no carrier is traced anywhere), or (M, 3) cosine
        carriers ``(kx, ky, phi)``: frequency in cycles per pixel along x and y, phase in
        radians. A row's weight is its Gaussian's times ``cos(2 pi k.d + phi)``, ``d`` the
        offset from its center; ``(0, 0, 0)`` is the plain Gaussian. Trained.
      parameterization, color_activation, position_activation, height, width: static
        metadata.
    """

    means: jax.Array
    cov_params: jax.Array
    colors: jax.Array
    filter_var: jax.Array
    active: jax.Array
    carriers: jax.Array | None = None
    parameterization: str = flax.struct.field(pytree_node=False, default="cholesky")
    color_activation: str = flax.struct.field(pytree_node=False, default="identity")
    height: int = flax.struct.field(pytree_node=False, default=0)
    width: int = flax.struct.field(pytree_node=False, default=0)
    position_activation: str = flax.struct.field(pytree_node=False, default="identity")

    TRAINABLE = ("means", "cov_params", "colors", "carriers")

    @property
    def budget(self) -> int:
        return self.means.shape[0]

    def trainable(self) -> dict[str, jax.Array]:
        """The arrays gradient descent updates, as a dict pytree (``carriers`` only where
        the model has them)."""
        return {name: getattr(self, name) for name in self.TRAINABLE if getattr(self, name) is not None}

    def with_trainable(self, params: dict[str, jax.Array]) -> GaussianModel:
        return self.replace(**params)

    def num_active(self) -> int:
        """Number of rows in use (host-side)."""
        return int(jnp.sum(self.active))


def pixel_means(model: GaussianModel) -> jax.Array:
    """(M, 2) centers (x, y) in pixels."""
    if model.position_activation == "tanh":
        size = jnp.array([model.width, model.height], jnp.float32)
        return 0.5 * (jnp.tanh(model.means) + 1.0) * size
    return model.means


def raw_means(model: GaussianModel, pixels):
    """Inverse of :func:`pixel_means`: raw values that put Gaussians at ``pixels`` (N, 2)."""
    if model.position_activation == "tanh":
        size = jnp.array([model.width, model.height], jnp.float32)
        return jnp.arctanh(jnp.clip(2.0 * jnp.asarray(pixels) / size - 1.0, -0.999999, 0.999999))
    return jnp.asarray(pixels, jnp.float32)


def filtered_covariance(model: GaussianModel) -> jax.Array:
    """(M, 3) rendered covariance ``Sigma + s_i I`` as ``(a, b, c)``; inactive rows are 0
    (a zero determinant, which the renderer culls)."""
    cov = param_lib.covariance(model.parameterization, model.cov_params)
    cov = cov + model.filter_var[:, None] * jnp.array([1.0, 0.0, 1.0], cov.dtype)
    return jnp.where(model.active[:, None], cov, 0.0)


def activated_colors(model: GaussianModel) -> jax.Array:
    """(M, 3) colors after the activation; inactive rows are 0."""
    colors = jax.nn.sigmoid(model.colors) if model.color_activation == "sigmoid" else model.colors
    return jnp.where(model.active[:, None], colors, 0.0)


def active_carriers(model: GaussianModel) -> jax.Array | None:
    """(M, 3) carriers, inactive rows 0; None for a model of plain Gaussians."""
    if model.carriers is None:
        return None
    return jnp.where(model.active[:, None], model.carriers, 0.0)


def with_carriers(model: GaussianModel) -> GaussianModel:
    """``model`` with a carrier per row, all ``(0, 0, 0)`` (the same image) if it had none."""
    if model.carriers is not None:
        return model
    return model.replace(carriers=jnp.zeros((model.budget, 3), jnp.float32))


def carrier_rows(model: GaussianModel) -> np.ndarray:
    """Indices of the active rows whose carrier is not the plain Gaussian's ``(0, 0, 0)``
    (host-side; empty for a model of plain Gaussians)."""
    if model.carriers is None:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.asarray(model.active) & np.any(np.asarray(model.carriers) != 0.0, axis=-1))


def num_carriers(model: GaussianModel) -> int:
    """How many active rows carry a carrier (:func:`carrier_rows`)."""
    return int(carrier_rows(model).size)


def caf_variance(height: int, width: int, num_gaussians: int | jax.Array,
                 alpha: float = CAF_ALPHA) -> jax.Array:
    """Content-aware filter variance ``min(H W / (alpha N_t), 300)`` in pixels^2."""
    n = jnp.maximum(jnp.asarray(num_gaussians, jnp.float32), 1.0)
    return jnp.minimum(height * width / (alpha * n), CAF_MAX_VARIANCE)


def check_color_activation(name: str) -> str:
    """Returns ``name`` if it is a known color activation, else raises ValueError."""
    if name not in COLOR_ACTIVATIONS:
        raise ValueError(f"unknown color activation {name!r}; choose from {', '.join(COLOR_ACTIVATIONS)}")
    return name


def init_model(key: jax.Array, height: int, width: int, budget: int, *,
               num_active: int | None = None, parameterization: str = "cholesky",
               color_activation: str = "identity", filter_variance: float = 0.0,
               position_activation: str = "identity", color_init: str = "zero") -> GaussianModel:
    """The reference initialisation, in a buffer of ``budget`` rows.

    The first ``num_active`` rows (default: all) are active, with centers uniform over the
    image, raw covariance parameters ``U[0, 1)^3`` and raw colors 0 (GaussianImage++) or
    ``U[0, 1)`` (``color_init="uniform"``, GaussianImage). Inactive rows hold values drawn
    the same way.
    """
    param_lib.check_parameterization(parameterization)
    check_color_activation(color_activation)
    if budget <= 0:
        raise ValueError(f"the Gaussian budget must be positive, got {budget}")
    if position_activation not in POSITION_ACTIVATIONS or color_init not in COLOR_INITS:
        raise ValueError(f"unknown position activation {position_activation!r} or color init {color_init!r}")
    num_active = budget if num_active is None else num_active
    arrays = _init_arrays(key, int(height), int(width), int(budget), int(num_active), parameterization,
                          position_activation, color_init, jnp.float32(filter_variance))
    return GaussianModel(**arrays, parameterization=parameterization, color_activation=color_activation,
                         height=int(height), width=int(width), position_activation=position_activation)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7))
def _init_arrays(key, height, width, budget, num_active, parameterization, position_activation, color_init,
                 filter_variance):
    """The arrays of :func:`init_model`, in one compiled program (drawn op by op, each
    small operation would compile on its own)."""
    k_mean, k_cov, k_color = jax.random.split(key, 3)
    unit = jax.random.uniform(k_mean, (budget, 2), jnp.float32)
    if position_activation == "tanh":  # GaussianImage: atanh(2 (U - 0.5))
        means = jnp.arctanh(jnp.clip(2.0 * (unit - 0.5), -0.999999, 0.999999))
    else:
        means = unit * jnp.array([width, height], jnp.float32)
    colors = (jax.random.uniform(k_color, (budget, 3), jnp.float32) if color_init == "uniform"
              else jnp.zeros((budget, 3), jnp.float32))
    active = jnp.arange(budget) < num_active
    return dict(means=means, cov_params=param_lib.init_raw(k_cov, budget, parameterization), colors=colors,
                filter_var=jnp.where(active, filter_variance, 0.0), active=active)
