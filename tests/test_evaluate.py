"""Dataset evaluation, named configs, and the fit presets on the command line."""

import json

import numpy as np
import pytest
from PIL import Image

from gipp_jax import evaluate
from gipp_jax.cli import main
from gipp_jax.config import available_configs, load_config
from gipp_jax.io import InputError
from gipp_jax.train import FitConfig


@pytest.fixture
def image_folder(tmp_path, sample_crop):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (r, c) in enumerate([(0, 0), (40, 50)]):
        Image.fromarray((sample_crop[r:r + 24, c:c + 32] * 255).round().astype(np.uint8)).save(folder / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_eval_writes_tables_and_resumes(capsys, tmp_path, image_folder, monkeypatch):
    out = tmp_path / "out"
    argv = ["eval", str(image_folder), "-o", str(out), "--gaussians", "30", "--iters", "60", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["num_images"] == 2
    assert [r["image"] for r in summary["images"]] == ["im0.png", "im1.png"]
    assert summary["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in summary["images"]]))
    assert all(r["render_fps"] > 0 for r in summary["images"])
    table = (out / "results.md").read_text()
    assert "| im1.png | 32x24 |" in table and "**mean**" in table
    # A second run finds both images done and fits nothing.
    monkeypatch.setattr(evaluate, "evaluate_image", lambda *a, **k: pytest.fail("refitted"))
    assert main(argv) == 0
    # Other settings in the same folder are refused rather than mixed.
    assert main(argv[:-1] + ["--seed", "5", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_quick_protocol():
    config = evaluate.quick_config(FitConfig(num_gaussians=10000, iterations=50000, max_growth=1000))
    assert (config.num_gaussians, config.iterations, config.max_growth) == (625, 5000, 62)
    image = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8, 12, 3)
    small = evaluate.downscale(image, 4)
    assert small.shape == (2, 3, 3)
    np.testing.assert_allclose(small[0, 0], image[:4, :4].mean(axis=(0, 1)))


def test_protocol_images_shard_limit_and_quick(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("c", "a", "d", "b"):
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    names = lambda **k: [p.name for p, _ in evaluate.protocol_images(tmp_path, quick=False, **k)]
    assert names() == ["a.png", "b.png", "c.png", "d.png"]
    assert names(limit=3, shard=(1, 2)) == ["b.png"]
    assert names(skip=1, limit=2) == ["b.png", "c.png"] and names(skip=4) == []
    shards = [names(shard=(k, 3)) for k in range(3)]
    assert sorted(sum(shards, [])) == names() and [len(s) for s in shards] == [2, 1, 1]
    (path, quick), = evaluate.protocol_images(tmp_path, quick=True, limit=1)
    full = np.asarray(Image.open(path), np.float32) / 255
    np.testing.assert_allclose(quick, evaluate.downscale(full, evaluate.QUICK_DOWNSCALE), atol=1e-6)
    with pytest.raises(ValueError, match="shard"):
        names(shard=(2, 2))
    with pytest.raises(ValueError, match="skip"):
        names(skip=-1)


def test_named_configs():
    assert {"kodak-5k", "kodak-10k", "div2k-5k", "div2k-10k"} <= set(available_configs())
    fit = load_config("kodak-10k")["fit"]
    assert fit["num_gaussians"] == 10000 and fit["iterations"] == 50000
    FitConfig(**fit).validate()
    with pytest.raises(InputError, match="no config named"):
        load_config("kodak-1m")
    from gipp_jax.compress import CompressConfig
    for name in available_configs():  # every bundled config is valid as shipped
        data = load_config(name)
        FitConfig(**data["fit"]).validate()
        CompressConfig(**data.get("compression", {})).validate()
    baseline = FitConfig(**load_config("gaussianimage-kodak-10k")["fit"]).validate()
    assert (baseline.optimizer, baseline.learning_rate, baseline.use_d3) == ("adan", 1e-3, False)


def test_user_config_file_and_flag_precedence(capsys, tmp_path, image_folder):
    cfg = tmp_path / "mine.json"
    cfg.write_text(json.dumps({"fit": {"num_gaussians": 12, "iterations": 40, "method": "gaussianimage",
                                       "parameterization": "rs"}}))
    out = tmp_path / "o"
    assert main(["fit", str(image_folder / "im0.png"), "-o", str(out), "--config", str(cfg),
                 "--iters", "20", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["iterations"], metrics["num_gaussians"], metrics["method"]) == (20, 12, "gaussianimage")
    assert metrics["parameterization"] == "rs" and not metrics["d3"] and not metrics["caf"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fit": {"num_gausians": 12}}))
    assert main(["fit", str(image_folder / "im0.png"), "-o", str(tmp_path / "o2"), "--config", str(bad)]) == 2
    assert "unknown fit settings num_gausians" in capsys.readouterr().err
