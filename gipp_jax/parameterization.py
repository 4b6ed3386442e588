"""Covariance parameterisations: raw trainable values (N, 3) -> covariance ``(a, b, c)``.

``(a, b, c)`` stands for ``Sigma = [[a, b], [b, c]]`` in pixels^2. The three schemes and their
initialisations are the reference's:

* ``cholesky``: ``(l11, l21, l22) = raw + (0.5, 0, 0.5)``, ``Sigma = L L^T``.
* ``rs``: ``scale = |raw[:2] + 0.5|``, ``theta = sigmoid(raw[2]) * 2 pi``,
  ``Sigma = R S S^T R^T``.
* ``direct`` (GaussianImage++'s default): ``raw = (Sxx, Sxy, Syy)``, no activation; it
  stays positive semi-definite only through pruning.

All three initialise ``raw ~ U[0, 1)^3``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

PARAMETERIZATIONS = ("cholesky", "rs", "direct")


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


_COVARIANCE: dict[str, Callable[[jax.Array], jax.Array]] = {
    "cholesky": _cholesky,
    "rs": _rotation_scale,
    "direct": _direct,
}


def check_parameterization(name: str) -> str:
    """Returns ``name`` if it is a known parameterisation, else raises ValueError."""
    if name not in _COVARIANCE:
        raise ValueError(f"unknown parameterization {name!r}; choose from {', '.join(PARAMETERIZATIONS)}")
    return name


def covariance(name: str, raw: jax.Array) -> jax.Array:
    """(N, 3) raw parameters -> (N, 3) covariance ``(a, b, c)`` under scheme ``name``."""
    return _COVARIANCE[check_parameterization(name)](raw)


def init_raw(key: jax.Array, num: int) -> jax.Array:
    """The reference initialisation, ``U[0, 1)^3`` for every scheme: (num, 3) float32."""
    return jax.random.uniform(key, (num, 3), jnp.float32)


def triple_to_matrix(cov3: jax.Array) -> jax.Array:
    """(N, 3) ``(a, b, c)`` -> (N, 2, 2) symmetric matrices."""
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    return jnp.stack([jnp.stack([a, b], -1), jnp.stack([b, c], -1)], -2)
