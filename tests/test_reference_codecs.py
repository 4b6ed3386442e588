"""tools/reference_codecs.py: what each reference codec reports is what its file holds."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from reference_codecs import CODECS, available_codecs  # noqa: E402

from gipp_jax import metrics  # noqa: E402


@pytest.fixture(params=list(CODECS))
def codec(request):
    codec = CODECS[request.param]
    if not codec.available():
        pytest.skip(f"this Pillow cannot write {codec.name}")
    return codec


def test_a_point_reports_its_file_and_the_rate_grows_with_the_setting(sample_crop, codec):
    image = sample_crop[:40, :56]
    low, high = codec.sweep[1], codec.sweep[-2]
    point = codec.point(image, low)
    blob = codec.encode(image, low)
    decoded = codec.decode(blob)
    assert point["bytes"] == len(blob) and point["bpp"] == pytest.approx(len(blob) * 8 / (40 * 56))
    assert point["psnr"] == pytest.approx(float(metrics.psnr(decoded, image)), abs=1e-4)
    assert 0 < point["ms_ssim"] <= 1 and point[codec.setting_name] == low
    better = codec.point(image, high, ms_ssim=False)
    assert better["bytes"] > point["bytes"] and better["psnr"] > point["psnr"] + 1


def test_best_under_is_the_highest_setting_that_fits(sample_crop, codec):
    image = sample_crop[:40, :56]
    budget = len(codec.encode(image, codec.sweep[len(codec.sweep) // 2])) + 40
    best = codec.best_under(image, budget)
    setting = best[codec.setting_name]
    assert best["bytes"] <= budget
    assert len(codec.encode(image, setting + 1)) > budget or setting == codec.highest
    assert codec.best_under(image, 10) is None  # no file of this format is 10 bytes


def test_unknown_codecs_are_refused():
    with pytest.raises(ValueError, match="unknown codec 'bpg'"):
        available_codecs(["jpeg", "bpg"])
    assert [c.key for c in available_codecs(["jpeg"])] == ["jpeg"]
