"""tools/rd_ceiling.py: the bits factor that brings a curve to a BD-rate, and one ceiling
against another."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from rd_ceiling import against_baseline, bits_factor_for  # noqa: E402

from gipp_jax import metrics  # noqa: E402

REFERENCE = [(0.2, 27.0), (0.4, 30.0), (0.8, 33.5), (1.6, 37.5)]


def test_a_curve_at_twice_the_rate_needs_half_the_bits_to_match():
    # The same qualities at twice the rates: +100%; rates scaled by f give 200 f - 100 %.
    doubled = [(2 * r, q) for r, q in REFERENCE]
    assert metrics.bjontegaard(REFERENCE, doubled)["bd_rate_percent"] == pytest.approx(100.0, abs=1e-6)
    assert bits_factor_for(REFERENCE, doubled, 0.0) == pytest.approx(0.5, rel=1e-6)
    assert bits_factor_for(REFERENCE, doubled, 10.0) == pytest.approx(0.55, rel=1e-6)
    assert bits_factor_for(REFERENCE, doubled, -10.0) == pytest.approx(0.45, rel=1e-6)


def test_a_curve_that_does_not_overlap_in_quality_is_out_of_reach():
    far_above = [(r, q + 20.0) for r, q in REFERENCE]
    assert bits_factor_for(REFERENCE, far_above, 10.0) is None


def test_a_ceiling_against_another_on_the_images_both_hold():
    def points(images, scale, gain=0.0):
        return [{"image": i, "target_bpp": t, "bpp": r * scale, "psnr": q + gain}
                for i in images for t, (r, q) in zip((0.2, 0.4, 0.8, 1.6), REFERENCE)]
    # Ours at 80% of the baseline's rates on a, b; the baseline also has c (left out), and
    # ours lacks b's highest rate (b left out: a curve needs every rate).
    ours = [p for p in points(["a", "b"], 0.8, 0.25) if not (p["image"] == "b" and p["target_bpp"] == 1.6)]
    vs = against_baseline(ours, points(["a", "b", "c"], 1.0))
    assert vs["images"] == ["a"]
    assert vs["psnr_gain_db"] == pytest.approx(0.25)
    # 0.25 dB better at 0.8x the rate: more than 20% fewer bits at equal quality.
    assert vs["bd_rate_percent"] < -20.0
    assert against_baseline(ours, points(["c"], 1.0))["num_images"] == 0
