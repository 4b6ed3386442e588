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


FIT_NUMBERS = [("--gaussians", "0", "positive integer (got 0)"), ("--gaussians", "-5", "positive integer"),
               ("--gaussians", "many", "positive integer (got 'many')"), ("--iters", "0", "positive integer"),
               ("--iters", "1.5", "positive integer"), ("--seed", "x", "an integer")]
NUMBER_CASES = (
    [("fit", flag, value, why) for flag, value, why in FIT_NUMBERS]
    + [("eval", flag, value, why) for flag, value, why in FIT_NUMBERS]
    + [("eval", "--limit", "0", "positive integer")]
    + [("fit-dir", flag, value, why) for flag, value, why in FIT_NUMBERS]
    + [("fit-dir", "--batch", "0", "positive integer"), ("fit-dir", "--limit", "-1", "positive integer"),
       ("fit-dir", "--num-processes", "0", "positive integer"),
       ("fit-dir", "--process-id", "-1", "non-negative integer (got -1)")]
    + [("compress", flag, value, why) for flag, value, why in FIT_NUMBERS]
    + [("compress", "--bits", "0 7 5", "bit depth in 1..16 (got 0)"),
       ("compress", "--bits", "10 17 5", "bit depth in 1..16 (got 17)"),
       ("compress", "--bits", "13 7 5", "position bits must be in 1..12 (got 13)"),
       ("compress", "--bits", "10 x 5", "bit depth"), ("compress", "--bits", "10 7", "expected 3 arguments")]
    + [("render", "--scale", value, "positive number") for value in ("0", "-1", "nan", "inf", "big")]
    + [("decompress", "--scale", value, "positive number") for value in ("0", "-2", "nan")]
)


@pytest.mark.parametrize("command,flag,value,why", NUMBER_CASES)
def test_every_bad_number_is_one_line(capsys, tmp_path, small_png, command, flag, value, why):
    inputs = {"fit": [str(small_png)], "compress": [str(small_png)], "eval": [str(tmp_path)],
              "fit-dir": [str(tmp_path)], "render": ["m.npz"], "decompress": ["a.gipp"]}[command]
    output = {"compress": "a.gipp", "render": "r.png", "decompress": "d.png"}.get(command, "o")
    argv = [command, *inputs, "-o", str(tmp_path / output), flag, *value.split()]
    before = set(tmp_path.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"gipp {command}: error: {flag}") and why in err[0], err
    assert set(tmp_path.rglob("*")) == before  # nothing written


def test_info_describes_a_file(capsys, tmp_path):
    from gipp_jax import bitstream
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, 1024, 50), rng.integers(0, 1024, 50)]
                     + [rng.integers(0, 32, 50) for _ in range(6)], 1)
    blob = bitstream.encode(bitstream.Encoded(48, 64, (10, 7, 5), np.ones(16, np.float32), codes))
    path = tmp_path / "a.gipp"
    path.write_bytes(blob)
    code, cap = run(capsys, "info", str(path))
    assert code == 0
    fields = dict(line.split(None, 1) for line in cap.out.strip().splitlines())
    assert fields["bytes"] == str(len(blob)) and fields["image"] == "64x48" and fields["gaussians"] == "50"
    assert fields["bits"] == "position 10, covariance 7, color 5"
    assert float(fields["bpp"]) == pytest.approx(len(blob) * 8 / (48 * 64), abs=1e-4)
    assert fields["format"] == f"version {bitstream.PLAIN_VERSION}"
    assert fields["covariance"] == "log diagonal, off-diagonal" and fields["colors"] == "one step"
    path.write_bytes(bitstream.encode(bitstream.Encoded(48, 64, (10, 7, 5), np.ones(16, np.float32), codes,
                                                        correlation=True, arcsine=True, color_classes=(40, 21))))
    code, cap = run(capsys, "info", str(path))
    fields = dict(line.split(None, 1) for line in cap.out.strip().splitlines())
    assert code == 0 and fields["covariance"] == "log diagonal, correlation (arcsine)"
    assert fields["colors"] == "steps by size (reference 40, span 21)"
    path.write_bytes(blob[:-3])
    expect_clean_failure(capsys, tmp_path, "info", str(path), match="gipp info: error:")
    expect_clean_failure(capsys, tmp_path, "info", str(tmp_path / "none.gipp"), match="no such file")


def test_render_rejects_foreign_model(capsys, tmp_path, small_png):
    expect_clean_failure(capsys, tmp_path, "render", str(small_png), "-o", str(tmp_path / "r.png"),
                         match="not a gipp model file")
