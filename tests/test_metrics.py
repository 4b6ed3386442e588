"""Metrics against hand-computed values, pytorch_msssim's outputs and known properties."""

import numpy as np
import pytest

from gipp_jax import metrics


def pair(h, w):
    """A deterministic smooth image and a distorted copy (no RNG: reproducible anywhere)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([0.5 + 0.4 * np.sin(xx / 7.0 + c) * np.cos(yy / 11.0 - c) for c in range(3)], -1)
    noise = 0.1 * np.sin(xx * 1.3 + 2 * yy) * np.cos(0.7 * xx * yy / (h + w))
    b = np.clip(a + noise[..., None], 0, 1)
    return a.astype(np.float32), b.astype(np.float32)


def test_psnr_hand_computed():
    a = np.zeros((4, 4, 3), np.float32)
    b = np.full((4, 4, 3), 0.1, np.float32)
    assert float(metrics.psnr(a, b)) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    b[0, 0, 0] = 0.0  # one of 48 values exact: MSE = 0.01 * 47/48
    assert float(metrics.psnr(a, b)) == pytest.approx(-10 * np.log10(0.01 * 47 / 48), abs=1e-4)


# Values printed by pytorch_msssim 1.0 (torch 2.13, float64):
#   ms_ssim(X, Y, data_range=1.0) for pair(h, w) as NCHW tensors.
@pytest.mark.parametrize("h,w,expected", [(176, 200, 0.9744726939949259),
                                          (161, 333, 0.974440511494476)])
def test_ms_ssim_matches_pytorch_msssim(h, w, expected):
    a, b = pair(h, w)
    assert float(metrics.ms_ssim(a, b)) == pytest.approx(expected, abs=2e-5)


def test_ms_ssim_properties():
    a, b = pair(170, 180)
    assert float(metrics.ms_ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(metrics.ms_ssim(a, b)) == pytest.approx(float(metrics.ms_ssim(b, a)), abs=1e-6)
    worse = np.clip(a + 2.0 * (b - a), 0, 1)
    assert float(metrics.ms_ssim(a, worse)) < float(metrics.ms_ssim(a, b)) < 1.0


@pytest.mark.parametrize("side,levels", [(161, 5), (160, 4), (81, 4), (80, 3), (21, 2), (12, 1), (1, 1)])
def test_ms_ssim_small_images_use_fewer_scales(side, levels):
    assert metrics.ms_ssim_levels(side, side + 50) == levels
    a, b = pair(side, side + 3)
    value = float(metrics.ms_ssim(a, b))
    assert 0.0 < value <= 1.0 and np.isfinite(value)
    assert float(metrics.ms_ssim(a, a)) == pytest.approx(1.0, abs=1e-5)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_bjontegaard_hand_computed():
    ref = [(0.1, 25.0), (0.3, 29.0), (0.6, 32.0), (1.0, 34.5)]
    cheaper = [(b * 0.8, p) for b, p in ref]  # same quality for 20% fewer bits
    out = metrics.bjontegaard(ref, cheaper)
    assert out["bd_rate_percent"] == pytest.approx(-20.0, abs=1e-6)
    assert out["bd_psnr_db"] > 0
    better = [(b, p + 1.0) for b, p in ref]  # one dB more at every rate
    assert metrics.bjontegaard(ref, better)["bd_psnr_db"] == pytest.approx(1.0, abs=1e-6)
    apart = [(b * 100, p + 50) for b, p in ref]
    assert metrics.bjontegaard(ref, apart) == {"bd_rate_percent": None, "bd_psnr_db": None}


def test_bjontegaard_pchip_follows_each_curve_through_its_own_points():
    # A reference sweep of 11 points whose log-rate bends at 30 dB, and a test curve of three
    # points 0.2 above it in log-rate between 22 and 28 dB. Away from the bend the piecewise
    # cubic through straight points is the straight line itself: BD-rate e^0.2 - 1, exactly.
    psnr = np.arange(20.0, 41.0, 2.0)
    log_rate = np.where(psnr <= 30, 0.1 * (psnr - 30), 0.3 * (psnr - 30))
    reference = list(zip(np.exp(log_rate), psnr))
    test_psnr = np.array([22.0, 25.0, 28.0])
    test = list(zip(np.exp(0.1 * (test_psnr - 30) + 0.2), test_psnr))
    pchip = metrics.bjontegaard(reference, test, method="pchip")
    assert pchip["bd_rate_percent"] == pytest.approx(100 * (np.exp(0.2) - 1), abs=1e-9)
    # One quadratic through the whole bent sweep misses the straight part.
    polynomial = metrics.bjontegaard(reference, test)
    assert abs(polynomial["bd_rate_percent"] - pchip["bd_rate_percent"]) > 1.0
    # A constant factor and a constant PSNR gain come out exactly either way.
    doubled = [(2 * b, q) for b, q in reference]
    assert metrics.bjontegaard(reference, doubled, method="pchip")["bd_rate_percent"] == pytest.approx(100.0)
    better = [(b, q + 0.5) for b, q in reference]
    assert metrics.bjontegaard(reference, better, method="pchip")["bd_psnr_db"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown BD method"):
        metrics.bjontegaard(reference, test, method="akima")
