"""Compiling less and faster: a persistent cache of compiled XLA programs, and XLA:CPU
compiler flags, for the command line and the tools.

Every fit traces and compiles its training step anew (a fresh closure per fit); on a CPU
that costs 10-30 s per ``gipp fit``/``gipp compress`` run, often more than a short fit
itself. With JAX's persistent compilation cache a program compiled once, in any process,
is loaded from disk the next time the same computation at the same shapes comes up.

XLA:CPU's defaults are not the fastest for these programs (:func:`use_fast_cpu_flags`):
its loop emitters compile a fit's programs in about 0.6 of the time its fusion emitters
take, and on a CPU with AVX-512 its loops in 512-bit vectors run a full-size training step
in about 0.8 of the time.

The library never turns either on by itself (importing ``gipp_jax`` changes no global JAX
setting); ``gipp`` and the tools in ``tools/`` call :func:`enable_compilation_cache` and
:func:`use_fast_cpu_flags`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

ENV_VAR = "GIPP_JAX_CACHE_DIR"  # a folder; "" or "off" turns the cache off
MIN_COMPILE_SECONDS = 0.2        # programs that compile faster are not worth a file
MAX_CACHE_BYTES = 2 << 30        # least recently used entries go beyond this


def default_cache_dir() -> Path:
    """``$GIPP_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/gipp-jax/xla`` (``~/.cache`` by default)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gipp-jax" / "xla"


def usable_cache_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The folder to cache in: ``path``, else :func:`default_cache_dir`; None when the
    cache is turned off (``GIPP_JAX_CACHE_DIR`` set to ``""`` or ``off``, and no ``path``)
    or the folder cannot be created and written (a read-only home, a full disk)."""
    if path is None and os.environ.get(ENV_VAR, None) in ("", "off"):
        return None
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError:
        return None
    return folder


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Points JAX's persistent compilation cache at :func:`usable_cache_dir` and returns
    the folder in use, or None when it stays off. A cache folder the user already gave JAX
    (``JAX_COMPILATION_CACHE_DIR``) is kept. Call it before the first compilation: JAX
    reads the setting once.

    The folder is kept under :data:`MAX_CACHE_BYTES`: by JAX's own least-recently-used
    eviction where it is safe (``filelock`` installed, and a JAX whose eviction survives an
    entry without its ``-atime`` record), else by removing the oldest entries here, once,
    before the run. In jax 0.10.2 one entry without its record (a process killed between
    JAX's two writes, or two processes sharing the folder) makes every later write of an
    evicting cache fail (jax-ml/jax#39880): there the cache is never capped by JAX."""
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    folder = usable_cache_dir(path)
    if folder is not None:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        if jax_eviction_is_safe():
            jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
        else:
            evict_oldest(folder, MAX_CACHE_BYTES)
    return folder


_ENTRY, _ATIME = "-cache", "-atime"  # JAX's names: KEY-cache holds a program, KEY-atime its last use


def evict_oldest(folder: str | os.PathLike, max_bytes: int) -> int:
    """Removes the least recently used entries of a cache folder (by their ``-atime``
    record, else their modification time) until it holds at most ``max_bytes``. Returns
    the number removed."""
    folder = Path(folder)
    entries = []
    for entry in folder.glob(f"*{_ENTRY}"):
        record = folder / (entry.name[: -len(_ENTRY)] + _ATIME)
        try:
            size = entry.stat().st_size
            used = (int.from_bytes(record.read_bytes()[:8], "little") if record.exists()
                    else entry.stat().st_mtime_ns)
        except OSError:
            continue
        entries.append((used, size, entry, record))
    total = sum(size for _, size, _, _ in entries)
    removed = 0
    for _, size, entry, record in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        entry.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        total -= size
        removed += 1
    return removed


def jax_eviction_is_safe() -> bool:
    """Whether JAX's LRU eviction can be turned on here: ``filelock`` is installed and
    this JAX's eviction survives an entry without its ``-atime`` record (jax 0.10.2's
    raises ``FileNotFoundError`` on every later write, jax-ml/jax#39880). Probed once, on a
    scratch folder."""
    global _EVICTION_SAFE
    if _EVICTION_SAFE is None:
        _EVICTION_SAFE = importlib.util.find_spec("filelock") is not None and _probe_eviction()
    return _EVICTION_SAFE


_EVICTION_SAFE: bool | None = None


def _probe_eviction() -> bool:
    try:
        from jax._src.lru_cache import LRUCache
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / f"orphan{_ENTRY}").write_bytes(b"x" * 16)
            LRUCache(scratch, max_size=8).put("new", b"y")
    except Exception:  # noqa: BLE001 - any failure means: do not rely on it
        return False
    return True


# Every XLA:CPU executable kept alive holds a few hundred memory maps (measured: about 300
# per training program with jax 0.10.2), and Linux allows a process 65530 by default: a
# process that compiles some hundreds of programs (many fits of different sizes, a test
# run) then fails in mmap, as a segmentation fault inside XLA. Beyond this share of the
# limit, JAX's in-memory caches are cleared (programs recompile, or load from the
# persistent cache).
MAP_SHARE = 0.5


def relieve_memory_maps(share: float = MAP_SHARE) -> bool:
    """Clears JAX's in-memory compilation caches when this process holds more than
    ``share`` of the memory maps Linux allows it; returns whether it did. Elsewhere (no
    ``/proc``) does nothing. Cheap enough to call before every fit."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open(f"/proc/{os.getpid()}/maps", "rb") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return False
    if used <= share * limit:
        return False
    import gc
    jax.clear_caches()
    gc.collect()
    return True


# XLA:CPU flags (docs/studies/platform.md, "XLA:CPU flags"): the loop emitters compile a
# full-size training chunk in ~1.4 s where the fusion emitters take ~2.3 s, and run it as
# fast; 512-bit vectors, where the CPU has them, take a full-size step from ~36 to ~29 ms.
_FAST_CPU_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)
_AVX512_FLAGS = ("--xla_cpu_prefer_vector_width=512",)
_PROBES = "xla-flags.json"  # in the cache folder: which flag sets this jaxlib accepted


def fast_cpu_flags() -> tuple[str, ...]:
    """The XLA:CPU flags :func:`use_fast_cpu_flags` sets on this machine."""
    return _FAST_CPU_FLAGS + (_AVX512_FLAGS if _has_avx512() else ())


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def use_fast_cpu_flags(folder: str | os.PathLike | None) -> tuple[str, ...]:
    """Adds :func:`fast_cpu_flags` to ``XLA_FLAGS`` for this process and the processes it
    starts; returns the flags added. Call it before anything computes: XLA reads
    ``XLA_FLAGS`` once, when its CPU backend starts (after that, nothing is added).

    XLA ends the process on a flag it does not know, and its flags change between
    versions: the set is first tried in a child process, once per jaxlib version, and the
    answer kept in ``folder`` (the compilation cache's; None: nothing is added). A flag
    the user already gives in ``XLA_FLAGS``, with any value, is left as the user set it.
    """
    if folder is None or _backend_started():
        return ()
    current = os.environ.get("XLA_FLAGS", "")
    named = {word.split("=")[0] for word in current.split()}
    flags = tuple(f for f in fast_cpu_flags() if f.split("=")[0] not in named)
    combined = " ".join([current, *flags]).strip()
    if not flags or not _accepted(Path(folder), flags, combined):
        return ()
    os.environ["XLA_FLAGS"] = combined
    return flags


def _backend_started() -> bool:
    """Whether XLA has started a backend in this process (and so read its flags); True
    where this JAX does not say."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True


def _accepted(folder: Path, flags: tuple[str, ...], xla_flags: str) -> bool:
    """Whether this jaxlib starts its CPU backend with ``flags`` (``xla_flags``: the whole
    ``XLA_FLAGS`` that would hold them): remembered in ``folder``, else tried in a child
    process (about a second) and remembered."""
    import jaxlib
    key = f"jaxlib {jaxlib.__version__}: {' '.join(flags)}"
    record = folder / _PROBES
    try:
        answers = json.loads(record.read_text())
    except (OSError, ValueError):
        answers = {}
    if not isinstance(answers, dict):
        answers = {}
    if isinstance(answers.get(key), bool):
        return answers[key]
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    try:
        ok = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"], env=env,
                            capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    answers[key] = ok
    try:  # written whole or not at all: processes sharing the folder may race
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
            json.dump(answers, f, indent=1, sort_keys=True)
        os.replace(f.name, record)
    except OSError:
        pass
    return ok
