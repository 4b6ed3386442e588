"""A persistent cache of compiled XLA programs for the command line and the tools.

Every fit traces and compiles its training step anew (a fresh closure per fit); on a CPU
that costs 10-30 s per ``gipp fit``/``gipp compress`` run, often more than a short fit
itself. With JAX's persistent compilation cache a program compiled once, in any process,
is loaded from disk the next time the same computation at the same shapes comes up.

The library never turns it on by itself (importing ``gipp_jax`` changes no global JAX
setting); ``gipp`` and the tools in ``tools/`` call :func:`enable_compilation_cache`.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import jax

ENV_VAR = "GIPP_JAX_CACHE_DIR"  # a folder; "" or "off" turns the cache off
MIN_COMPILE_SECONDS = 0.5        # programs that compile faster are not worth a file
MAX_CACHE_BYTES = 2 << 30        # least recently used entries go beyond this (with filelock)


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
    reads the setting once."""
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    folder = usable_cache_dir(path)
    if folder is not None:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        if importlib.util.find_spec("filelock") is not None:  # JAX needs it to evict entries
            jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
    return folder
