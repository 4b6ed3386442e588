import atexit
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

from gipp_jax.cli import sample_image_path
from gipp_jax.compile_cache import enable_compilation_cache, relieve_memory_maps, use_fast_cpu_flags
from gipp_jax.io import load_image

# One compilation cache for the whole run, in a fresh folder (never the user's): fits with
# the same shapes in different tests then compile once. Set before anything compiles. The
# processes of one pytest-xdist run share the folder (a program one compiled, the others
# load). JAX writes an entry in place, so a process that reads one while another writes it
# gets a warning and compiles the program itself (pyproject.toml ignores that warning).
_XDIST_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _XDIST_RUN:
    _CACHE = os.path.join(tempfile.gettempdir(), f"gipp-jax-test-xla-{_XDIST_RUN}")
    os.makedirs(_CACHE, exist_ok=True)
else:
    _CACHE = tempfile.mkdtemp(prefix="gipp-jax-test-xla-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
enable_compilation_cache(_CACHE)
# The XLA:CPU flags of the command line, which compile the suite's programs in about 0.6 of
# the time; set in the xdist controller before its workers start, they inherit them (as do
# the commands tests run).
use_fast_cpu_flags(_CACHE)


def pytest_sessionfinish(session):
    """The xdist controller (the process without ``workerinput``) removes the shared cache
    folder once every worker is done."""
    if _XDIST_RUN and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_CACHE, ignore_errors=True)

# XLA:CPU's asynchronous dispatch can hang a process for good in a long run of tests
# (jax-ml/jax#25861; seen here once in the bench smoke suite, whose Pallas interpreter makes
# host callbacks): the tests run every computation synchronously.
if "jax_cpu_enable_async_dispatch" in jax.config.values:
    jax.config.update("jax_cpu_enable_async_dispatch", False)


@pytest.fixture(autouse=True)
def _few_memory_maps():
    """After each test, JAX's in-memory caches are cleared if the process holds too many
    memory maps (every compiled XLA:CPU program keeps hundreds; a whole run would exceed
    Linux's limit and crash in mmap). Fits do the same check before they start."""
    yield
    relieve_memory_maps()


@pytest.fixture(scope="session")
def sample_crop() -> np.ndarray:
    """A 128x128 crop of the bundled Kodak image (a parrot's head: edges and flat areas)."""
    return load_image(sample_image_path())[200:328, 300:428]
