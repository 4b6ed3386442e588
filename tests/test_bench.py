"""`gipp bench`: the smoke suite runs every stage (so the GPU suite never rots between GPU
runs), a wrong kernel stops the run, and a failing stage does not lose the others."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from gipp_jax import bench
from gipp_jax.cli import main
from gipp_jax.methods import DEFAULT_METHOD
from gipp_jax.raster import pallas_gpu, xla


@pytest.fixture
def tiny_kodak(tmp_path, sample_crop):
    folder = tmp_path / "kodak"
    folder.mkdir()
    for i in range(3):  # the smoke suite takes the first 2, at 1/16 size
        crop = sample_crop[i * 8:i * 8 + 96, :128]
        Image.fromarray((crop * 255).round().astype(np.uint8)).save(folder / f"kodim{i + 1:02d}.png")
    return folder


def test_smoke_suite_runs_every_stage(capsys, tmp_path, tiny_kodak):
    out = tmp_path / "bench"
    code = main(["bench", "--suite", "smoke", "--backends", "pallas,xla", "--kodak", str(tiny_kodak),
                 "-o", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    report = json.loads((out / "bench.json").read_text())
    assert report["command"].startswith("gipp bench --suite smoke")
    assert {"device", "backend", "jax_version", "jaxlib_version", "date"} <= set(report["environment"])
    assert {name: stage["status"] for name, stage in report["stages"].items()} == dict.fromkeys(bench.STAGES, "ok")
    stages = {name: stage["rows"] for name, stage in report["stages"].items()}

    checks = stages["check"]
    assert {(r["backend"], r["reference"]) for r in checks} == {("xla", "dense"), ("pallas", "xla")}
    assert {r["case"] for r in checks if r["backend"] == "pallas"} == {"uniform", "border", "piled"}
    assert all(r["ok"] and r["forward"] <= bench.FORWARD_TOLERANCE for r in checks)
    for stage in ("render", "step"):
        assert {r["backend"] for r in stages[stage]} == {"pallas", "xla"}
    assert all(r["forward_fps"] > 0 and r["forward_backward_ms"] > 0 for r in stages["render"])
    methods = bench.bench_methods(bench.SUITES["smoke"])
    assert methods == (DEFAULT_METHOD,) and len(bench.bench_methods()) == 2  # the smoke run: the default alone
    assert {r["method"] for r in stages["step"]} == set(methods)
    assert {(r["width"], r["height"]) for r in stages["binning"]} == {(40, 24)}
    assert [r["batch_size"] for r in stages["batch"]] == [2] * len(methods)
    assert all(r["images_per_hour"] > 0 for r in stages["batch"])
    kodak = stages["kodak"]
    assert {r["method"] for r in kodak} == set(methods)
    assert all(r["images"] == 2 and 5.0 < r["mean_psnr"] < 60.0 for r in kodak)
    md = (out / "bench.md").read_text()
    assert "## render (ok" in md and "| pallas |" in md and cap.out.strip() == md.strip()


def test_scene_kinds_are_what_they_say():
    h, w, n = 64, 96, 200
    means, cov3, colors = bench.fitted_like_scene(h, w, n, kind="border")
    std = np.sqrt(np.maximum(np.asarray(cov3[:, 0]), np.asarray(cov3[:, 2])))
    x, y = np.asarray(means).T
    near_edge = np.minimum.reduce([np.abs(x), np.abs(x - w), np.abs(y), np.abs(y - h)])
    assert np.all(near_edge <= 3 * std * 1.5 + 1)  # every one straddles an edge
    means, cov3, _ = bench.fitted_like_scene(h, w, n, kind="piled")
    assert np.all(np.abs(np.asarray(means) - [w / 2, h / 2]) <= 24)
    means, cov3, _ = bench.fitted_like_scene(h, w, n)
    a, b, c = np.asarray(cov3).T
    assert np.all(a * c - b * b > 0)  # positive definite
    spacing = np.sqrt(h * w / n)
    assert 0.4 * spacing < np.median((a * c - b * b) ** 0.25) < 0.9 * spacing


def test_a_wrong_kernel_stops_the_run(monkeypatch):
    def off_by_one_percent(*args, **kwargs):
        return 1.01 * xla.rasterize(*args[:6])  # (means, precisions, colors, bins, height, width)

    monkeypatch.setattr(pallas_gpu, "rasterize", off_by_one_percent)
    # Sizes no other test renders, so that no compiled kernel is reused from a cache.
    suite = dataclasses.replace(bench.SUITES["smoke"], check_size=(26, 34), check_gaussians=(17,),
                                dense_check=(18, 22, 9))
    logged = []
    with pytest.raises(bench.CheckFailed, match="pallas disagrees with xla on the uniform case"):
        bench.run_bench(suite, backends=("pallas", "xla"), stages=("check", "binning"), log=logged.append)
    assert any("MISMATCH" in line for line in logged)


def test_a_failing_stage_does_not_lose_the_others(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of device memory\nsecond line")

    monkeypatch.setattr(bench, "stage_binning", broken)
    report = bench.run_bench("smoke", backends=("xla",), stages=("binning", "render"), log=lambda m: None)
    assert report["stages"]["binning"]["status"] == "failed"
    assert report["stages"]["binning"]["error"] == "RuntimeError: out of device memory"
    assert report["stages"]["render"]["status"] == "ok" and report["stages"]["render"]["rows"]
    assert report["stages"]["kodak"]["status"] == "skipped"
    assert "Error: RuntimeError: out of device memory" in bench.markdown(report)


def test_bench_rejects_bad_lists(capsys, tmp_path):
    for flag, value in (("--backends", "cuda"), ("--skip", "render,nope"), ("--suite", "huge")):
        with pytest.raises(SystemExit) as exc:
            main(["bench", flag, value, "-o", str(tmp_path / "b")])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"gipp bench: error: {flag}"), err
    assert not (tmp_path / "b").exists()


def test_on_a_tpu_auto_is_xla_and_the_report_names_the_chip(monkeypatch, tmp_path):
    # A TPU as JAX presents one: default backend "tpu", devices of a TPU kind. The work itself
    # runs on this CPU; what is checked is what gipp bench decides and reports there.
    import jax

    from gipp_jax import raster

    class FakeTpu:
        device_kind = "TPU v5 lite"
        platform = "tpu"

    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [FakeTpu()])
    assert bench.default_backends() == ("xla",)  # the Mosaic GPU kernels are never tried
    assert raster.resolve_backend("auto") == "xla"
    report = bench.run_bench("smoke", stages=("check", "render"), outdir=tmp_path, log=lambda *a: None)
    assert report["backends"] == ["xla"]
    assert (report["environment"]["backend"], report["environment"]["device"]) == ("tpu", "TPU v5 lite")
    assert {name: stage["status"] for name, stage in report["stages"].items()} == {
        name: "ok" if name in ("check", "render") else "skipped" for name in bench.STAGES}
    assert {r["backend"] for r in report["stages"]["render"]["rows"]} == {"xla"}
