"""Covariance parameterisations: raw trainable values (N, 3) -> covariance ``(a, b, c)``.

``(a, b, c)`` stands for ``Sigma = [[a, b], [b, c]]`` in pixels^2. The three schemes and their
initialisations are the reference's:

* ``cholesky``: ``(l11, l21, l22) = raw + (0.5, 0, 0.5)``, ``Sigma = L L^T``.
* ``rs``: ``scale = |raw[:2] + 0.5|``, ``theta = sigmoid(raw[2]) * 2 pi``,
  ``Sigma = R S S^T R^T``.
* ``direct`` (GaussianImage++'s default): ``raw = (Sxx, Sxy, Syy)``, no activation; it
  stays positive semi-definite only through pruning.
* ``log-rs`` (the ``gipp-fast`` method's): ``scale = exp(raw[:2])`` in pixels and
  ``theta = raw[2]`` in radians, ``Sigma = R S S^T R^T``. Always positive definite, and an
  optimizer step on the log-scales is a *relative* change of size, the same at 0.5 px as at
  20 px.

The reference's three initialise ``raw ~ U[0, 1)^3``; ``log-rs`` draws the same sizes as
``rs`` (``log(U[0, 1) + 0.5)``) and angles ``U[0, 2 pi)``. :func:`from_covariance` inverts
every scheme.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

PARAMETERIZATIONS = ("cholesky", "rs", "direct", "log-rs")


def _cholesky(raw: jax.Array) -> jax.Array:
    l11 = raw[:, 0] + 0.5
    l21 = raw[:, 1]
    l22 = raw[:, 2] + 0.5
    return jnp.stack([l11 * l11, l11 * l21, l21 * l21 + l22 * l22], axis=-1)


def _rotation_scale(raw: jax.Array) -> jax.Array:
    s1 = jnp.abs(raw[:, 0] + 0.5)
    s2 = jnp.abs(raw[:, 1] + 0.5)
    theta = jax.nn.sigmoid(raw[:, 2]) * (2.0 * math.pi)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    v1, v2 = s1 * s1, s2 * s2
    return jnp.stack([cos * cos * v1 + sin * sin * v2, cos * sin * (v1 - v2),
                      sin * sin * v1 + cos * cos * v2], axis=-1)


def _direct(raw: jax.Array) -> jax.Array:
    return raw


def _log_rotation_scale(raw: jax.Array) -> jax.Array:
    v1, v2 = jnp.exp(2.0 * raw[:, 0]), jnp.exp(2.0 * raw[:, 1])
    cos, sin = jnp.cos(raw[:, 2]), jnp.sin(raw[:, 2])
    return jnp.stack([cos * cos * v1 + sin * sin * v2, cos * sin * (v1 - v2),
                      sin * sin * v1 + cos * cos * v2], axis=-1)


_COVARIANCE: dict[str, Callable[[jax.Array], jax.Array]] = {
    "cholesky": _cholesky,
    "rs": _rotation_scale,
    "direct": _direct,
    "log-rs": _log_rotation_scale,
}


def check_parameterization(name: str) -> str:
    """Returns ``name`` if it is a known parameterisation, else raises ValueError."""
    if name not in _COVARIANCE:
        raise ValueError(f"unknown parameterization {name!r}; choose from {', '.join(PARAMETERIZATIONS)}")
    return name


def covariance(name: str, raw: jax.Array) -> jax.Array:
    """(N, 3) raw parameters -> (N, 3) covariance ``(a, b, c)`` under scheme ``name``."""
    return _COVARIANCE[check_parameterization(name)](raw)


def init_raw(key: jax.Array, num: int, name: str = "cholesky") -> jax.Array:
    """The reference initialisation, ``U[0, 1)^3`` for the reference's schemes; for
    ``log-rs`` the sizes ``rs`` draws, ``log(U[0, 1) + 0.5)``, at angles ``U[0, 2 pi)``:
    (num, 3) float32."""
    unit = jax.random.uniform(key, (num, 3), jnp.float32)
    if name == "log-rs":
        return jnp.concatenate([jnp.log(unit[:, :2] + 0.5), unit[:, 2:] * (2.0 * math.pi)], -1)
    return unit


def from_covariance(name: str, cov3):
    """Raw parameters of scheme ``name`` whose covariance is ``cov3`` ((N, 3) ``(a, b, c)``,
    positive definite): the inverse of :func:`covariance`. (N, 3) float32: a NumPy array
    for a NumPy input (host-side set-up, where JAX would compile every operation on its
    own), else a JAX array."""
    xp = np if isinstance(cov3, np.ndarray) else jnp
    cov3 = xp.asarray(cov3, xp.float32)
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    check_parameterization(name)
    if name == "direct":
        return cov3
    if name == "cholesky":
        l11 = xp.sqrt(a)
        l21 = b / l11
        l22 = xp.sqrt(xp.maximum(c - l21 * l21, 0.0))
        return xp.stack([l11 - 0.5, l21, l22 - 0.5], -1).astype(xp.float32)
    # Eigen-decomposition: major axis at angle theta, variances v1 >= v2.
    mid, half = 0.5 * (a + c), xp.sqrt(0.25 * (a - c) ** 2 + b * b)
    v1, v2 = mid + half, xp.maximum(mid - half, 1e-12)
    theta = 0.5 * xp.arctan2(2.0 * b, a - c)
    if name == "log-rs":
        return xp.stack([0.5 * xp.log(v1), 0.5 * xp.log(v2), theta], -1).astype(xp.float32)
    # rs: scale = raw + 0.5 (positive branch), theta = sigmoid(raw) * 2 pi with theta in (0, 2 pi).
    angle = xp.mod(theta, math.pi) + 1e-6
    logit = xp.log(angle / (2.0 * math.pi - angle))
    return xp.stack([xp.sqrt(v1) - 0.5, xp.sqrt(v2) - 0.5, logit], -1).astype(xp.float32)


def triple_to_matrix(cov3: jax.Array) -> jax.Array:
    """(N, 3) ``(a, b, c)`` -> (N, 2, 2) symmetric matrices."""
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    return jnp.stack([jnp.stack([a, b], -1), jnp.stack([b, c], -1)], -2)
