"""The entropy models: costs against the range coder's real output, round trips, and the
priors and predictors by hand."""

import constriction
import numpy as np
import pytest

from gipp_jax import entropy

_RNG = np.random.default_rng(11)
_SKEWED = np.minimum(_RNG.geometric(0.15, 3000) - 1, 99)  # a peaked channel over 100 symbols


def _models_and_symbols():
    """(model, symbols) for each model, on symbols that it codes well and badly."""
    gaps = np.sort(_RNG.choice(1 << 20, 2500, replace=False))
    return [
        (entropy.AdaptiveCategorical(100, entropy.discretised_gaussian(5.0, 6.0, 100)), _SKEWED),
        # A prior far from the data: the counts must take over.
        (entropy.AdaptiveCategorical(100, entropy.discretised_gaussian(80.0, 2.0, 100)), _SKEWED),
        (entropy.AdaptiveCategorical(2, np.array([0.5, 0.5]), 1.0), (_RNG.random(1000) < 0.1).astype(int)),
        (entropy.UniformCodes(np.array([1, 2, 3, 1000, 7] * 200)), np.array([0, 1, 2, 999, 6] * 200)),
        (entropy.MortonGaps(2500, 10), gaps),
    ]


@pytest.mark.parametrize("case", range(5))
def test_each_model_costs_what_the_range_coder_writes_and_decodes_its_symbols(case):
    model, symbols = _models_and_symbols()[case]
    coder = constriction.stream.queue.RangeEncoder()
    model.encode(coder, symbols)
    words = coder.get_compressed()
    written = 32 * len(words)
    estimate = model.bits(symbols)
    # The range coder rounds probabilities to fixed point and ends on a whole word.
    assert estimate - 1 <= written <= 1.01 * estimate + 64
    decoded = model.decode(constriction.stream.queue.RangeDecoder(words), len(symbols))
    np.testing.assert_array_equal(decoded, symbols)


def test_an_adaptive_model_codes_its_first_block_by_the_prior_then_by_the_counts():
    model = entropy.AdaptiveCategorical(2, np.array([0.5, 0.5]), bin_weight=1.0)
    # One block: every symbol at the prior's 1/2, one bit each.
    assert model.bits(np.zeros(entropy.BLOCK, int)) == pytest.approx(entropy.BLOCK)
    # After a block of 64 zeros a zero has (64 + 1 * 0.5) / (64 + 1) (two bins of one symbol:
    # the bins' counts against the prior's weight, each bin certain of its symbol).
    two_blocks = model.bits(np.zeros(entropy.BLOCK + 1, int))
    assert two_blocks - entropy.BLOCK == pytest.approx(-np.log2(64.5 / 65))


def test_a_discretised_gaussian_and_its_two_header_bytes():
    p = entropy.discretised_gaussian(10.0, 3.0, 64)
    assert p.sum() == pytest.approx(1.0) and p.argmax() == 10
    assert p.min() == pytest.approx(entropy.PRIOR_FLOOR / 64, rel=0.01)  # the floor's tails
    symbols = np.stack([np.clip(np.rint(_RNG.normal(40, 8, 5000)), 0, 255)], 1).astype(int)
    packed = entropy.pack_priors(symbols, [256])
    (prior,) = entropy.unpack_priors(packed, [256])
    k = np.arange(256)
    core = (prior - entropy.PRIOR_FLOOR / 256) / (1 - entropy.PRIOR_FLOOR)
    mean = (core * k).sum()
    assert mean == pytest.approx(40, abs=0.6)  # one byte: 1/255 of the alphabet
    assert np.sqrt((core * (k - mean) ** 2).sum()) == pytest.approx(8, rel=0.03)  # 1/16 octave


def test_gap_length_prior_matches_scattered_points():
    rng = np.random.default_rng(3)
    n, bits = 5000, 10
    m = np.sort(rng.choice(1 << (2 * bits), n, replace=False))
    lengths = [int(g).bit_length() for g in np.diff(m, prepend=0)]
    observed = np.bincount(lengths, minlength=2 * bits + 1) / n
    np.testing.assert_allclose(entropy.gap_length_prior(n, bits), observed, atol=0.02)


def test_morton_gaps_split_by_hand():
    lengths, rest = entropy.MortonGaps(4, 3).split(np.array([0, 1, 5, 13]))
    # Gaps 0, 1, 4, 8: bit lengths 0, 1, 3, 4, nothing below the leading one.
    np.testing.assert_array_equal(lengths, [0, 1, 3, 4])
    np.testing.assert_array_equal(rest, [0, 0, 0, 0])
    lengths, rest = entropy.MortonGaps(1, 3).split(np.array([6]))
    np.testing.assert_array_equal(lengths, [3])
    np.testing.assert_array_equal(rest, [2])  # 6 = 0b110: 0b10 below the leading one


def test_color_predictors_recover_a_linear_relation():
    r = _RNG.integers(0, 200, 500)
    g = r // 2 + 10
    b = 3 + r // 4 + g // 2
    coef = entropy.fit_color_predictors(np.stack([r, g, b], 1))
    colors = np.stack([r, g, b], 1)
    assert np.abs(entropy.predict_color(colors, 1, coef, 256) - g).max() <= 1
    assert np.abs(entropy.predict_color(colors, 2, coef, 256) - b).max() <= 1
    np.testing.assert_array_equal(entropy.fit_color_predictors(colors[:2]), np.zeros(5))


def test_soft_bits_is_the_empirical_entropy_at_integers_and_moves_with_the_values():
    import jax
    import jax.numpy as jnp

    codes = _SKEWED[:500]
    assert float(entropy.soft_bits(jnp.asarray(codes, jnp.float32), 100)) == pytest.approx(
        entropy.empirical_bits(codes), rel=1e-5)
    # Masked rows count for nothing.
    masked = jnp.concatenate([jnp.asarray(codes, jnp.float32), jnp.full(50, 77.0)])
    weights = jnp.concatenate([jnp.ones(500), jnp.zeros(50)])
    assert float(entropy.soft_bits(masked, 100, weights)) == pytest.approx(entropy.empirical_bits(codes), rel=1e-5)
    # Between integers: the gradient is that of the shared counts, checked by finite differences.
    v = jnp.asarray(_RNG.uniform(0, 20, 300), jnp.float32)
    v = v.at[jnp.array([0, 7, 123])].set(jnp.array([3.5, 11.5, 16.5]))  # steps of 0.2 stay between codes
    grad = jax.grad(lambda x: entropy.soft_bits(x, 32))(v)
    eps = 0.2  # float32 sums of ~1300 bits: a wide step keeps rounding well below the change
    for i in (0, 7, 123):
        step = jnp.zeros_like(v).at[i].set(eps)
        numeric = (entropy.soft_bits(v + step, 32) - entropy.soft_bits(v - step, 32)) / (2 * eps)
        assert float(grad[i]) == pytest.approx(float(numeric), rel=0.05, abs=1e-3)
    # Spreading the values over twice the codes costs about a bit more each.
    assert float(entropy.soft_bits(2 * v, 64) - entropy.soft_bits(v, 32)) == pytest.approx(300, rel=0.1)


def test_soft_bits_estimates_what_the_adaptive_model_spends():
    symbols = np.clip(np.rint(_RNG.normal(60, 12, 4000)), 0, 127).astype(int)
    model = entropy.AdaptiveCategorical(128, entropy.discretised_gaussian(60, 12, 128))
    import jax.numpy as jnp
    estimate = float(entropy.soft_bits(jnp.asarray(symbols, jnp.float32), 128))
    assert estimate == pytest.approx(model.bits(symbols), rel=0.02)


def test_estimated_bits_is_within_a_few_percent_of_a_files_payload():
    import jax.numpy as jnp

    from gipp_jax import bitstream, codec, quantize

    # 3000 Gaussians over a 256 x 192 image, sizes and colors spread as a fit's are; coded
    # with quantizers initialised on them (12/7/5 bits, sized colors), then estimated.
    rng = np.random.default_rng(5)
    n, height, width = 3000, 192, 256
    means = rng.uniform(0, [width, height], (n, 2))
    size = np.exp(rng.normal(1.0, 0.6, (n, 2)))
    rho = np.tanh(rng.normal(0, 0.6, n))
    cov3 = np.stack([size[:, 0] ** 2, rho * size[:, 0] * size[:, 1], size[:, 1] ** 2], 1)
    gray = rng.beta(2, 2, n)
    colors = np.clip(gray[:, None] + rng.normal(0, 0.05, (n, 3)), 0, 1)
    args = [jnp.asarray(x, jnp.float32) for x in (means, cov3, colors)]
    qs = quantize.init_gaussian_quantizers(*args, {"position": 12, "covariance": 7, "color": 5},
                                           correlation=True, arcsine=True, sized_colors=True)
    floats, classes, stored = codec._as_stored(qs, (12, 7, 5))
    codes = np.asarray(quantize.gaussian_codes(stored, *args))
    data = bitstream.Encoded(height, width, (12, 7, 5), floats, codes, True, True, classes)
    costs = bitstream.cost_breakdown(data)
    coded = sum(costs[c] for c in bitstream.CHANNELS)
    decoded = [jnp.asarray(x) for x in codec.file_gaussians(data)]
    estimate = float(quantize.estimated_bits(stored, *decoded, jnp.ones(n, bool), height, width))
    assert estimate == pytest.approx(coded, rel=0.03)
    # Coarser covariance steps cost fewer bits, and the estimate follows.
    coarse = stored.replace(cov_diag=stored.cov_diag.replace(scale=2 * stored.cov_diag.scale))
    assert float(quantize.estimated_bits(coarse, *decoded, jnp.ones(n, bool), height, width)) < estimate - 0.8 * 2 * n
