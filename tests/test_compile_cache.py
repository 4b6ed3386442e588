"""The persistent compilation cache of the command line."""

import json
import os
import re
import subprocess
import sys

import numpy as np

from gipp_jax import bitstream, compile_cache


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


def decompress_in_subprocess(tmp_path, cache, name):
    """``gipp decompress`` of a small file in a fresh process using ``cache`` (its render
    compiles in over :data:`~gipp_jax.compile_cache.MIN_COMPILE_SECONDS`); returns its
    stderr (compiles and cache hits logged)."""
    src = tmp_path / "small.gipp"
    if not src.exists():
        codes = np.random.default_rng(0).integers(0, 64, (20, 8))
        src.write_bytes(bitstream.encode(bitstream.Encoded(24, 32, (12, 10, 6), np.ones(16, np.float32), codes)))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    run = subprocess.run([sys.executable, "-m", "gipp_jax.cli", "decompress", str(src), "-o", str(tmp_path / f"{name}.png")],
                         env={**env, compile_cache.ENV_VAR: str(cache), "JAX_LOG_COMPILES": "1"},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Error writing persistent compilation cache" not in run.stderr
    return run.stderr


def test_a_damaged_cache_still_writes_then_hits(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    # The damage a process killed between JAX's two writes leaves: an entry without its
    # -atime record (jax 0.10.2's evicting cache then fails every later write).
    (cache / "orphan-cache").write_bytes(b"0" * 64)
    decompress_in_subprocess(tmp_path, cache, "first")
    written = set(cache.glob("*-cache")) - {cache / "orphan-cache"}
    assert written  # the render (compiled in over MIN_COMPILE_SECONDS) was kept
    again = decompress_in_subprocess(tmp_path, cache, "again")
    # Every program the first run kept is loaded, not compiled, by the second. (Which
    # programs are kept depends on their compile time, 0.5 s at least, so a busy machine
    # may keep one more in the second run: that is not asserted against.)
    hits = set(re.findall(r"Persistent compilation cache hit for '[^']*' with key '([^']*)'", again))
    assert {entry.name[: -len("-cache")] for entry in written} <= hits


def test_oldest_entries_go_first_when_the_folder_is_over_its_size(tmp_path):
    for i, name in enumerate(["old", "mid", "new"]):
        (tmp_path / f"{name}-cache").write_bytes(b"x" * 100)
        (tmp_path / f"{name}-atime").write_bytes((1000 + i).to_bytes(8, "little"))
    (tmp_path / "bare-cache").write_bytes(b"x" * 100)  # no record: its file time, the newest
    assert compile_cache.evict_oldest(tmp_path, 250) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare-cache", "new-atime", "new-cache"]
    assert compile_cache.evict_oldest(tmp_path, 250) == 0


def test_eviction_is_left_to_jax_only_where_it_survives_a_damaged_folder(monkeypatch):
    import importlib.util
    monkeypatch.setattr(compile_cache, "_EVICTION_SAFE", None)
    safe = compile_cache.jax_eviction_is_safe()
    if importlib.util.find_spec("filelock") is None:
        assert safe is False  # JAX cannot evict at all without it
    else:
        assert safe == compile_cache._probe_eviction()


def test_in_memory_caches_are_cleared_only_past_the_share_of_memory_maps():
    import jax
    import jax.numpy as jnp
    if not os.path.exists("/proc/sys/vm/max_map_count"):
        assert compile_cache.relieve_memory_maps(0.0) is False
        return
    f = jax.jit(lambda x: x * 3 + 1)
    f(jnp.ones(3))
    assert f._cache_size() == 1
    assert compile_cache.relieve_memory_maps(1.0) is False and f._cache_size() == 1
    assert compile_cache.relieve_memory_maps(0.0) is True and f._cache_size() == 0


FLAGS_CHILD = """
import json, os, sys
from gipp_jax import compile_cache
if sys.argv[2] == "unknown":
    compile_cache._FAST_CPU_FLAGS = ("--xla_cpu_no_such_flag=1",)
added = compile_cache.use_fast_cpu_flags(sys.argv[1])
import jax.numpy as jnp
jnp.ones(1).block_until_ready()  # the backend starts with XLA_FLAGS as they are now
print(json.dumps({"added": added, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "after_start": compile_cache.use_fast_cpu_flags(sys.argv[1])}))
"""


def flags_in_child(folder, case, xla_flags):
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    run = subprocess.run([sys.executable, "-c", FLAGS_CHILD, str(folder), case], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_fast_cpu_flags_are_set_only_where_xla_knows_them(tmp_path):
    mine = "--xla_cpu_use_fusion_emitters=true"
    known = flags_in_child(tmp_path, "known", mine)
    # The user's own setting of a flag stays; the others this jaxlib accepts are added.
    assert known["added"] == [f for f in compile_cache.fast_cpu_flags() if not f.startswith(mine.split("=")[0])]
    assert known["xla_flags"].split() == [mine, *known["added"]]
    assert known["after_start"] == []  # XLA read its flags when the backend started
    # A flag this XLA does not know would end the process when the backend starts: it is
    # tried in a child process first, refused, remembered, and XLA_FLAGS left alone.
    got = flags_in_child(tmp_path, "unknown", "")
    assert got["added"] == [] and got["xla_flags"] == ""
    answers = json.loads((tmp_path / "xla-flags.json").read_text())
    assert sorted((("no_such_flag" in key), ok) for key, ok in answers.items()) == (
        [(False, True)] * bool(known["added"]) + [(True, False)])
