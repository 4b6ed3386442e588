"""Dense O(N * H * W) reference renderer, for tests and tiny images.

It applies exactly the reference rasterizer's rules (tile box, ``sigma >= 0``,
``exp(-sigma) >= 1/255``) but evaluates every Gaussian at every pixel with plain autodiff,
sharing no code with the tile rasterizer beyond :func:`~gipp_jax.raster.binning.footprint`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gipp_jax.raster.binning import MIN_WEIGHT, TILE_SIZE, carrier_phase, covariance_to_triple, footprint


def render_dense(means: jax.Array, covariances: jax.Array, colors: jax.Array,
                 height: int, width: int, carriers: jax.Array | None = None) -> jax.Array:
    """Same contract as :func:`gipp_jax.render_gaussians`, evaluated densely.

    Args:
      means: (N, 2) centers (x, y) in pixels.
      covariances: (N, 2, 2) covariance matrices in pixels^2.
      colors: (N, K) colors.
      carriers: optional (N, 3) cosine carriers ``(kx, ky, phi)``: frequency in cycles per
        pixel and phase in radians; the kept envelope weights are multiplied by
        ``cos(2 pi k.d + phi)``.
    Returns:
      (height, width, K) float32, not clamped.
    """
    cov3 = covariance_to_triple(covariances)
    fp = footprint(jax.lax.stop_gradient(means), jax.lax.stop_gradient(cov3), height, width)
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    det = a * c - b * b
    safe_det = jnp.where(fp.num_tiles > 0, det, 1.0)
    conic_a, conic_b, conic_c = c / safe_det, -b / safe_det, a / safe_det

    ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    px = xs.astype(jnp.float32)[..., None]  # (H, W, 1)
    py = ys.astype(jnp.float32)[..., None]
    dx = px - means[:, 0]
    dy = py - means[:, 1]
    sigma = 0.5 * (conic_a * dx * dx + conic_c * dy * dy) + conic_b * dx * dy
    weight = jnp.exp(-sigma)

    tx = (xs // TILE_SIZE)[..., None]
    ty = (ys // TILE_SIZE)[..., None]
    in_box = ((tx >= fp.tile_min[:, 0]) & (tx < fp.tile_max[:, 0])
              & (ty >= fp.tile_min[:, 1]) & (ty < fp.tile_max[:, 1]))
    keep = in_box & (fp.num_tiles > 0) & (sigma >= 0.0) & (weight >= MIN_WEIGHT)
    weight = jnp.where(keep, weight, 0.0)
    if carriers is not None:
        weight = weight * jnp.cos(carrier_phase(carriers[:, 0], carriers[:, 1], carriers[:, 2], dx, dy))
    return jnp.einsum("hwn,nk->hwk", weight, colors)
