"""gipp-jax: images as 2D Gaussian splats, GaussianImage++ in JAX.

The public API::

    import gipp_jax
    model = gipp_jax.fit(image)                         # (H, W, 3) in [0, 1]; gipp fit's 600 steps
    model = gipp_jax.fit(image, num_gaussians=5000, iterations=2000)
    model = gipp_jax.fit(image, method="gaussianimage++")               # the authors' recipe
    models = gipp_jax.fit_batch(images, num_gaussians=5000)              # one program per size
    image = gipp_jax.render(model, height, width)                       # clamped render
    raw = gipp_jax.render_gaussians(means, covariances, colors, h, w)   # low level, unclamped
"""

from gipp_jax import methods, metrics
from gipp_jax.batch import fit_batch
from gipp_jax.model import GaussianModel, init_model
from gipp_jax.raster import render, render_gaussians
from gipp_jax.train import FitConfig, fit

__version__ = "0.1.0"

__all__ = [
    "FitConfig",
    "GaussianModel",
    "__version__",
    "fit",
    "fit_batch",
    "init_model",
    "methods",
    "metrics",
    "render",
    "render_gaussians",
]
