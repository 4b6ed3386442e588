"""The Mosaic GPU kernels: run on CPU under Mosaic GPU's interpreter against the XLA
rasterizer and the dense reference, and lowered for CUDA without a GPU."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax.raster import pallas_gpu, render_dense, render_gaussians, render_with_stats
from gipp_jax.raster.binning import bin_gaussians, covariance_to_triple, footprint

from test_render import random_gaussians


def rel_err(a, b):
    """Max difference relative to the larger of 1 and the reference's largest value:
    images in [0, 1] are compared absolutely, larger gradients relatively."""
    scale = max(1.0, float(jnp.max(jnp.abs(jnp.asarray(b)))))
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b)))) / scale


def grads(backend, means, cov, colors, h, w, weights):
    def loss(m, c, k):
        return jnp.sum(weights * jnp.sin(render_gaussians(m, c, k, h, w, backend=backend,
                                                          pair_capacity=8192)))
    return jax.grad(loss, (0, 1, 2))(means, cov, colors)


CASES = {
    # name: (height, width, Gaussians, margin, scale, seed)
    "odd size, straddling borders": (37, 45, 60, 12.0, 3.0, 0),
    "larger than the image": (20, 36, 12, 5.0, 40.0, 1),
    "thin": (3, 50, 20, 4.0, 2.0, 2),
}


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_xla_and_dense(case):
    h, w, n, margin, scale, seed = CASES[case]
    rng = np.random.default_rng(seed)
    means, cov, colors = random_gaussians(rng, n, h, w, margin=margin, scale=scale)
    weights = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)
    out = render_gaussians(means, cov, colors, h, w, backend="pallas")
    # The generator draws some nearly singular covariances, whose sigma = d^T Sigma^-1 d
    # cancels large terms: float32 rounding (and where each compiler fuses multiply-adds)
    # then shows at ~1e-5. Well-conditioned Gaussians agree far closer.
    assert rel_err(out, render_gaussians(means, cov, colors, h, w, backend="xla")) < 3e-5
    assert rel_err(out, render_dense(means, cov, colors, h, w)) < 3e-5
    g_kernel = grads("pallas", means, cov, colors, h, w, weights)
    g_xla = grads("xla", means, cov, colors, h, w, weights)
    g_dense = jax.grad(lambda m, c, k: jnp.sum(weights * jnp.sin(render_dense(m, c, k, h, w))),
                       (0, 1, 2))(means, cov, colors)
    for name, gk, gx, gd in zip(("means", "covariances", "colors"), g_kernel, g_xla, g_dense):
        assert rel_err(gk, gd) < 5e-5, name  # float32 both; conditioning as above
        # The XLA backward's moment expansion costs covariance gradients some float32
        # precision (see xla.py::_backward); the rest agree to 1e-5.
        assert rel_err(gk, gx) < (3e-4 if name == "covariances" else 1e-5), name


def test_kernel_with_hundreds_of_gaussians_in_one_tile():
    h, w, n = 16, 32, 1100
    rng = np.random.default_rng(11)
    means = rng.uniform(3.0, 12.0, (n, 2)).astype(np.float32)
    cov = jnp.tile(jnp.array([[[2.0, 0.3], [0.3, 1.5]]]), (n, 1, 1))
    colors = rng.uniform(0, 1e-3, (n, 3)).astype(np.float32)
    out = render_gaussians(means, cov, colors, h, w, backend="pallas")
    assert rel_err(out, render_dense(means, cov, colors, h, w)) < 1e-5


def test_kernel_under_vmap_and_jit():
    h, w = 18, 20
    rng = np.random.default_rng(3)
    batch = [random_gaussians(rng, 15, h, w) for _ in range(2)]
    stack = [jnp.stack([b[i] for b in batch]) for i in range(3)]
    fn = jax.jit(jax.vmap(lambda m, c, k: render_gaussians(m, c, k, h, w, backend="pallas",
                                                           pair_capacity=1024)))
    out = fn(*stack)
    for i in range(2):
        assert rel_err(out[i], render_dense(*batch[i], h, w)) < 1e-5


def _bins_and_args(h=40, w=48, n=30):
    rng = np.random.default_rng(4)
    means, cov, colors = random_gaussians(rng, n, h, w)
    means = jnp.asarray(means)
    fp = footprint(means, covariance_to_triple(cov), h, w)
    bins = bin_gaussians(fp, h, w, 4096)
    return means, fp.precisions, jnp.asarray(colors), bins, h, w


def test_kernels_lower_for_cuda():
    means, precisions, colors, bins, h, w = _bins_and_args()

    def loss(m, c, k):
        return jnp.sum(pallas_gpu.rasterize(m, c, k, bins, h, w, False) ** 2)

    for fn in (lambda m, c, k: pallas_gpu.rasterize(m, c, k, bins, h, w, False),
               jax.grad(loss, (0, 1, 2))):
        text = jax.jit(fn).trace(means, precisions, colors).lower(lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text


def test_auto_backend_picks_the_kernel_on_cuda_only():
    means, _, colors, _, h, w = _bins_and_args()
    cov3 = jnp.tile(jnp.array([[4.0, 0.5, 3.0]]), (means.shape[0], 1))

    def fn(m):
        return render_with_stats(m, cov3, colors, h, w, 4096)[0]

    cuda = jax.jit(fn).trace(means).lower(lowering_platforms=("cuda",)).as_text()
    cpu = jax.jit(fn).trace(means).lower(lowering_platforms=("cpu",)).as_text()
    assert "mosaic_gpu" in cuda and "mosaic_gpu" not in cpu


def test_forced_kernels_follow_the_platform_they_are_lowered_for():
    """``backend="pallas"`` lowered for CUDA holds the compiled kernels, lowered for the CPU
    the interpreter's callbacks (not the host's backend: this host has no GPU), forward, its
    gradient and under vmap."""
    means, _, colors, _, h, w = _bins_and_args()
    cov3 = jnp.tile(jnp.array([[4.0, 0.5, 3.0]]), (means.shape[0], 1))

    def render(m):
        return render_with_stats(m, cov3, colors, h, w, 4096, backend="pallas")[0]

    for fn, arg in ((render, means), (jax.grad(lambda m: jnp.sum(render(m) ** 2)), means),
                    (jax.vmap(render), jnp.stack([means, means + 1.0]))):
        cuda = jax.jit(fn).trace(arg).lower(lowering_platforms=("cuda",)).as_text()
        cpu = jax.jit(fn).trace(arg).lower(lowering_platforms=("cpu",)).as_text()
        assert "mosaic_gpu" in cuda and "callback" not in cuda
        assert "mosaic_gpu" not in cpu and "callback" in cpu


def test_no_triton_anywhere():
    """Neither the Pallas Triton backend nor Triton itself is ever imported. (``import jax``
    alone loads jaxlib's ``gpu_triton`` registration stub; that is jax's, not ours.)"""
    import pathlib
    import re
    sources = pathlib.Path(__file__).parents[1].joinpath("gipp_jax").rglob("*.py")
    for path in sources:
        assert not re.search(r"^\s*(from|import)\s+\S*triton", path.read_text(), re.M), path
    code = (
        "import sys, pkgutil, importlib, gipp_jax\n"
        "for m in pkgutil.walk_packages(gipp_jax.__path__, 'gipp_jax.'):\n"
        "    importlib.import_module(m.name)\n"
        "import gipp_jax.raster as r, jax.numpy as jnp\n"
        "r.render_gaussians(jnp.zeros((1, 2)), jnp.eye(2)[None], jnp.ones((1, 3)), 4, 4, backend='pallas')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'triton' or 'pallas.triton' in m]\n"
        "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
