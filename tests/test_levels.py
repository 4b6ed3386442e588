"""Coarse-to-fine fitting: levels, the change of coordinates, resume and batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gipp_jax import levels, metrics, render
from gipp_jax.batch import BatchFitter, unstack
from gipp_jax.methods import GippFast
from gipp_jax.model import filtered_covariance, init_model, pixel_means
from gipp_jax.train import FitConfig, Fitter

# Two levels on a 32x32 image: 16x16 for the first 40% of the run, then full size.
COARSE = GippFast(coarse_factors=(2,), coarse_fractions=(0.4,), coarse_min_side=8)
# The coarse-to-fine fits below share this config (and one worker): one compiled program.
COARSE_FIT = FitConfig(num_gaussians=100, iterations=250, chunk_steps=30, method=COARSE)


def test_downscale_averages_edge_padded_blocks():
    image = np.arange(15, dtype=np.float32).reshape(3, 5, 1)
    got = levels.downscale(image, 2)
    # Blocks of rows {0, 1}, {2, 2 (edge)} and columns {0, 1}, {2, 3}, {4, 4 (edge)}.
    want = np.array([[[3.0], [5.0], [6.5]], [[10.5], [12.5], [14.0]]], np.float32)
    np.testing.assert_allclose(got, want)
    assert levels.level_size(3, 5, 2) == (2, 3)
    assert levels.downscale(image, 1) is not None and np.array_equal(levels.downscale(image, 1), image)


@pytest.mark.parametrize("param", ["log-rs", "direct", "cholesky", "rs"])
def test_magnified_model_is_the_same_image_on_a_finer_grid(param):
    model = init_model(jax.random.PRNGKey(0), 12, 16, 30, parameterization=param)
    if param == "direct":  # the reference's raw U[0, 1)^3 need not be positive definite
        model = model.replace(cov_params=jnp.asarray([[2.0, 0.3, 1.5]] * 30, jnp.float32))
    model = model.replace(colors=jnp.asarray(np.random.default_rng(1).uniform(0, 0.2, (30, 3)), jnp.float32))
    big = levels.magnify_model(model, 4, 48, 64)
    assert (big.height, big.width) == (48, 64)
    np.testing.assert_allclose(np.asarray(pixel_means(big)), 4 * np.asarray(pixel_means(model)) + 1.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(filtered_covariance(big)), 16 * np.asarray(filtered_covariance(model)),
                               rtol=2e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(big.colors), np.asarray(model.colors))


def test_magnified_fit_renders_what_the_coarse_fit_rendered_at_its_pixels(sample_crop):
    crop = sample_crop[:32, :48]
    coarse = levels.downscale(crop, 2)
    model = Fitter(coarse, FitConfig(num_gaussians=120, iterations=200)).run().best
    fine = np.asarray(render(levels.magnify_model(model, 2, 32, 48)))
    # Each coarse pixel is the mean of a 2x2 block: the fine render, block-averaged, is the
    # coarse render up to the Gaussians' curvature within a block.
    assert float(metrics.psnr(levels.downscale(fine, 2), np.asarray(render(model)))) > 35.0


def test_adam_moments_of_the_centers_follow_the_unit():
    params = {"means": jnp.ones((3, 2)), "colors": jnp.ones((3, 3))}
    opt = optax.chain(optax.scale_by_adam(), optax.scale(-1.0))
    state = opt.init(params)
    grads = {"means": jnp.full((3, 2), 2.0), "colors": jnp.full((3, 3), 2.0)}
    _, state = opt.update(grads, state, params)
    moved = levels.magnify_moments(state, 4)
    np.testing.assert_allclose(np.asarray(moved[0].mu["means"]), np.asarray(state[0].mu["means"]) / 4)
    np.testing.assert_allclose(np.asarray(moved[0].nu["means"]), np.asarray(state[0].nu["means"]) / 16)
    np.testing.assert_array_equal(np.asarray(moved[0].nu["colors"]), np.asarray(state[0].nu["colors"]))
    assert int(moved[0].count) == int(state[0].count)


def test_levels_of_a_recipe_skip_small_images_and_check_their_knobs():
    config = FitConfig(num_gaussians=100, iterations=1000)
    two = GippFast(coarse_factors=(4, 2), coarse_fractions=(0.3, 0.2), coarse_min_side=100)
    assert two.levels(config, 512, 768) == [levels.Level(0, 4), levels.Level(300, 2), levels.Level(500, 1)]
    assert two.levels(config, 300, 451) == [levels.Level(0, 2), levels.Level(200, 1)]  # 4x: a 75-px side
    assert two.levels(config, 128, 192) == [levels.Level(0, 1)]
    assert GippFast().levels(config, 512, 768) == [levels.Level(0, 1)]  # off by default
    with pytest.raises(ValueError, match="divide"):
        GippFast(coarse_factors=(3, 2), coarse_fractions=(0.2, 0.2), coarse_min_side=1).levels(config, 64, 64)
    with pytest.raises(ValueError, match="level_schedule"):
        GippFast(level_schedule="later").levels(config, 64, 64)


@pytest.mark.xdist_group("coarse-fit")
def test_a_coarse_to_fine_fit_learns_the_image_and_resumes_mid_level(sample_crop, tmp_path):
    crop = sample_crop[:32, :32]
    config = COARSE_FIT
    fitter = Fitter(crop, config)
    assert fitter.levels == [levels.Level(0, 2), levels.Level(100, 1)]
    reference = fitter.run()
    assert (reference.best.height, reference.best.width) == (32, 32)
    psnr = float(metrics.psnr(render(reference.best), crop))
    assert psnr == pytest.approx(float(reference.best_psnr), abs=1e-3)  # the best is a full-size one
    assert psnr > 30.0
    ckpt = tmp_path / "ckpt.npz"
    for crash_at in (2, 5):  # after 60 steps (coarse level), after 130 (full size, past the change)
        calls = {"n": 0}

        def crashing(state):  # called with each chunk's state before it is saved
            calls["n"] += 1
            if calls["n"] == crash_at + 1:
                raise KeyboardInterrupt

        first = Fitter(crop, config, checkpoint_path=ckpt, checkpoint_seconds=0.0, on_chunk=crashing)
        with pytest.raises(KeyboardInterrupt):
            first.run()
        resumed = Fitter(crop, config, checkpoint_path=ckpt)
        state = resumed.run()
        assert int(state.step) == 250
        np.testing.assert_array_equal(np.asarray(state.best.means), np.asarray(reference.best.means))
        assert float(state.best_psnr) == float(reference.best_psnr)
        ckpt.unlink()


@pytest.mark.xdist_group("coarse-fit")
def test_batch_fit_with_levels_matches_single_fits(sample_crop):
    images = np.stack([sample_crop[:32, :32], sample_crop[40:72, 50:82]])
    config = COARSE_FIT
    state = BatchFitter(images, config).run()
    for i in range(2):
        single = Fitter(images[i], config).run()
        batched = unstack(state.best, i)
        assert (batched.height, batched.width) == (32, 32)
        psnr_batch = float(metrics.psnr(render(batched), images[i]))
        assert psnr_batch == pytest.approx(float(metrics.psnr(render(single.best), images[i])), abs=0.5)
        assert psnr_batch > 28.0
