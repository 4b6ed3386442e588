"""Refinement of a file's codes: weights by the renderer's rules (against the dense
renderer), recovery of known codes, and never more error than the codes it starts from, as
the decoder renders them."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax import bitstream
from gipp_jax.codec import coarser_codes, decode_image, file_gaussians
from gipp_jax.compress import CompressConfig, coarsened_to_fit, encode_refined, encode_to_size
from gipp_jax.densify import is_positive_definite
from gipp_jax.parameterization import triple_to_matrix
from gipp_jax.raster.dense import render_dense
from gipp_jax.raster.host import gaussian_weights, geometry
from gipp_jax.refine import refine_codes

H, W = 28, 40


def scene(rng, n, bits=(10, 7, 5), correlation=False):
    """A file's contents: ``n`` random Gaussians of 3-7 px^2 in an H x W image."""
    floats = np.array([W / 1023, H / 1023, 0, 0,     # position scale, offset (x, y)
                       0.02, 0.02, 0, 0,              # log covariance diagonal
                       0.012 if correlation else 0.1, -0.75 if correlation else -6.0,
                       0.05, 0.05, 0.05, -0.4, -0.4, -0.4], np.float16).astype(np.float32)
    levels = [1 << bits[0]] * 2 + [1 << bits[1]] * 3 + [1 << bits[2]] * 3
    codes = np.stack([rng.integers(0, lv, n) for lv in levels], 1)
    codes[:, 2:4] = rng.integers(60, 100, (n, 2))
    codes[:, 4] = rng.integers(40, 80, n)
    return bitstream.Encoded(H, W, bits, floats, codes, correlation, correlation)


def squared_error(data, target):
    return float(np.sum(np.square(decode_image(bitstream.encode(data)) - target)))


def test_weights_follow_the_renderer():
    rng = np.random.default_rng(0)
    n = 9
    means = rng.uniform([-6, -6], [W + 6, H + 6], (n, 2)).astype(np.float32)  # some off the image
    s = rng.uniform(0.7, 9.0, (n, 2))
    off = rng.uniform(-0.9, 0.9, n) * s[:, 0] * s[:, 1]
    cov3 = np.stack([s[:, 0] ** 2, off, s[:, 1] ** 2], 1).astype(np.float32)
    colors = rng.uniform(0.1, 1.0, (n, 3)).astype(np.float32)
    weights = gaussian_weights(geometry(means, cov3, H, W), (0, H, W, W))  # an empty rectangle
    assert weights.shape == (n, H, 0)
    weights = gaussian_weights(geometry(means, cov3, H, W), (0, H, 0, W))
    expected = render_dense(jnp.asarray(means), triple_to_matrix(jnp.asarray(cov3)), jnp.asarray(colors), H, W)
    np.testing.assert_allclose(np.einsum("nhw,nc->hwc", weights, colors), expected, atol=1e-5)
    inner = gaussian_weights(geometry(means, cov3, H, W), (5, 17, 8, 30))
    np.testing.assert_array_equal(inner, weights[:, 5:17, 8:30])
    assert (weights == 0).any() and (weights > 0.5).any()
    # Each one's weights lie within its reach, a part of its tile box (often a small one).
    geo = geometry(means, cov3, H, W)
    area = lambda r: max(r[1] - r[0], 0) * max(r[3] - r[2], 0)  # noqa: E731
    for i, ((y0, y1, x0, x1), box) in enumerate(zip(geo.reach, geo.boxes)):
        outside = np.ones((H, W), bool)
        outside[y0:y1, x0:x1] = False
        assert not weights[i][outside].any()
        assert area((y0, y1, x0, x1)) == 0 or (box[0] <= y0 and y1 <= box[1] and box[2] <= x0 and x1 <= box[3])
    assert sum(map(area, geo.reach)) < 0.8 * sum(map(area, geo.boxes))


@pytest.mark.parametrize("correlation, sized", [(False, False), (True, False), (True, True)])
def test_refinement_recovers_the_codes_of_the_target(correlation, sized):
    rng = np.random.default_rng(1)
    truth = scene(rng, 1, correlation=correlation)
    truth.codes[0, :2] = [600, 500]  # well inside the image
    truth.codes[0, 5:8] = [12, 20, 16]  # colors in (0, 1): nothing clamped
    if sized:  # a diagonal code one up is the next class: color steps sqrt(2) finer
        truth = dataclasses.replace(truth, color_classes=(int(truth.codes[0, 2] + truth.codes[0, 3]), 2))
    target = decode_image(bitstream.encode(truth))
    for column, step in ((0, 1), (1, -1), (2, 1), (3, -1), (4, 1)):
        start = truth.codes.copy()
        start[0, column] += step
        start[0, 5:8] += [3, -2, 4]
        refined = refine_codes(dataclasses.replace(truth, codes=start), target, sweeps=2)
        np.testing.assert_array_equal(refined.codes, truth.codes)


def test_refinement_lowers_the_decoded_error():
    rng = np.random.default_rng(2)
    truth = scene(rng, 30, correlation=True)
    means, cov3, colors = file_gaussians(truth)
    clean = np.asarray(render_dense(means, triple_to_matrix(cov3), colors, H, W))
    target = np.clip(clean + rng.normal(0, 0.02, clean.shape), 0, 1).astype(np.float32)
    nudge = rng.integers(-1, 2, truth.codes.shape) * np.array([2, 2, 1, 1, 1, 3, 3, 3])
    top = np.array([1023] * 2 + [127] * 3 + [31] * 3)
    data = dataclasses.replace(truth, codes=np.clip(truth.codes + nudge, 0, top))  # as QAT might round
    with pytest.raises(ValueError, match="outside their bit depths"):
        bitstream.encode(dataclasses.replace(truth, codes=truth.codes + top))
    before = squared_error(data, target)
    one = refine_codes(data, target, sweeps=1)
    more = refine_codes(data, target, sweeps=4)
    assert squared_error(more, target) <= squared_error(one, target) < 0.5 * before
    for refined in (one, more):
        assert refined.codes.shape == data.codes.shape and refined.codes.dtype == data.codes.dtype
        np.testing.assert_array_equal(refined.quantizers, data.quantizers)
        assert (refined.height, refined.width, refined.bits) == (H, W, data.bits)
    assert refine_codes(data, target, sweeps=0) is data
    np.testing.assert_array_equal(refine_codes(data, target, sweeps=1, progress=True).codes, one.codes)


def test_refinement_keeps_covariances_positive_definite():
    rng = np.random.default_rng(4)
    data = scene(rng, 12)  # b coded itself: b = 0.1 code - 6, a = c = exp(0.02 code) = 3.32
    data.codes[:, 2:4] = 60
    data.codes[:, 4] = 93  # b = 3.3: the last positive definite code
    data.quantizers[13:16] = 0.3  # no color darker than 0.3
    target = np.zeros((H, W, 3), np.float32)
    # Against black, every Gaussian does harm; codes that are not positive definite (b up
    # one level, or a diagonal down one) would draw it on fewer pixels, but the encoder
    # drops such Gaussians, so refinement may not move there.
    refined = refine_codes(data, target, sweeps=2)
    _, cov3, _ = file_gaussians(refined)
    assert np.all(np.asarray(is_positive_definite(cov3)))
    assert squared_error(refined, target) <= squared_error(data, target)


def test_a_file_refined_to_a_size_limit_keeps_under_it():
    rng = np.random.default_rng(3)
    truth = scene(rng, 40)
    target = decode_image(bitstream.encode(truth))
    nudge = rng.integers(-1, 2, truth.codes.shape) * np.array([2, 2, 1, 1, 1, 3, 3, 3])
    data = dataclasses.replace(truth, codes=np.clip(truth.codes + nudge, 0, [1023] * 2 + [127] * 3 + [31] * 3))
    limit = int(0.8 * len(bitstream.encode(data)))
    plain = encode_refined(data, target, sweeps=0, max_bytes=limit)
    assert plain == encode_to_size(data, target, limit)
    refined = encode_refined(data, target, sweeps=2, max_bytes=limit)
    assert len(refined) <= limit
    assert 0 < bitstream.decode(refined).codes.shape[0] < data.codes.shape[0]
    error = lambda blob: float(np.sum(np.square(decode_image(blob) - target)))  # noqa: E731
    assert error(refined) < 0.7 * error(plain)
    assert encode_refined(data, target, sweeps=0) == bitstream.encode(data)


def test_coarser_codes_move_each_gaussian_by_at_most_half_a_coarse_step():
    rng = np.random.default_rng(5)
    data = scene(rng, 40, correlation=True)
    assert coarser_codes(data, 1.0).codes.tolist() == data.codes.tolist()
    coarse = coarser_codes(data, 2.0)
    np.testing.assert_array_equal(coarse.quantizers[[0, 1, 4, 5, 8, 10, 11, 12]],
                                  2 * data.quantizers[[0, 1, 4, 5, 8, 10, 11, 12]])  # steps
    np.testing.assert_array_equal(coarse.quantizers[[2, 3, 6, 7, 9, 13, 14, 15]],
                                  data.quantizers[[2, 3, 6, 7, 9, 13, 14, 15]])  # offsets
    assert coarse.codes.shape == data.codes.shape and len(bitstream.encode(coarse)) < len(bitstream.encode(data))
    (m0, c0, k0), (m1, c1, k1) = file_gaussians(data), file_gaussians(coarse)
    assert np.abs(m1 - m0).max() <= W / 1023 + 1e-4  # half of twice the step
    assert np.abs(np.log(c1[:, 0::2]) - np.log(c0[:, 0::2])).max() <= 0.02 + 1e-4
    assert np.abs(k1 - k0).max() <= 0.05 + 1e-4 and np.abs(k1 - k0).max() > 0


def test_a_file_over_its_limit_is_coarsened_before_it_loses_gaussians():
    rng = np.random.default_rng(6)
    truth = scene(rng, 40, correlation=True)
    target = decode_image(bitstream.encode(truth))
    limit = int(0.9 * len(bitstream.encode(truth)))
    fitted = coarsened_to_fit(truth, limit)
    assert len(bitstream.encode(fitted)) <= limit < len(bitstream.encode(coarsened_to_fit(truth, 10 ** 6)))
    pruned = encode_refined(truth, target, sweeps=1, max_bytes=limit)
    coarsened = encode_refined(truth, target, sweeps=1, max_bytes=limit, coarsen=True)
    assert len(coarsened) <= limit and len(pruned) <= limit
    assert bitstream.decode(coarsened).codes.shape[0] > bitstream.decode(pruned).codes.shape[0]
    error = lambda blob: float(np.sum(np.square(decode_image(blob) - target)))  # noqa: E731
    assert error(coarsened) < error(pruned)


def test_a_second_refinement_is_kept_only_where_it_does_better(monkeypatch):
    from gipp_jax import compress as compress_lib
    rng = np.random.default_rng(3)
    truth = scene(rng, 40)
    target = decode_image(bitstream.encode(truth))
    limit = int(0.8 * len(bitstream.encode(truth)))
    calls = []

    def spoiling(data, image, *, sweeps, progress=False):  # the second pass darkens every color
        calls.append(data.codes.shape[0])
        if len(calls) == 1:
            return data
        return dataclasses.replace(data, codes=data.codes - np.array([0] * 5 + [6] * 3).clip(0, data.codes))

    monkeypatch.setattr(compress_lib, "refine_codes", spoiling)
    blob = encode_refined(truth, target, sweeps=2, max_bytes=limit)
    assert len(calls) == 2 and calls[1] < calls[0]
    assert blob == encode_to_size(truth, target, limit)


def test_refinement_off_and_checked():
    assert CompressConfig().refine_sweeps > 0
    with pytest.raises(ValueError, match="refine_sweeps"):
        CompressConfig(refine_sweeps=-1).validate()


def test_two_processes_search_the_two_sides_of_the_image_to_the_same_codes(monkeypatch):
    from gipp_jax import host_worker
    rng = np.random.default_rng(7)
    truth = scene(rng, 60)
    target = decode_image(bitstream.encode(truth))
    nudge = rng.integers(-1, 2, truth.codes.shape) * np.array([2, 2, 1, 1, 1, 3, 3, 3])
    data = dataclasses.replace(truth, codes=np.clip(truth.codes + nudge, 0, [1023] * 2 + [127] * 3 + [31] * 3))
    one = refine_codes(data, target, sweeps=2, workers=1)
    sent = []
    submit = host_worker.HostWorker.submit
    monkeypatch.setattr(host_worker.HostWorker, "submit", lambda self, f, *a: (sent.append((f.__name__, a)),
                                                                                submit(self, f, *a))[1])
    two = refine_codes(data, target, sweeps=2, workers=2)
    sides = [len(a[0].codes) for name, a in sent if name == "_refine_part"]
    assert len(sides) >= 2 and 0 < min(sides) and max(sides) < len(data.codes)  # a side, each sweep
    np.testing.assert_array_equal(two.codes, one.codes)
    assert squared_error(one, target) < 0.7 * squared_error(data, target)

    def unavailable(self):
        raise host_worker.WorkerUnavailable("no worker")

    monkeypatch.setattr(host_worker.HostWorker, "_start", unavailable)  # the caller searches both sides
    np.testing.assert_array_equal(refine_codes(data, target, sweeps=2, workers=2).codes, one.codes)
