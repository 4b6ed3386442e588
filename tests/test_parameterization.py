"""Covariance parameterisations against hand-computed matrices."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax.parameterization import covariance


def test_cholesky_hand_computed():
    # L = [[0.5 + 1, 0], [2, 0.5 + 0.5]] -> L L^T = [[2.25, 3], [3, 5]]
    np.testing.assert_allclose(covariance("cholesky", jnp.array([[1.0, 2.0, 0.5]])), [[2.25, 3.0, 5.0]])


def test_rotation_scale_hand_computed():
    # scales |0.5 + 0.5| = 1 and |1.5 + 0.5| = 2; theta = sigmoid(0) * 2 pi = pi: R = -I.
    np.testing.assert_allclose(covariance("rs", jnp.array([[0.5, 1.5, 0.0]])), [[1.0, 0.0, 4.0]],
                               atol=1e-6)
    # theta = pi / 2 swaps the axes: sigmoid(x) = 1/4.
    raw_theta = math.log(1 / 3)
    np.testing.assert_allclose(covariance("rs", jnp.array([[0.5, 1.5, raw_theta]])),
                               [[4.0, 0.0, 1.0]], atol=1e-5)


def test_direct_is_identity():
    raw = jnp.array([[3.0, -1.0, 2.0]])
    np.testing.assert_array_equal(covariance("direct", raw), raw)


@pytest.mark.parametrize("name", ["cholesky", "rs"])
def test_psd_by_construction(name):
    raw = jnp.asarray(np.random.default_rng(0).normal(size=(500, 3)) * 3, jnp.float32)
    a, b, c = np.asarray(covariance(name, raw)).T
    assert np.all(a >= 0) and np.all(c >= 0) and np.all(a * c - b * b >= -1e-4 * (a * c + 1))


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown parameterization"):
        covariance("polar", jnp.zeros((1, 3)))
