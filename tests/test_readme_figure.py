"""tools/readme_figure.py: the overview at half size, the crop at 2x pixel for pixel."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from readme_figure import GAP, figure  # noqa: E402

from gipp_jax.io import InputError  # noqa: E402


def test_the_crop_is_drawn_at_2x_and_the_overview_at_half_size():
    rng = np.random.default_rng(0)
    original = rng.uniform(size=(20, 32, 3)).astype(np.float32)
    render = rng.uniform(size=(20, 32, 3)).astype(np.float32)
    out = np.asarray(figure(original, render, (4, 6, 8, 5)))
    assert out.shape == (10 + GAP + 10, 2 * 16 + GAP, 3)
    crop = np.round(render[6:11, 4:12] * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[10 + GAP:, 16 + GAP:16 + GAP + 16], crop.repeat(2, 0).repeat(2, 1))
    box = np.round(original[:2, :2] * 255).mean(axis=(0, 1))  # the overview's first pixel: a 2x2 box mean
    np.testing.assert_allclose(out[0, 0], box, atol=1)
    with pytest.raises(InputError, match="not inside"):
        figure(original, render, (30, 0, 8, 5))
