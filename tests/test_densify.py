"""D3 growth and pruning over fixed-budget buffers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gipp_jax import densify, train
from gipp_jax.model import caf_variance, init_model
from gipp_jax.parameterization import covariance
from gipp_jax.raster import _render_and_solve, render
from gipp_jax.train import FitConfig, Fitter


def ones_like_adam(model):
    state = optax.adam(0.1).init(model.trainable())
    return jax.tree_util.tree_map(lambda x: jnp.ones_like(x) if x.ndim else x, state)


def adam_moments(opt_state):
    mu, nu = opt_state[0].mu, opt_state[0].nu
    return mu, nu


def test_growth_lands_on_the_worst_pixels():
    h, w, budget = 12, 20, 30
    model = init_model(jax.random.PRNGKey(0), h, w, budget, num_active=10, parameterization="cholesky")
    opt = ones_like_adam(model)
    target = np.random.default_rng(0).uniform(0, 1, (h, w, 3)).astype(np.float32)
    rendered = target.copy()
    worst = [(3, 7, 0.9), (15, 2, 0.8), (0, 11, 0.7), (19, 0, 0.6)]  # (x, y, L1 error)
    for x, y, err in worst:
        rendered[y, x, 0] = target[y, x, 0] - err / 2
        rendered[y, x, 2] = target[y, x, 2] + err / 2
    grown = densify.grow(model, opt, rendered, target, 4, rng=np.random.default_rng(1),
                         new_color="target")
    assert grown.added == 4
    rows = np.arange(10, 14)  # the first free rows
    np.testing.assert_array_equal(np.asarray(grown.model.means[rows]), [[x, y] for x, y, _ in worst])
    np.testing.assert_allclose(np.asarray(grown.model.colors[rows]), [target[y, x] for x, y, _ in worst])
    assert np.asarray(grown.model.active).sum() == 14 and bool(grown.model.active[rows].all())
    np.testing.assert_allclose(np.asarray(grown.model.filter_var[rows]), float(caf_variance(h, w, 14)))
    # Old rows keep their filter variance (fixed at birth).
    np.testing.assert_array_equal(np.asarray(grown.model.filter_var[:10]), np.asarray(model.filter_var[:10]))
    for moment in adam_moments(grown.opt_state):
        for leaf in jax.tree_util.tree_leaves(moment):
            assert float(jnp.abs(leaf[rows]).max()) == 0.0          # grown rows start fresh
            assert float(jnp.abs(leaf[:10]).min()) == 1.0           # others untouched
    assert int(grown.opt_state[0].count) == int(opt[0].count)       # the step count is shared


def test_growth_with_zero_color_and_no_filter():
    model = init_model(jax.random.PRNGKey(0), 8, 8, 6, num_active=2, parameterization="rs")
    target = np.full((8, 8, 3), 0.5, np.float32)
    rendered = np.zeros_like(target)
    grown = densify.grow(model, ones_like_adam(model), rendered, target, 3,
                         rng=np.random.default_rng(0), new_color="zero", caf=False)
    assert grown.added == 3
    # All pixels tie: the first pixels in row-major order win.
    np.testing.assert_array_equal(np.asarray(grown.model.means[2:5]), [[0, 0], [1, 0], [2, 0]])
    assert float(jnp.abs(grown.model.colors[2:5]).max()) == 0.0
    assert float(jnp.abs(grown.model.filter_var[2:5]).max()) == 0.0


def test_direct_candidates_that_are_not_positive_definite_are_dropped():
    model = init_model(jax.random.PRNGKey(0), 16, 16, 200, num_active=1, parameterization="direct")
    target = np.random.default_rng(2).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    rendered = np.zeros_like(target)
    raw = densify.new_cov_params(np.random.default_rng(5), "direct", 150)
    a, b, c = raw.T
    expected = int(np.sum((a > 0) & (c > 0) & (a * c - b * b > 0)))
    assert 0 < expected < 150
    grown = densify.grow(model, ones_like_adam(model), rendered, target, 150, rng=np.random.default_rng(5))
    assert grown.added == expected
    cov = covariance("direct", grown.model.cov_params[1:1 + expected])
    assert bool(densify.is_positive_definite(cov).all())


def test_prune_removes_exactly_the_non_positive_definite():
    model = init_model(jax.random.PRNGKey(0), 16, 16, 6, num_active=5, parameterization="direct")
    raw = jnp.array([[1.0, 0.0, 1.0],     # PD
                     [1.0, 2.0, 1.0],     # det < 0
                     [-3.0, 0.0, 1.0],    # a < 0 (the filter of 0 cannot save it)
                     [2.0, 1.0, 1.0],     # PD
                     [1.0, 1.0, 1.0],     # det == 0
                     [-1.0, 5.0, -1.0]])  # inactive: stays inactive, moments untouched
    model = model.replace(cov_params=raw, filter_var=jnp.zeros(6))
    opt = ones_like_adam(model)
    pruned, opt2, count = densify.prune(model, opt)
    np.testing.assert_array_equal(np.asarray(pruned.active), [True, False, False, True, False, False])
    assert int(count) == 3
    mu, _ = adam_moments(opt2)
    np.testing.assert_array_equal(np.asarray(mu["means"][:, 0]), [1, 0, 0, 1, 0, 1])
    # The filter variance counts: s = 0.5 turns [[-0.2, 0], [0, 1]] into a PD matrix.
    saved, _, _ = densify.prune(model.replace(cov_params=raw.at[2, 0].set(-0.2),
                                              filter_var=jnp.full(6, 0.5)), opt)
    assert bool(saved.active[2])


def test_growth_counts():
    assert densify.growth_count("code", 2500, 5000, 1000, last=False) == 1000
    assert densify.growth_count("code", 4500, 5000, 1000, last=False) == 500
    assert densify.growth_count("paper", 2500, 5000, 1000, last=False) == 1250
    assert densify.growth_count("code", 3000, 5000, 1000, last=True) == 2000  # fills M
    assert densify.growth_count("paper", 3000, 5000, 1000, last=True) == 2000
    with pytest.raises(ValueError):
        densify.growth_count("doubling", 1, 5, 1, last=False)


def test_growth_schedule_scales_with_the_run():
    assert densify.growth_steps(50000) == list(range(5000, 50000, 5000))
    assert densify.growth_steps(5000) == list(range(500, 5000, 500))


@pytest.mark.parametrize("method, events", [("gaussianimage++", 9), ("gipp-fast", 7)])  # 4 + 3 relocations
def test_fit_with_growth_and_pruning_compiles_once(sample_crop, method, events):
    crop = sample_crop[:32, :48]
    config = FitConfig(num_gaussians=80, iterations=300, parameterization="direct", chunk_steps=50,
                       method=method)
    fitter = Fitter(crop, config)
    counts = []
    inner = fitter._grow

    def spy(state):
        counts.append(state.model.num_active())
        new = inner(state)
        counts.append(new.model.num_active())
        return new

    fitter._grow = spy
    state = fitter.run()
    assert len(fitter.growth_steps) == events and len(counts) == 2 * events  # every growth event ran
    assert counts[0] <= 40 and counts[-1] > counts[0]
    if method == "gipp-fast":  # growth fills the budget, relocation keeps it full (GaussianImage++
        assert counts[-1] == 80  # drops non-PD candidates)
    assert config.prune_every == 1  # pruning ran inside every step of the compiled chunks
    assert fitter.chunk_fn._cache_size() == 1
    assert float(state.best_psnr) > 15.0
    # The final render goes through the program the growth events rendered with (and, for
    # gipp-fast, the color solve of its start), and draws what the renderer sized to the
    # model draws.
    renders = _render_and_solve._cache_size()
    final = fitter.render(state.best)
    assert _render_and_solve._cache_size() == renders
    np.testing.assert_allclose(final, np.asarray(render(state.best)), atol=1e-6)
