"""Fit methods: the log-rs scheme, gipp-fast's start, colors, growth and rates, method specs."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gipp_jax
from gipp_jax import methods, metrics
from gipp_jax import model as model_lib
from gipp_jax.parameterization import PARAMETERIZATIONS, covariance, from_covariance
from gipp_jax.train import FitConfig, Fitter, init_state, make_optimizer


def test_log_rs_is_rotated_scales_and_always_positive_definite():
    raw = jnp.array([[math.log(2.0), math.log(0.5), 0.3], [-3.0, 4.0, -7.0]], jnp.float32)
    cov = np.asarray(covariance("log-rs", raw))
    rot = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    expected = rot @ np.diag([4.0, 0.25]) @ rot.T  # R S S^T R^T by hand
    np.testing.assert_allclose(cov[0], [expected[0, 0], expected[0, 1], expected[1, 1]], rtol=1e-5)
    a, b, c = cov[1]
    assert a > 0 and c > 0 and a * c - b * b > 0


@pytest.mark.parametrize("name", PARAMETERIZATIONS)
def test_from_covariance_inverts_every_scheme(name):
    rng = np.random.default_rng(0)
    sx, sy, rho = rng.uniform(0.5, 4.0, 20), rng.uniform(0.5, 4.0, 20), rng.uniform(-0.8, 0.8, 20)
    cov3 = np.stack([sx * sx, rho * sx * sy, sy * sy], -1).astype(np.float32)
    back = np.asarray(covariance(name, from_covariance(name, cov3)))
    np.testing.assert_allclose(back, cov3, rtol=2e-4, atol=2e-4)


def test_hilbert_index_walks_the_grid_in_unit_steps():
    ys, xs = np.divmod(np.arange(64), 8)
    order = np.argsort(methods.hilbert_index(xs, ys, 3))
    assert sorted(methods.hilbert_index(xs, ys, 3).tolist()) == list(range(64))
    steps = np.abs(np.diff(xs[order])) + np.abs(np.diff(ys[order]))
    assert (steps == 1).all()  # each pixel next to the one before


def test_sample_pixels_follows_the_weights_and_spreads_out():
    weights = np.zeros((16, 16))
    weights[:, 8:] = 1.0  # only the right half may be drawn
    x, y = methods.sample_pixels(np.random.default_rng(1), weights, 32)
    assert len(set(zip(x.tolist(), y.tolist()))) == 32 and x.min() >= 8
    # Spread: each 4x4 block of the right half gets its share (4), not 1 or 8 as
    # independent draws often would.
    counts = np.zeros((4, 2), int)
    np.add.at(counts, (y // 4, (x - 8) // 4), 1)
    assert (counts == 4).all()
    # Weights twice as high draw twice as often; more draws than pixels repeat pixels.
    weights[:, 12:] = 2.0
    x, _ = methods.sample_pixels(np.random.default_rng(2), weights, 48)
    assert (x >= 12).sum() == 32
    x, y = methods.sample_pixels(np.random.default_rng(1), np.ones((3, 4)), 15)
    assert len(x) == 15 and len(set(zip(x.tolist(), y.tolist()))) == 12


def _spread_model(height, width, colors):
    """Gaussians of std 2 px on a grid 6 px apart (a well-conditioned color problem)."""
    ys, xs = np.meshgrid(np.arange(3, height, 6), np.arange(3, width, 6), indexing="ij")
    n = xs.size
    model = model_lib.init_model(jax.random.PRNGKey(0), height, width, n + 5, num_active=n,
                                 parameterization="log-rs")
    raw = from_covariance("log-rs", np.tile([[4.0, 0.0, 4.0]], (n, 1)))
    return model.replace(
        means=model.means.at[:n].set(jnp.asarray(np.stack([xs.ravel(), ys.ravel()], -1), jnp.float32)),
        cov_params=model.cov_params.at[:n].set(raw),
        colors=model.colors.at[:n].set(jnp.asarray(colors(n)))), n


def test_solve_colors_recovers_the_colors_that_made_an_image():
    truth, n = _spread_model(24, 30, lambda n: np.random.default_rng(2).uniform(0, 1, (n, 3)))
    image = np.asarray(gipp_jax.render_gaussians(truth.means[:n], jnp.asarray(
        np.tile(np.eye(2) * 4.0, (n, 1, 1))), truth.colors[:n], 24, 30))
    start = truth.replace(colors=jnp.zeros_like(truth.colors))
    solved = methods.solve_colors(start, image, 40)
    np.testing.assert_allclose(np.asarray(solved.colors[:n]), np.asarray(truth.colors[:n]), atol=2e-3)
    np.testing.assert_array_equal(np.asarray(solved.colors[n:]), 0.0)  # inactive rows untouched
    sig = methods.solve_colors(start.replace(color_activation="sigmoid"), image, 40)
    np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(sig.colors[:n])),
                               np.clip(np.asarray(truth.colors[:n]), 0.02, 0.98), atol=3e-3)


def test_gipp_fast_starts_dense_where_the_detail_is(sample_crop):
    image = np.array(sample_crop[:64, :64])
    image[:, :32] = image[:, :32].mean(axis=(0, 1))  # left half flat, right half the parrot
    config = FitConfig(num_gaussians=200, iterations=1000).validate()
    model = methods.GippFast().initial_model(config, image)
    active = np.asarray(model.active)
    assert active.sum() == 100  # half the budget, the rest grows
    x = np.asarray(model.means)[active, 0]
    assert (x >= 32).sum() > 1.5 * (x < 32).sum()  # 25% + 25% of the budget uniform, 50% on detail
    sizes = np.exp(np.asarray(model.cov_params)[active, 0])
    assert np.median(sizes[x < 32]) > 1.5 * np.median(sizes[x >= 32])  # sparse means wide


def test_gipp_fast_step_zero_is_a_blurred_photo(sample_crop):
    # Measured: 23.55 dB at step 0 for this crop and 250 Gaussians; the flat mean color 14.96 dB.
    config = FitConfig(num_gaussians=250, iterations=1000).validate()
    model = methods.GippFast().initial_model(config, sample_crop)
    flat = np.broadcast_to(sample_crop.mean(axis=(0, 1)), sample_crop.shape)
    assert float(metrics.psnr(gipp_jax.render(model), sample_crop)) > float(metrics.psnr(flat, sample_crop)) + 6.0


def test_gipp_fast_grows_at_the_error_with_the_residual_color_and_fresh_moments():
    height, width = 32, 32
    config = FitConfig(num_gaussians=60, iterations=100, caf=False).validate()
    method = config.recipe
    model = model_lib.init_model(jax.random.PRNGKey(0), height, width, 60, num_active=30,
                                 parameterization="log-rs")
    optimizer = make_optimizer(config, height, width)
    state = init_state(model, optimizer)
    ones = jax.tree_util.tree_map(lambda x: jnp.ones_like(x) if x.ndim else x, state.opt_state)
    state = state.replace(opt_state=ones, step=jnp.int32(method.growth_schedule(config)[0]))
    target = np.zeros((height, width, 3), np.float32)
    target[20:26, 4:10] = [0.8, 0.1, 0.4]  # all the error in one patch
    grown = method.grow(config, state, np.zeros_like(target), target)
    new = np.flatnonzero(np.asarray(grown.model.active) & ~np.asarray(model.active))
    assert len(new) == 8  # (60 - 30) over the four events left, rounded up
    xy = np.asarray(grown.model.means)[new]
    assert (xy[:, 0] > 1).all() and (xy[:, 0] < 13).all() and (xy[:, 1] > 17).all() and (xy[:, 1] < 29).all()
    colors = np.asarray(grown.model.colors)[new]
    assert (colors[:, 0] > colors[:, 2]).all() and (colors[:, 2] > colors[:, 1]).all()  # the residual's hue
    mu = grown.opt_state[0].mu["means"]
    assert float(jnp.abs(mu[new]).max()) == 0.0 and float(mu[0, 0]) == 1.0
    last = state.replace(step=jnp.int32(40))  # the last growth event, 0.4 of the run
    filled = method.grow(config, last, np.zeros_like(target), target)
    assert filled.model.num_active() == 60  # the last event fills the budget


def test_gipp_fast_relocates_its_idlest_gaussian_to_the_missing_detail():
    size = 32
    config = FitConfig(num_gaussians=3, iterations=100, caf=False).validate()
    method = dataclasses.replace(config.recipe, relocate_share=1 / 3, relocate_fractions=(0.5,))
    assert method.growth_schedule(config) == [10, 20, 30, 40, 50]
    assert dataclasses.replace(method, relocate_share=0.0).growth_schedule(config) == [10, 20, 30, 40]

    def blobs(centers, colors):
        model = model_lib.init_model(jax.random.PRNGKey(0), size, size, 3, parameterization="log-rs")
        cov = from_covariance("log-rs", np.tile(np.array([[4.0, 0.0, 4.0]], np.float32), (3, 1)))
        return methods._write_rows(model, np.arange(3), np.array(centers, np.float32), cov,
                                   np.array(colors, np.float32))

    red, blue = [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]
    target = np.asarray(gipp_jax.render(blobs([(8, 8), (24, 8), (24, 24)], [red, blue, red])))
    # Two blobs drawn, the third missing, one Gaussian nearly idle on a dark corner.
    model = blobs([(8, 8), (24, 8), (6, 26)], [red, blue, [0.01, 0.01, 0.01]])
    state = init_state(model, make_optimizer(config, size, size))
    ones = jax.tree_util.tree_map(lambda x: jnp.ones_like(x) if x.ndim else x, state.opt_state)
    state = state.replace(opt_state=ones, step=jnp.int32(50))
    moved = method.grow(config, state, np.asarray(gipp_jax.render(model)), target)
    means = np.asarray(moved.model.means)
    np.testing.assert_array_equal(means[:2], np.asarray(model.means)[:2])
    assert np.hypot(*(means[2] - (24, 24))) < 5  # drawn where the error is
    assert np.asarray(moved.model.colors)[2, 0] > 0.3 > np.asarray(moved.model.colors)[2, 2]  # its hue
    assert moved.model.num_active() == 3
    mu = moved.opt_state[0].mu["means"]
    assert float(jnp.abs(mu[2]).max()) == 0.0 and float(mu[0, 0]) == 1.0


def test_gipp_fast_rates_are_in_natural_units():
    config = FitConfig(num_gaussians=100, iterations=1000).validate()
    params = {"means": jnp.zeros((100, 2)), "cov_params": jnp.zeros((100, 3)), "colors": jnp.zeros((100, 3))}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    for height, width in ((40, 40), (80, 80)):
        optimizer = make_optimizer(config, height, width)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        spacing = math.sqrt(height * width / 100)
        m = methods.GippFast()
        # Adam's first step is the rate itself: positions in spacings, the rest as they are.
        assert float(updates["means"][0, 0]) == pytest.approx(-m.position_lr * spacing, rel=1e-4)
        np.testing.assert_allclose(np.asarray(updates["cov_params"][0]),
                                   [-m.scale_lr, -m.scale_lr, -m.rotation_lr], rtol=1e-4)
        assert float(updates["colors"][0, 0]) == pytest.approx(-m.color_lr, rel=1e-4)



def test_gipp_fast_runs_long_fits_slower_and_caps_the_compression_phase():
    m = methods.GippFast()
    short, long = (m.position_lr, m.scale_lr, m.rotation_lr), m.long_run_rates
    assert m.geometry_rates(600) == m.geometry_rates(1000) == short
    assert m.geometry_rates(5000) == pytest.approx(long) and m.geometry_rates(50000) == pytest.approx(long)
    # Halfway in log steps (sqrt(1000 * 5000) steps), each rate is the geometric mean.
    middle = m.geometry_rates(round(math.sqrt(1000 * 5000)))
    assert middle == pytest.approx([math.sqrt(a * b) for a, b in zip(short, long)], rel=1e-4)
    # What the optimizer applies: Adam's first step is the rate.
    config = FitConfig(num_gaussians=100, iterations=5000).validate()
    params = {"means": jnp.zeros((100, 2)), "cov_params": jnp.zeros((100, 3)), "colors": jnp.zeros((100, 3))}
    optimizer = make_optimizer(config, 40, 40)
    updates, _ = optimizer.update(jax.tree_util.tree_map(jnp.ones_like, params), optimizer.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["cov_params"][0]), [-long[1], -long[1], -long[2]], rtol=1e-4)
    assert [m.compression_steps(t) for t in (200, 1000, 5000)] == [200, 1000, 1000]
    assert methods.GaussianImagePlusPlus().compression_steps(50000) == 50000  # the reference's

def test_method_specs_name_registered_methods_and_spell_out_variants():
    assert FitConfig().method_name == "gipp-fast"
    assert FitConfig(method=methods.GippFast()).as_dict()["method"] == "gipp-fast"
    variant = FitConfig(method=methods.GippFast(start_fraction=0.8)).as_dict()["method"]
    assert variant["name"] == "gipp-fast" and variant["start_fraction"] == 0.8
    assert FitConfig(method="gaussianimage").validate().optimizer == "adan"
    assert (FitConfig(method=methods.GaussianImage()).as_dict()["method"]
            != FitConfig(method=methods.GaussianImagePlusPlus()).as_dict()["method"])
    with pytest.raises(ValueError, match="unknown method"):
        FitConfig(method="nope").validate()


def test_a_variant_object_runs_a_fit(sample_crop):
    crop = sample_crop[:24, :24]
    variant = dataclasses.replace(methods.GippFast(), start_fraction=1.0, growth_fractions=())
    state = Fitter(crop, FitConfig(num_gaussians=40, iterations=30, method=variant)).run()
    assert state.model.num_active() == 40 and int(state.step) == 30
