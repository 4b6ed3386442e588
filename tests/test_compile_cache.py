"""The persistent compilation cache of the command line."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from gipp_jax import compile_cache


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.usable_cache_dir() == tmp_path / "xdg" / "gipp-jax" / "xla"
    assert (tmp_path / "xdg" / "gipp-jax" / "xla").is_dir()
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compile_cache.usable_cache_dir() == tmp_path / "mine"
    for off in ("", "off"):
        monkeypatch.setenv(compile_cache.ENV_VAR, off)
        assert compile_cache.usable_cache_dir() is None
    assert compile_cache.usable_cache_dir(tmp_path / "given") == tmp_path / "given"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert compile_cache.usable_cache_dir(blocker / "xla") is None  # cannot be created: no cache


def test_cli_fills_the_cache(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(src)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    cache = tmp_path / "cache"
    run = subprocess.run([sys.executable, "-m", "gipp_jax.cli", "fit", str(src), "-o", str(tmp_path / "out"),
                          "--gaussians", "20", "--iters", "20", "--no-progress"],
                         env={**env, compile_cache.ENV_VAR: str(cache)}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert any(cache.iterdir())  # the training step (compiled in over MIN_COMPILE_SECONDS) was kept
