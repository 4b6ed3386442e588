"""The tile renderer against the dense reference, and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax.parameterization import triple_to_matrix
from gipp_jax.raster import (CapacityOverflowError, count_pairs, render_dense, render_gaussians,
                             render_with_stats)
from gipp_jax.raster.binning import bin_gaussians, footprint


def random_gaussians(rng, n, height, width, margin=20.0, scale=3.0):
    """Gaussians spread over and beyond the image, PSD covariances of mixed sizes."""
    means = rng.uniform([-margin, -margin], [width + margin, height + margin], (n, 2))
    l11 = rng.uniform(0.3, scale, n)
    l22 = rng.uniform(0.3, scale, n)
    l21 = rng.uniform(-scale, scale, n)
    cov = np.stack([l11 ** 2, l11 * l21, l21 ** 2 + l22 ** 2], -1)
    colors = rng.uniform(-1.0, 1.0, (n, 3))
    return (means.astype(np.float32), triple_to_matrix(jnp.asarray(cov, jnp.float32)),
            colors.astype(np.float32))


def max_err(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


@pytest.mark.parametrize("height,width", [(48, 64), (37, 53), (1, 1), (3, 70), (70, 2)])
def test_tile_equals_dense(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    means, cov, colors = random_gaussians(rng, 200, height, width)
    tile = render_gaussians(means, cov, colors, height, width)
    dense = render_dense(means, cov, colors, height, width)
    assert tile.shape == (height, width, 3)
    assert max_err(tile, dense) < 1e-5
    assert float(jnp.max(jnp.abs(dense))) > 0.1  # something was drawn


def test_host_renders_of_nearby_counts_share_one_program():
    """Rows are padded to a bucket (with culled Gaussians): a decoder or a pruning loop that
    renders N, then N - 1 Gaussians compiles once, and each image is still exact."""
    from gipp_jax import raster
    from gipp_jax.raster.binning import covariance_to_triple
    rng = np.random.default_rng(5)
    means, cov, colors = random_gaussians(rng, 23, 21, 27)  # shapes no other test renders
    cov3 = np.asarray(covariance_to_triple(cov))
    dense = jax.jit(render_dense, static_argnums=(3, 4))
    programs = []
    for n in (23, 22, 17):
        image = raster.render_triples(means[:n], cov3[:n], colors[:n], 21, 27)
        programs.append(raster._render_jit._cache_size())
        assert max_err(image, dense(means[:n], cov[:n], colors[:n], 21, 27)) < 1e-5
    assert programs[1] == programs[2] == programs[0]


def test_gaussians_larger_than_image_and_straddling_borders():
    rng = np.random.default_rng(1)
    h, w = 40, 56
    means = np.array([[28.0, 20.0], [-3.0, 10.0], [58.0, 41.0], [0.0, 0.0], [55.5, -0.5]], np.float32)
    cov3 = np.array([[4000.0, 300.0, 2500.0], [30.0, 5.0, 20.0], [50.0, -20.0, 40.0],
                     [9.0, 0.0, 9.0], [1e5, 0.0, 1e5]], np.float32)
    colors = rng.uniform(0, 1, (5, 3)).astype(np.float32)
    cov = triple_to_matrix(jnp.asarray(cov3))
    tile = render_gaussians(means, cov, colors, h, w)
    dense = render_dense(means, cov, colors, h, w)
    assert max_err(tile, dense) < 1e-5
    # The huge Gaussians cover every pixel.
    assert float(jnp.min(jnp.abs(dense[..., 0]))) > 0.0


def test_more_than_a_thousand_gaussians_in_one_tile():
    rng = np.random.default_rng(2)
    h, w = 32, 32
    n = 1500
    means = rng.uniform(2.0, 14.0, (n, 2)).astype(np.float32)  # all centred in tile (0, 0)
    cov = triple_to_matrix(jnp.tile(jnp.array([[2.0, 0.3, 1.5]]), (n, 1)))
    colors = rng.uniform(0, 1e-3, (n, 3)).astype(np.float32)
    tile = render_gaussians(means, cov, colors, h, w)
    dense = render_dense(means, cov, colors, h, w)
    assert max_err(tile, dense) < 1e-5
    # The reference's 256-per-tile cap would lose most of this energy.
    capped = render_dense(means[:256], cov[:256], colors[:256], h, w)
    assert float(jnp.sum(tile)) > 3.0 * float(jnp.sum(capped))


def test_reference_rules_cull_and_threshold():
    h, w = 16, 16
    means = np.array([[8.0, 8.0], [8.0, 8.0]], np.float32)
    cov3 = jnp.array([[4.0, 2.0, 1.0],   # det == 0: culled
                      [1.0, 0.0, 1.0]])
    colors = np.ones((2, 3), np.float32)
    img = render_gaussians(means, triple_to_matrix(cov3), colors, h, w)
    # Only the second Gaussian draws; exp(-0.5 r^2) below 1/255 is dropped.
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-0.5 * ((xx - 8.0) ** 2 + (yy - 8.0) ** 2))
    expected = np.where(g >= 1 / 255, g, 0.0)
    np.testing.assert_allclose(np.asarray(img[..., 0]), expected, atol=1e-6)


def test_tile_box_rule_matches_reference_formula():
    # Radius ceil(3 sqrt(lambda_max)) with lambda = m + sqrt(max(0.1, m^2 - det)).
    cov3 = jnp.array([[10.0, 0.0, 1.0]])
    fp = footprint(jnp.array([[40.0, 20.0]]), cov3, 64, 96)
    radius = np.ceil(3 * np.sqrt(5.5 + np.sqrt(max(0.1, 5.5 ** 2 - 10.0))))  # = 10
    lo = [int(40 / 16 - radius / 16), int(20 / 16 - radius / 16)]
    hi = [int(40 / 16 + radius / 16 + 1), int(20 / 16 + radius / 16 + 1)]
    assert fp.tile_min.tolist() == [lo] and fp.tile_max.tolist() == [hi]


def rotated_covariances(angle, long_sd, short_sd):
    """(N, 2, 2) covariances with standard deviations ``long_sd`` along ``angle`` (radians)
    and ``short_sd`` across it, each (N,)."""
    rot = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1),
                    np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    return rot @ (np.stack([long_sd, short_sd], -1)[:, :, None] ** 2 * np.eye(2)) @ np.swapaxes(rot, -1, -2)


def needles_and_wide(rng, n, height, width):
    """Thin Gaussians at every angle (standard deviations 0.5-1 by 10-40 px) and wide
    round ones (5-25 px): the shapes whose square tile box they mostly do not reach."""
    means = rng.uniform([-10.0, -10.0], [width + 10.0, height + 10.0], (n, 2))
    angle = rng.uniform(0.0, np.pi, n)
    long_sd = np.where(np.arange(n) % 2 == 0, rng.uniform(10.0, 40.0, n), rng.uniform(5.0, 25.0, n))
    short_sd = np.where(np.arange(n) % 2 == 0, rng.uniform(0.5, 1.0, n), long_sd)
    cov = rotated_covariances(angle, long_sd, short_sd)
    # No color near zero: a pair wrongly skipped loses at least 0.5/255 at some pixel.
    colors = rng.choice([-1.0, 1.0], (n, 3)) * rng.uniform(0.5, 1.0, (n, 3))
    return means.astype(np.float32), jnp.asarray(cov, jnp.float32), colors.astype(np.float32)


def float64_render(means, cov3, colors, height, width):
    """The renderer's rules (tile box, ``sigma >= 0``, weight >= 1/255) evaluated in float64
    NumPy from (N, 3) covariances ``(a, b, c)`` given in float64."""
    fp = footprint(jnp.asarray(means, jnp.float32), jnp.asarray(cov3, jnp.float32), height, width)
    tmin, tmax = np.asarray(fp.tile_min), np.asarray(fp.tile_max)
    a, b, c = cov3[:, 0], cov3[:, 1], cov3[:, 2]
    det = a * c - b * b
    ys, xs = np.mgrid[0:height, 0:width]
    dx = xs[..., None] - np.asarray(means, np.float64)[:, 0]
    dy = ys[..., None] - np.asarray(means, np.float64)[:, 1]
    sigma = 0.5 * (c * dx * dx - 2 * b * dx * dy + a * dy * dy) / det
    tx, ty = (xs // 16)[..., None], (ys // 16)[..., None]
    keep = ((tx >= tmin[:, 0]) & (tx < tmax[:, 0]) & (ty >= tmin[:, 1]) & (ty < tmax[:, 1])
            & (sigma >= 0) & (np.exp(-sigma) >= 1 / 255))
    return np.einsum("hwn,nk->hwk", np.where(keep, np.exp(-sigma), 0.0), colors)


def test_needles_drawn_right_when_the_render_computes_their_covariances():
    """Needles 60-120 px long and 0.3-0.6 px wide at every angle, rendered from a model
    inside one program (as a training step does: covariances computed in the render's
    program) and host-side (covariances given): both match float64. A needle's ``det`` is
    a difference of products 1e4 times larger; when the compiler rounded it differently for
    each entry of the inverse covariance, pixels here were off by up to 0.94."""
    from gipp_jax import model as model_lib
    from gipp_jax.raster import Capacity, model_attributes, model_usage, render_model, render_triples
    rng = np.random.default_rng(21)
    h, w, n = 64, 96, 64
    means = rng.uniform([0.0, 0.0], [w, h], (n, 2)).astype(np.float32)
    raw = np.stack([np.log(rng.uniform(0.3, 0.6, n)), np.log(rng.uniform(30.0, 60.0, n)),
                    rng.uniform(-np.pi, np.pi, n)], -1).astype(np.float32)
    colors = (rng.choice([-1.0, 1.0], (n, 3)) * rng.uniform(0.5, 1.0, (n, 3))).astype(np.float32)
    model = model_lib.init_model(jax.random.PRNGKey(0), h, w, n, parameterization="log-rs").replace(
        means=jnp.asarray(means), cov_params=jnp.asarray(raw), colors=jnp.asarray(colors))
    r64 = raw.astype(np.float64)
    v1, v2, cos, sin = np.exp(2 * r64[:, 0]), np.exp(2 * r64[:, 1]), np.cos(r64[:, 2]), np.sin(r64[:, 2])
    cov64 = np.stack([cos * cos * v1 + sin * sin * v2, cos * sin * (v1 - v2), sin * sin * v1 + cos * cos * v2], -1)
    want = float64_render(means, cov64, colors, h, w)
    pairs, chunks = model_usage(model)
    in_program = jax.jit(render_model, static_argnums=1)(model, Capacity.fit(pairs, chunks, backend="xla"))[0]
    given = render_triples(*(np.asarray(x) for x in model_attributes(model)), h, w, backend="xla")
    assert float(np.abs(want).max()) > 0.5
    for got in (in_program, given):
        # float32 covariances carry a needle's width to ~1e-3, and a weight at the 1/255
        # cut-off may fall on either side.
        assert np.abs(np.asarray(got, np.float64) - want).max() < 0.01


def test_bins_hold_each_reachable_pair_once_and_skip_the_rest_of_the_box():
    rng = np.random.default_rng(3)
    h, w = 64, 80
    means, cov, _ = needles_and_wide(rng, 60, h, w)
    from gipp_jax.raster.binning import MIN_WEIGHT, covariance_to_triple, tile_reachable
    from gipp_jax.raster.binning import count_pairs as count_box_pairs
    cov3 = covariance_to_triple(cov)
    fp = footprint(jnp.asarray(means), cov3, h, w)
    bins = bin_gaussians(fp, h, w, pair_capacity=8192, chunk_size=8)
    got = set()
    for tile, slots in zip(np.asarray(bins.chunk_tiles), np.asarray(bins.chunk_gaussians)):
        for g in slots[slots < 60]:
            assert (int(tile), int(g)) not in got
            got.add((int(tile), int(g)))
    box, reach = set(), set()
    tmin, tmax = np.asarray(fp.tile_min), np.asarray(fp.tile_max)
    inverse = np.linalg.inv(np.asarray(cov, np.float64))
    for g in range(60):
        for ty in range(tmin[g, 1], tmax[g, 1]):
            for tx in range(tmin[g, 0], tmax[g, 0]):
                box.add((ty * 5 + tx, g))
                ys, xs = np.mgrid[ty * 16:min(ty * 16 + 16, h), tx * 16:min(tx * 16 + 16, w)]
                d = np.stack([xs - means[g, 0], ys - means[g, 1]], -1).astype(np.float64)
                weight = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inverse[g], d))
                if np.any(weight >= MIN_WEIGHT):
                    reach.add((ty * 5 + tx, g))
    assert reach <= got <= box
    assert len(got) < 0.7 * len(box)  # most of the needles' boxes are skipped
    assert len(got) <= 1.2 * len(reach)  # and little that is never drawn is kept
    # The row spans miss no tile the exact per-tile rule keeps: the same pairs as testing
    # every tile of every box.
    pairs = sorted(box, key=lambda tg: tg[1])
    rule = tile_reachable(jnp.asarray(means)[np.array([g for _, g in pairs])], fp.precisions[np.array([g for _, g in pairs])],
                          jnp.asarray([[t % 5, t // 5] for t, _ in pairs]))
    assert got == {p for p, keep in zip(pairs, np.asarray(rule)) if keep}
    # The capacity counts the spans' candidates: a few more than the pairs kept.
    assert int(bins.num_pairs) == int(count_box_pairs(fp, h, w))
    assert len(got) <= int(bins.num_pairs) < 0.8 * len(box)
    assert int(bins.num_chunks) == sum(-(-sum(1 for t, _ in got if t == tile) // 8)
                                       for tile in {t for t, _ in got})


def test_bins_do_not_depend_on_the_block_or_the_buffer_sizes(monkeypatch):
    # Candidates are tested and placed block by block, skipping the blocks past the pairs
    # in use; a tile's Gaussians must come in index order whatever the block and buffers.
    from gipp_jax.raster import binning
    from gipp_jax.raster.binning import covariance_to_triple
    from gipp_jax.raster.binning import count_pairs as count_span_pairs
    rng = np.random.default_rng(5)
    h, w = 64, 80
    means, cov, _ = needles_and_wide(rng, 60, h, w)
    fp = footprint(jnp.asarray(means), covariance_to_triple(cov), h, w)
    need = int(count_span_pairs(fp, h, w))
    one_block = bin_gaussians(fp, h, w, need, chunk_size=8)  # the default block holds them all
    chunks = int(one_block.num_chunks) + 5
    want = bin_gaussians(fp, h, w, need, chunks, chunk_size=8)
    assert need > 7 * 4
    used = int(want.num_chunks)
    tiles, slots = np.asarray(want.chunk_tiles)[:used], np.asarray(want.chunk_gaussians)[:used]
    for tile in np.unique(tiles):
        listed = slots[tiles == tile].reshape(-1)
        listed = listed[listed < 60]
        assert len(listed) and np.all(np.diff(listed) > 0)
    for block, pairs in ((7, need), (7, 3 * need + 5), (64, 2 * need)):
        monkeypatch.setattr(binning, "BIN_BLOCK", block)
        got = jax.jit(lambda f, pairs=pairs: bin_gaussians(f, h, w, pairs, chunks, chunk_size=8))(fp)
        for field in ("chunk_gaussians", "chunk_tiles", "num_pairs", "num_chunks", "tile_chunks"):
            np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)))


def test_row_spans_keep_every_pair_the_per_tile_rule_keeps_on_extreme_shapes():
    # Needles 0.05-0.3 px thin and 50-400 px long at every angle (their determinants lose
    # most of their float32 digits), huge and tiny round ones, over and around the image.
    rng = np.random.default_rng(8)
    h, w, n = 150, 230, 120
    means = rng.uniform([-60.0, -60.0], [w + 60.0, h + 60.0], (n, 2)).astype(np.float32)
    angle = rng.uniform(0.0, np.pi, n)
    long_sd = np.where(np.arange(n) % 3 == 0, rng.uniform(50.0, 400.0, n), rng.uniform(0.2, 80.0, n))
    short_sd = np.where(np.arange(n) % 3 == 0, rng.uniform(0.05, 0.3, n), long_sd)
    cov = rotated_covariances(angle, long_sd, short_sd)
    from gipp_jax.raster.binning import covariance_to_triple, tile_grid, tile_reachable
    from gipp_jax.raster.binning import count_pairs as count_span_pairs
    cov3 = covariance_to_triple(jnp.asarray(cov, jnp.float32))
    fp = footprint(jnp.asarray(means), cov3, h, w)
    need = int(count_span_pairs(fp, h, w))
    bins = bin_gaussians(fp, h, w, pair_capacity=need, chunk_size=8)
    assert int(bins.num_pairs) == need
    _, cols = tile_grid(h, w)
    got = {(int(t), int(g)) for t, slots in zip(np.asarray(bins.chunk_tiles), np.asarray(bins.chunk_gaussians))
           for g in slots[slots < n]}
    tmin, tmax = np.asarray(fp.tile_min), np.asarray(fp.tile_max)
    box = [(ty * cols + tx, g) for g in range(n) for ty in range(tmin[g, 1], tmax[g, 1])
           for tx in range(tmin[g, 0], tmax[g, 0])]
    rule = tile_reachable(jnp.asarray(means)[np.array([g for _, g in box])], fp.precisions[np.array([g for _, g in box])],
                          jnp.asarray([[t % cols, t // cols] for t, _ in box]))
    want = {p for p, keep in zip(box, np.asarray(rule)) if keep}
    assert got == want
    assert len(want) < 0.6 * len(box)


def test_skipping_unreached_tiles_changes_no_pixel_nor_gradient():
    rng = np.random.default_rng(11)
    h, w = 70, 90
    means, cov, colors = needles_and_wide(rng, 80, h, w)
    tile = render_gaussians(means, cov, colors, h, w)
    dense = render_dense(means, cov, colors, h, w)
    # Sums of many overlapping Gaussians round differently in another order (a few 1e-5).
    assert max_err(tile, dense) < 2e-5 * max(1.0, float(jnp.max(jnp.abs(dense))))
    probe = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)

    def loss(render):
        return lambda m, c, k: jnp.sum(render(m, c, k, h, w) * probe)

    need = count_pairs(means, cov, h, w)  # under a trace the capacity must be given

    def tiled(*args):
        return render_gaussians(*args, pair_capacity=need)

    got = jax.grad(loss(tiled), argnums=(0, 1, 2))(jnp.asarray(means), cov, jnp.asarray(colors))
    want = jax.grad(loss(render_dense), argnums=(0, 1, 2))(jnp.asarray(means), cov, jnp.asarray(colors))
    for g, r in zip(got, want):
        assert max_err(g, r) < 1e-3 * max(1.0, float(jnp.max(jnp.abs(r))))


def test_overflow_is_reported_never_silent():
    rng = np.random.default_rng(4)
    h, w = 48, 48
    means, cov, colors = random_gaussians(rng, 100, h, w)
    need = count_pairs(means, cov, h, w)
    with pytest.raises(CapacityOverflowError):
        render_gaussians(means, cov, colors, h, w, pair_capacity=need // 2)
    from gipp_jax.raster.binning import covariance_to_triple
    render = jax.jit(render_with_stats, static_argnums=(3, 4, 5, 6))  # one program, not op by op
    _, usage = render(jnp.asarray(means), covariance_to_triple(cov), jnp.asarray(colors), h, w, need // 2, 4)
    assert int(usage[0]) == need and int(usage[1]) > 4  # the caller can see it must grow
    # Under jit an overflow poisons the image instead of dropping Gaussians.
    poisoned = jax.jit(lambda m: render_gaussians(m, cov, colors, h, w, pair_capacity=need // 2))(means)
    assert bool(jnp.all(jnp.isnan(poisoned)))


def loss_of(renderer, h, w, weights):
    def loss(means, cov, colors):
        return jnp.sum(weights * jnp.sin(renderer(means, cov, colors, h, w)))
    return loss


def test_gradients_match_dense_reference():
    rng = np.random.default_rng(5)
    h, w = 40, 50
    means, cov, colors = random_gaussians(rng, 80, h, w, margin=5.0)
    weights = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)
    grads_tile = jax.grad(loss_of(render_gaussians, h, w, weights), (0, 1, 2))(means, cov, colors)
    grads_dense = jax.grad(loss_of(render_dense, h, w, weights), (0, 1, 2))(means, cov, colors)
    for gt, gd in zip(grads_tile, grads_dense):
        scale = float(jnp.max(jnp.abs(gd)))
        assert scale > 0
        assert max_err(gt, gd) < 1e-4 * scale


def probe_near(rng, means, h, w, radius=4.0):
    """(h, w, 3) random loss weights on the pixels within ``radius`` px of a center only.
    The render jumps where a pixel crosses the 1/255 cut-off; well inside every Gaussian's
    cut-off, the loss these weights make is smooth, as finite differences need."""
    yy, xx = np.mgrid[0:h, 0:w]
    near = np.zeros((h, w), bool)
    for mx, my in means:
        near |= (xx - mx) ** 2 + (yy - my) ** 2 <= radius ** 2
    return jnp.asarray(rng.normal(size=(h, w, 3)) * near[..., None], jnp.float32)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    h, w = 24, 24
    means = np.array([[7.3, 8.7], [17.2, 16.4]], np.float32)
    cov3 = np.array([[6.0, 1.5, 4.0], [3.0, -0.5, 5.0]], np.float32)
    colors = rng.uniform(0.2, 1.0, (2, 3)).astype(np.float32)
    weights = probe_near(rng, means, h, w)

    def loss(x):
        m, c3, k = x[:4].reshape(2, 2), x[4:10].reshape(2, 3), x[10:].reshape(2, 3)
        img = render_gaussians(m, triple_to_matrix(c3), k, h, w, pair_capacity=64)
        return jnp.sum(weights * img)

    x0 = np.concatenate([means.ravel(), cov3.ravel(), colors.ravel()]).astype(np.float64)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(x0, jnp.float32)))
    eps = 1e-2
    for i in range(x0.size):
        e = np.zeros_like(x0)
        e[i] = eps
        fd = (float(loss(jnp.asarray(x0 + e, jnp.float32))) - float(loss(jnp.asarray(x0 - e, jnp.float32)))) / (2 * eps)
        assert abs(fd - grad[i]) <= 2e-3 * max(1.0, abs(fd)), (i, fd, grad[i])


def test_vmap_and_jit():
    rng = np.random.default_rng(7)
    h, w = 20, 30
    batch = [random_gaussians(rng, 30, h, w) for _ in range(3)]
    means = jnp.stack([b[0] for b in batch])
    cov = jnp.stack([b[1] for b in batch])
    colors = jnp.stack([b[2] for b in batch])
    out = jax.jit(jax.vmap(lambda m, c, k: render_gaussians(m, c, k, h, w, pair_capacity=2048)))(means, cov, colors)
    for i in range(3):
        assert max_err(out[i], render_dense(means[i], cov[i], colors[i], h, w)) < 1e-5


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        render_gaussians(np.zeros((3, 3)), np.zeros((3, 2, 2)), np.zeros((3, 3)), 4, 4)
    with pytest.raises(ValueError):
        render_gaussians(np.zeros((3, 2)), np.zeros((3, 2, 2)), np.zeros((3, 3)), 0, 4)
    empty = render_gaussians(np.zeros((0, 2)), np.zeros((0, 2, 2)), np.zeros((0, 3)), 4, 5)
    assert empty.shape == (4, 5, 3) and float(jnp.abs(empty).max()) == 0.0


def test_chunks_rendered_in_blocks_give_the_same_image_and_gradients(monkeypatch):
    # Small scenes render in one pass; large ones loop over blocks of chunks (the last one
    # padded), skipping the blocks past the chunks in use. Forced here on a small scene, with
    # a block size that divides neither the buffer nor the chunks in use, and a buffer
    # (the worst case) several blocks longer than the use.
    from gipp_jax.raster import xla
    from gipp_jax.raster.binning import bin_gaussians, covariance_to_triple, footprint, max_chunks
    rng = np.random.default_rng(12)
    h, w = 40, 56
    means, cov, colors = random_gaussians(rng, 150, h, w)
    cov3 = covariance_to_triple(cov)
    need = count_pairs(means, cov, h, w)
    probe = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)
    render = jax.jit(render_with_stats, static_argnums=(3, 4, 5, 6))  # one program, not op by op
    used = int(render(jnp.asarray(means), cov3, jnp.asarray(colors), h, w, need, None)[1][1])
    assert used % 3 and max_chunks(need, h, w, 16) % 3 and max_chunks(need, h, w, 16) > used + 2 * 3

    def image_and_grads(chunks):
        # The rasterizer's forward and backward passes themselves (what its custom VJP
        # calls), traced anew on every call, so that the block settings of the moment apply.
        def run(m, c, k):
            fp = footprint(m, c, h, w)
            bins = bin_gaussians(fp, h, w, need, chunks)
            return (xla._forward(m, fp.precisions, k, None, bins, h, w),
                    xla._backward(m, fp.precisions, k, None, bins, h, w, probe)[:3])
        return jax.jit(run)(jnp.asarray(means), cov3, jnp.asarray(colors))

    image, grads = image_and_grads(None)
    monkeypatch.setattr(xla, "MIN_BLOCKED_CHUNKS", 0)
    monkeypatch.setattr(xla, "CHUNK_BLOCK", 3)
    for chunks in (None, used):  # blocks past the use skipped; a padded last block computed
        image_blocked, grads_blocked = image_and_grads(chunks)
        assert max_err(image_blocked, image) < 1e-5
        for a, b in zip(grads_blocked, grads):
            assert max_err(a, b) < 1e-4 * max(1.0, float(jnp.max(jnp.abs(b))))
