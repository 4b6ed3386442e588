"""Primitives with a cosine carrier: every renderer against the dense reference, the
gradients of the carrier against finite differences, and ``k = 0`` as today's Gaussian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax import quantize as q_lib
from gipp_jax.parameterization import triple_to_matrix
from gipp_jax.raster import host, measure_usage, render_dense, render_gaussians, render_with_stats
from gipp_jax.raster.binning import covariance_to_triple

from test_render import max_err, probe_near, random_gaussians


def random_carriers(rng, n, max_frequency=0.5):
    """(N, 3) carriers: frequencies up to ``max_frequency`` cycles per pixel (0.5: the
    pixel grid's Nyquist limit), any phase."""
    k = rng.uniform(-max_frequency, max_frequency, (n, 2))
    return np.concatenate([k, rng.uniform(-np.pi, np.pi, (n, 1))], 1).astype(np.float32)


CASES = {
    # name: (height, width, count, margin, scale, max frequency, seed)
    "straddling borders": (37, 53, 120, 12.0, 3.0, 0.3, 0),
    "wide": (32, 40, 10, 5.0, 30.0, 0.2, 1),
    "thin": (3, 70, 40, 4.0, 2.0, 0.3, 2),
    "high frequency": (40, 48, 60, 5.0, 4.0, 0.5, 3),
}


@pytest.mark.parametrize("case", CASES)
def test_tile_and_host_renders_equal_dense(case):
    h, w, n, margin, scale, frequency, seed = CASES[case]
    rng = np.random.default_rng(seed)
    means, cov, colors = random_gaussians(rng, n, h, w, margin=margin, scale=scale)
    carriers = random_carriers(rng, n, frequency)
    dense = render_dense(means, cov, colors, h, w, jnp.asarray(carriers))
    assert max_err(render_gaussians(means, cov, colors, h, w, carriers=carriers, backend="xla"), dense) < 1e-5
    geo = host.geometry(means, np.asarray(covariance_to_triple(cov)), h, w, carriers)
    assert max_err(host.render(geo, colors, h, w), dense) < 1e-5
    # The carrier changes the image: the test would catch a carrier dropped on the way.
    assert max_err(dense, render_dense(means, cov, colors, h, w)) > 0.1


def test_zero_carrier_is_the_plain_gaussian_and_no_carrier_is_traced_without_one():
    rng = np.random.default_rng(4)
    h, w = 30, 44
    means, cov, colors = random_gaussians(rng, 80, h, w)
    plain = render_gaussians(means, cov, colors, h, w)
    zero = render_gaussians(means, cov, colors, h, w, carriers=np.zeros((80, 3), np.float32))
    assert max_err(plain, zero) == 0.0
    cov3 = covariance_to_triple(cov)

    def program(carriers):
        def loss(m):
            return jnp.sum(render_with_stats(m, cov3, colors, h, w, 4096, backend="xla", carriers=carriers)[0])
        return str(jax.make_jaxpr(jax.value_and_grad(loss))(jnp.asarray(means)))

    # The XLA rasterizer's carrier reduces its phase with a round (xla.cos_sin); nothing
    # else in the render does.
    assert " round" not in program(None)
    assert " round" in program(jnp.zeros((80, 3)))


def test_gradients_match_dense_reference():
    rng = np.random.default_rng(5)
    h, w = 40, 50
    means, cov, colors = random_gaussians(rng, 80, h, w, margin=5.0)
    carriers = jnp.asarray(random_carriers(rng, 80, 0.4))
    weights = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)

    def loss(renderer):
        return lambda m, c, k, f: jnp.sum(weights * jnp.sin(renderer(m, c, k, f)))

    tile = loss(lambda m, c, k, f: render_gaussians(m, c, k, h, w, carriers=f, pair_capacity=8192, backend="xla"))
    dense = loss(lambda m, c, k, f: render_dense(m, c, k, h, w, f))
    args = (jnp.asarray(means), cov, jnp.asarray(colors), carriers)
    for name, gt, gd in zip(("means", "covariances", "colors", "carriers"),
                            jax.grad(tile, (0, 1, 2, 3))(*args), jax.grad(dense, (0, 1, 2, 3))(*args)):
        scale = float(jnp.max(jnp.abs(gd)))
        assert scale > 0, name
        assert max_err(gt, gd) < 1e-4 * scale, name


def test_carrier_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    h, w = 24, 24
    means = np.array([[7.3, 8.7], [17.2, 16.4]], np.float32)
    cov = np.array([[[6.0, 1.5], [1.5, 4.0]], [[5.0, -0.5], [-0.5, 5.0]]], np.float32)
    colors = rng.uniform(0.2, 1.0, (2, 3)).astype(np.float32)
    weights = probe_near(rng, means, h, w)

    def loss(x):
        m, f = x[:4].reshape(2, 2), x[4:].reshape(2, 3)
        return jnp.sum(weights * render_gaussians(m, cov, colors, h, w, carriers=f, pair_capacity=64))

    x0 = np.concatenate([means.ravel(), [0.11, -0.07, 0.4, 0.2, 0.15, -1.3]]).astype(np.float64)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(x0, jnp.float32)))
    for i, eps in enumerate([1e-2] * 4 + [1e-3, 1e-3, 1e-2] * 2):
        e = np.zeros_like(x0)
        e[i] = eps
        fd = (float(loss(jnp.asarray(x0 + e, jnp.float32))) - float(loss(jnp.asarray(x0 - e, jnp.float32)))) / (2 * eps)
        assert abs(fd - grad[i]) <= 3e-3 * max(1.0, abs(fd)), (i, fd, grad[i])


def test_the_kernels_draw_carriers_under_the_interpreter():
    h, w, n = 21, 37, 30
    rng = np.random.default_rng(8)
    means, cov, colors = random_gaussians(rng, n, h, w, margin=12.0)
    carriers = jnp.asarray(random_carriers(rng, n, 0.5))
    weights = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)
    cov3 = covariance_to_triple(cov)
    pairs, chunks = measure_usage(means, cov3, h, w)

    def image_and_grads(render):
        def loss(m, c, k, f):
            image = render(m, c, k, f)
            return jnp.sum(weights * jnp.sin(image)), image
        grads, image = jax.grad(loss, (0, 1, 2, 3), has_aux=True)(jnp.asarray(means), cov3, jnp.asarray(colors),
                                                                   carriers)
        return (image,) + grads

    kernel = image_and_grads(lambda m, c, k, f: render_with_stats(m, c, k, h, w, int(pairs), int(chunks),
                                                                  backend="pallas", carriers=f)[0])
    dense = image_and_grads(lambda m, c, k, f: render_dense(m, triple_to_matrix(c), k, h, w, f))
    for name, a, b in zip(("image", "means", "covariances", "colors", "carriers"), kernel, dense):
        assert max_err(a, b) < 2e-5 * max(1.0, float(jnp.max(jnp.abs(b)))), name


# ---------------------------------------------------------------------------------------
# The carrier search, the fit method, files


def test_best_atom_recovers_the_carrier_that_made_a_residual():
    from gipp_jax.carriers import best_atoms
    h, w, sigma = 48, 48, 4.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    k, phi, color = np.array([0.19, -0.11]), 0.7, np.array([0.3, 0.1, 0.2])
    dx, dy = xx - 20, yy - 25
    atom = np.exp(-0.5 * (dx ** 2 + dy ** 2) / sigma ** 2) * np.cos(2 * np.pi * (k[0] * dx + k[1] * dy) + phi)
    residual = (atom[..., None] * color).astype(np.float32)
    found = best_atoms(residual, np.array([20]), np.array([25]), sigma)
    # (k, phi) and (-k, -phi) are the same atom: compare frequencies up to the sign.
    sign = np.sign(found.carriers[0, 0] * k[0])
    np.testing.assert_allclose(sign * found.carriers[0, :2], k, atol=1.0 / 64)  # half the grid's step
    fk, fphi = found.carriers[0, :2], found.carriers[0, 2]
    drawn = np.exp(-0.5 * (dx ** 2 + dy ** 2) / sigma ** 2) * np.cos(2 * np.pi * (fk[0] * dx + fk[1] * dy) + fphi)
    drawn = drawn[..., None] * found.colors[0]
    # The search grid's step is 1/32 cycle per pixel for this envelope (the fit refines it):
    # up to 1/64 off, a fraction of a period over the envelope.
    assert np.sqrt(np.sum((drawn - residual) ** 2) / np.sum(residual ** 2)) < 0.35
    assert found.carrier_energy[0] > 10 * found.plain_energy[0]
    # A smooth blob: the plain Gaussian takes out more, by more than a carrier costs (3/8).
    blob = (np.exp(-0.5 * (dx ** 2 + dy ** 2) / sigma ** 2)[..., None] * color).astype(np.float32)
    found = best_atoms(blob, np.array([20]), np.array([25]), sigma)
    assert found.plain_energy[0] > 1.5 * found.carrier_energy[0]


def _grating(h=48, w=48, amplitude=0.2):
    """A textured image: a diagonal grating (period 5 px) over a smooth ramp."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.3 + 0.4 * xx / w
    wave = amplitude * np.cos(2 * np.pi * (0.16 * xx + 0.12 * yy))
    return np.clip(np.stack([base + wave, base, base - 0.5 * wave], -1), 0, 1).astype(np.float32)


def test_gipp_gabor_beats_gipp_fast_on_texture_at_an_equal_count_of_numbers():
    from gipp_jax import metrics, model as model_lib
    from gipp_jax.train import FitConfig, Fitter, best_model
    image = _grating(32, 32)
    psnr, models = {}, {}
    for method in ("gipp-fast", "gipp-gabor"):
        fitter = Fitter(image, FitConfig(num_gaussians=20, iterations=100, method=method))
        models[method] = model = best_model(fitter.run())
        psnr[method] = float(metrics.psnr(fitter.render(model), image))
    gabor = models["gipp-gabor"]
    carried = model_lib.num_carriers(gabor)
    assert carried > 0 and models["gipp-fast"].carriers is None
    assert gabor.num_active() + 3 / 8 * carried <= 20 + 1e-6  # the same numbers as 20 Gaussians
    # Measured: 40.3 against 20.9 dB (a grating costs plain Gaussians one per period).
    assert psnr["gipp-gabor"] > psnr["gipp-fast"] + 5.0, psnr


def test_a_model_with_carriers_survives_its_file_and_a_bad_field_is_refused(tmp_path):
    import jax.numpy as jnp_
    from gipp_jax import model as model_lib, render
    from gipp_jax.io import InputError, load_model, save_model
    rng = np.random.default_rng(9)
    model = model_lib.init_model(jax.random.PRNGKey(1), 20, 24, 16, num_active=12, parameterization="log-rs",
                                 color_init="uniform")
    model = model.replace(carriers=jnp_.asarray(random_carriers(rng, 16, 0.3)),
                          cov_params=model.cov_params + jnp_.array([1.0, 1.0, 0.0]))
    save_model(tmp_path / "m.npz", model)
    loaded = load_model(tmp_path / "m.npz")
    assert max_err(render(loaded), render(model)) < 1e-6
    assert max_err(render(loaded), render(model.replace(carriers=None))) > 1e-3  # the carriers were kept
    with np.load(tmp_path / "m.npz") as data:
        arrays = dict(data)
    for bad in (arrays["carriers"][:, :2], np.full_like(arrays["carriers"], np.nan)):
        np.savez(tmp_path / "bad.npz", **{**arrays, "carriers": bad})
        with pytest.raises(InputError, match="corrupt"):
            load_model(tmp_path / "bad.npz")


def test_compression_writes_carriers_and_info_counts_them(capsys, tmp_path):
    from PIL import Image
    from gipp_jax import bitstream
    from gipp_jax.cli import main
    path = tmp_path / "t.png"
    Image.fromarray((_grating(16, 16) * 255).astype(np.uint8)).save(path)
    code = main(["compress", str(path), "-o", str(tmp_path / "t.gipp"), "--method", "gipp-gabor",
                 "--gaussians", "10", "--iters", "40"])
    assert code == 0
    data = bitstream.decode((tmp_path / "t.gipp").read_bytes())
    assert data.carriers is not None and data.carrier_bits == (q_lib.FREQUENCY_BITS, q_lib.PHASE_BITS)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "t.gipp")]) == 0
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["format"] == "version 7" and fields["carriers"].startswith(f"{data.num_carriers} (frequency {q_lib.FREQUENCY_BITS}")


def test_magnified_carriers_keep_their_image():
    from gipp_jax import model as model_lib, render
    from gipp_jax.levels import magnify_model
    rng = np.random.default_rng(10)
    model = model_lib.init_model(jax.random.PRNGKey(2), 16, 20, 8, parameterization="log-rs", color_init="uniform")
    model = model.replace(carriers=jnp.asarray(random_carriers(rng, 8, 0.2)),
                          cov_params=model.cov_params + jnp.array([1.0, 1.0, 0.0]))
    fine = magnify_model(model, 2, 32, 40)
    # magnify_model keeps pixel centers (x -> 2 x + 1/2), render's resize scales coordinates
    # (x -> 2 x): half a pixel apart, the same continuous image.
    resized = np.asarray(render(model, 32, 40))
    assert max_err(render(fine.replace(means=fine.means - 0.5)), resized) < 1e-4
    assert max_err(render(fine.replace(carriers=None, means=fine.means - 0.5)), resized) > 1e-2


def test_the_kernels_with_carriers_lower_for_cuda():
    from gipp_jax.raster import pallas_gpu
    from gipp_jax.raster.binning import bin_gaussians, footprint
    rng = np.random.default_rng(11)
    h, w = 40, 48
    means, cov, colors = random_gaussians(rng, 30, h, w)
    fp = footprint(jnp.asarray(means), covariance_to_triple(cov), h, w)
    bins = bin_gaussians(fp, h, w, 4096)
    carriers = jnp.asarray(random_carriers(rng, 30))

    def loss(m, p, k, f):
        return jnp.sum(pallas_gpu.rasterize(m, p, k, bins, h, w, False, f) ** 2)

    args = (jnp.asarray(means), fp.precisions, jnp.asarray(colors), carriers)
    for fn in (lambda m, p, k, f: pallas_gpu.rasterize(m, p, k, bins, h, w, False, f),
               jax.grad(loss, (0, 1, 2, 3))):
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text


def test_the_first_carrier_quantizer_by_hand():
    from gipp_jax.carriers import carrier_bits, quantize
    from gipp_jax.entropy import empirical_bits as entropy_bits
    # (k, phi) and (-k, -phi) are one atom: stored with kx >= 0.
    codes, values = quantize(np.array([[-0.1, 0.2, 1.0], [0.3, 0.0, 3.0]]), frequency_bits=4, phase_bits=6)
    step = 2 * np.pi / 64
    # 0.1 / (1/16) = 1.6 -> 2; -0.2 * 16 = -3.2 -> -3; -1.0 / step = -10.2 -> -10, stored mod 64.
    np.testing.assert_array_equal(codes[0], [2, -3, 54])
    np.testing.assert_allclose(values[0], [2 / 16, -3 / 16, -10 * step], rtol=1e-6)
    np.testing.assert_allclose(values[1], [5 / 16, 0.0, 31 * step], rtol=1e-6)  # 0.3 * 16 = 4.8; 3 / step = 30.6
    assert entropy_bits([0, 0, 1, 1]) == 4.0 and entropy_bits([7, 7, 7]) == 0.0
    # Two equal carriers among four primitives: the flags' 4 bits, codes of one symbol each free.
    same = np.array([[0.1, 0.1, 0.5], [0.1, 0.1, 0.5]])
    assert carrier_bits(same, 4) == 4.0
    assert carrier_bits(np.zeros((0, 3)), 4) == 0.0


def test_gipp_gabor_places_a_carrier_on_a_grating_and_keeps_its_budget():
    from gipp_jax import model as model_lib
    from gipp_jax.train import FitConfig, init_state, make_optimizer
    image = _grating(32, 32)
    config = FitConfig(num_gaussians=24, iterations=100, method="gipp-gabor").validate()
    method = config.recipe
    model = method.initial_model(config, image)
    assert model.carriers is not None and model_lib.num_carriers(model) == 0  # starts plain
    state = init_state(model, make_optimizer(config, 32, 32))
    state = state.replace(step=jnp.int32(method.growth_schedule(config)[0]))
    ramp = _grating(32, 32, amplitude=0.0)
    grown = method.grow(config, state, ramp, image)  # the residual: the grating alone
    new = np.flatnonzero(np.asarray(grown.model.active) & ~np.asarray(model.active))
    carried = np.asarray(grown.model.carriers)[new]
    textured = np.any(carried != 0.0, axis=-1)
    assert textured.any()
    # The grating's frequency, up to the sign of (k, phi) and the search grid's 1/64.
    k = np.abs(carried[textured, :2])
    assert np.all(np.abs(k - [0.16, 0.12]) <= 1 / 64 + 1e-6), k
    assert method.budget_used(grown.model) <= 12 + 3 + 1e-6  # 12 at the start, 12 over four events
    # Relocating every primitive gives back the carriers' share of the budget; freed rows are plain.
    every = np.flatnonzero(np.asarray(grown.model.active))
    moved = method._place(config, grown, every, image - ramp, every.size)
    free = ~np.asarray(moved.model.active)
    assert np.all(np.asarray(moved.model.carriers)[free] == 0.0)
    assert method.budget_used(moved.model) <= method.budget_used(grown.model) + 1e-6
