"""The gipp command: outputs, image modes, and clean failures."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from gipp_jax import metrics as gipp_metrics
from gipp_jax.cli import main
from gipp_jax.io import load_image, load_model


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


@pytest.fixture
def small_png(tmp_path, sample_crop):
    path = tmp_path / "small.png"
    Image.fromarray((sample_crop[:40, :56] * 255).round().astype(np.uint8)).save(path)
    return path


def test_fit_then_render(capsys, tmp_path, small_png):
    out = tmp_path / "out"
    code, cap = run(capsys, "fit", str(small_png), "-o", str(out), "--gaussians", "120",
                    "--iters", "300", "--no-progress")
    assert code == 0, cap.err
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ms_ssim", "num_gaussians", "iterations", "fit_seconds", "backend",
                "height", "width"):
        assert key in metrics
    assert (metrics["height"], metrics["width"]) == (40, 56)
    assert 100 <= metrics["num_gaussians"] <= 120  # the budget, less what pruning removed
    original = load_image(small_png)
    flat = np.broadcast_to(original.mean(axis=(0, 1)), original.shape)
    assert metrics["psnr"] > float(gipp_metrics.psnr(flat, original)) + 1.0  # it learned the image
    assert sorted(os.listdir(out)) == ["metrics.json", "model.npz", "render.png"]
    rendered = load_image(out / "render.png")
    assert rendered.shape == (40, 56, 3)
    model = load_model(out / "model.npz")
    assert model.num_active() == metrics["num_gaussians"]

    code, cap = run(capsys, "render", str(out / "model.npz"), "-o", str(tmp_path / "x2.png"),
                    "--scale", "2")
    assert code == 0, cap.err
    big = load_image(tmp_path / "x2.png")
    assert big.shape == (80, 112, 3)
    # The 2x render resamples the same image: downsampled it stays close to the 1x render.
    down = big.reshape(40, 2, 56, 2, 3).mean(axis=(1, 3))
    assert np.mean(np.abs(down - rendered)) < 0.05


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "1", "CMYK"])
def test_image_modes_load_as_rgb(tmp_path, sample_crop, mode):
    rgb = Image.fromarray((sample_crop[:20, :30] * 255).round().astype(np.uint8))
    if mode == "I;16":
        gray = np.asarray(rgb.convert("L"), np.uint16) * 257
        img = Image.fromarray(gray)
    elif mode == "P":
        img = rgb.quantize(16)
    else:
        img = rgb.convert(mode)
    path = tmp_path / f"img.{'tiff' if mode == 'CMYK' else 'png'}"
    img.save(path)
    arr = load_image(path)
    assert arr.shape == (20, 30, 3) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0 and arr.max() > 0.2


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [51, 255]]
    path = tmp_path / "a.png"
    Image.fromarray(rgba).save(path)
    arr = load_image(path)
    np.testing.assert_allclose(arr[..., 0], [[200 / 255, 0.0], [200 / 255 * 0.2, 200 / 255]], atol=1e-6)


def test_sixteen_bit_keeps_precision(tmp_path):
    gray = np.array([[0, 1, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(gray).save(path)
    np.testing.assert_allclose(load_image(path)[0, :, 0], [0.0, 1 / 65535, 1.0], rtol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (23, 2)])
def test_tiny_and_thin_images_fit(capsys, tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.fromarray(np.full(size + (3,), 120, np.uint8)).save(path)
    code, cap = run(capsys, "fit", str(path), "-o", str(tmp_path / "o"), "--gaussians", "4",
                    "--iters", "30", "--no-progress")
    assert code == 0, cap.err
    assert load_image(tmp_path / "o" / "render.png").shape == size + (3,)


def expect_clean_failure(capsys, tmp_path, *argv, match):
    before = set(p for p in tmp_path.rglob("*"))
    code, cap = run(capsys, *argv)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], cap.err
    assert "Traceback" not in cap.err
    new = set(tmp_path.rglob("*")) - before
    assert all(p.is_dir() for p in new), new  # no file was written


def test_missing_input(capsys, tmp_path):
    expect_clean_failure(capsys, tmp_path, "fit", str(tmp_path / "nope.png"), "-o",
                         str(tmp_path / "o"), match="no such file")


def test_not_an_image(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    expect_clean_failure(capsys, tmp_path, "fit", str(bad), "-o", str(tmp_path / "o"),
                         match="not an image")


def test_truncated_image(capsys, tmp_path, small_png):
    data = small_png.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    expect_clean_failure(capsys, tmp_path, "fit", str(cut), "-o", str(tmp_path / "o"),
                         match="cannot read image")


def test_unwritable_output(capsys, tmp_path, small_png):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expect_clean_failure(capsys, tmp_path, "fit", str(small_png), "-o", str(blocker / "sub"),
                         match="cannot create output folder")


@pytest.mark.parametrize("flag,value", [("--gaussians", "0"), ("--gaussians", "-5"), ("--iters", "0"),
                                        ("--gaussians", "many")])
def test_bad_numbers(capsys, tmp_path, small_png, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(small_png), "-o", str(tmp_path / "o"), flag, value])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_render_rejects_foreign_model(capsys, tmp_path, small_png):
    expect_clean_failure(capsys, tmp_path, "render", str(small_png), "-o", str(tmp_path / "r.png"),
                         match="not a gipp model file")


def test_render_rejects_bad_scale(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["render", "m.npz", "-o", str(tmp_path / "r.png"), "--scale", "-1"])
    assert exc.value.code == 2
