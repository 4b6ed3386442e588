"""tools/depth_probe.py: a file's carriers coded again on another grid."""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from depth_probe import carrier_grid, on_carrier_grid  # noqa: E402

from gipp_jax import bitstream  # noqa: E402


def _file(carriers, carrier_bits):
    codes = np.zeros((len(carriers), 8), np.int64)
    return bitstream.Encoded(4, 4, (12, 7, 5), np.zeros(16, np.float32), codes,
                             carriers=np.asarray(carriers, np.int64), carrier_bits=carrier_bits)


def test_its_own_grid_keeps_every_code():
    carriers = [[0, 0, 0], [3, -2, 5], [512, 512, 63], [0, 7, 1], [100, -300, 32]]
    data = _file(carriers, (10, 6))
    np.testing.assert_array_equal(on_carrier_grid(data, 10, 6).carriers, carriers)


def test_a_coarser_grid_rounds_to_the_nearest_of_its_levels():
    # 10/6 -> 8/4: frequency codes a quarter (1/1024 -> 1/256 cycle per pixel), phase codes a
    # quarter (64 -> 16 steps), each to the nearest; a plain row stays plain.
    data = _file([[0, 0, 0], [13, -21, 9], [400, 6, 62], [0, 3, 0]], (10, 6))
    coarse = on_carrier_grid(data, 8, 4)
    assert coarse.carrier_bits == (8, 4)
    expected = [[0, 0, 0], [3, -5, 2], [100, 2, 0], [0, 1, 0]]  # 62/4 = 15.5 rounds to even, 16: phase 0
    np.testing.assert_array_equal(coarse.carriers, expected)
    kx, ky, phi = (coarse.carriers[1] * [1 / 256, 1 / 256, 2 * math.pi / 16])
    assert abs(kx - 13 / 1024) <= 0.5 / 256 and abs(ky + 21 / 1024) <= 0.5 / 256
    assert abs(phi - 9 * 2 * math.pi / 64) <= math.pi / 16 + 1e-6


def test_a_carrier_never_rounds_to_a_plain_gaussian():
    data = _file([[1, 0, 1], [0, 0, 0]], (10, 6))  # 1/1024 cycle per pixel: 0 on a 1/256 grid
    coarse = on_carrier_grid(data, 8, 4)
    assert bitstream.carrier_flags(coarse.carriers).tolist() == [True, False]


def test_grids_are_read_and_checked():
    assert carrier_grid("8/4") == (8, 4)
    for bad in ("8", "8/x", "99/4"):
        with pytest.raises(argparse.ArgumentTypeError):
            carrier_grid(bad)
