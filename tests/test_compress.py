"""Quantizers, the .gipp format, compression round trips and fuzzing."""

import json
import struct
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax import bitstream, quantize
from gipp_jax.cli import main
from gipp_jax.codec import decode_image
from gipp_jax.compress import CompressConfig, compress
from gipp_jax.config import load_config
from gipp_jax import metrics
from gipp_jax.train import FitConfig


def test_lsq_quantizer_min_max_and_error_bound():
    x = jnp.asarray(np.random.default_rng(0).uniform(-3, 5, (500, 2)), jnp.float32)
    q = quantize.init_quantizer(x, 6)
    codes = quantize.to_codes(q, x)
    assert int(codes.min()) == 0 and int(codes.max()) == 63
    err = jnp.abs(quantize.from_codes(q, codes) - x)
    assert float(err.max()) <= float(q.scale.max()) / 2 + 1e-5
    np.testing.assert_allclose(quantize.fake_quantize(q, x), quantize.from_codes(q, codes), atol=1e-5)


def test_straight_through_gradients():
    q = quantize.Quantizer(jnp.array([0.5]), jnp.array([0.0]), 4, False)
    x = jnp.array([[0.3], [2.1], [-1.0], [9.0]])
    g = jax.grad(lambda x: jnp.sum(quantize.fake_quantize(q, x)))(x)
    np.testing.assert_array_equal(np.asarray(g[:, 0]), [1.0, 1.0, 0.0, 0.0])  # 0 where clipped
    gs = jax.grad(lambda s: jnp.sum(quantize.fake_quantize(q.replace(scale=s), x[:2])))(q.scale)
    assert float(gs[0]) != 0.0  # the scale learns


def test_log_quantizer_is_relative():
    x = jnp.asarray([[0.01], [0.1], [1.0], [10.0], [100.0]], jnp.float32)
    q = quantize.init_quantizer(x, 10, log=True)
    rel = jnp.abs(quantize.from_codes(q, quantize.to_codes(q, x)) - x) / x
    assert float(rel.max()) < 0.01


def test_quantizers_use_float16_parameters():
    q = quantize.Quantizer(jnp.array([0.1234567, -1e-9]), jnp.array([3.14159265, -0.3333333]), 8, False)
    scale, offset = quantize.quantizer_parameters(q)
    np.testing.assert_array_equal(scale, np.float16([0.1234567, 2.0 ** -14]).astype(np.float32))
    np.testing.assert_array_equal(offset, np.float16([3.14159265, -0.3333333]).astype(np.float32))
    x = jnp.array([[3.5, 0.0], [20.0, -0.3333]])
    codes = quantize.to_codes(q, x)
    np.testing.assert_array_equal(codes, np.clip(np.rint((np.asarray(x) - offset) / scale), 0, 255))
    np.testing.assert_array_equal(quantize.from_codes(q, codes), codes * scale + offset)
    g = jax.grad(lambda s: jnp.sum(quantize.fake_quantize(q.replace(scale=s), x)))(q.scale)
    assert float(g[0]) != 0.0  # rounding the parameter keeps its gradient


@pytest.mark.parametrize("log", [False, True])
def test_with_bits_keeps_every_other_level(log):
    x = jnp.asarray(np.random.default_rng(4).uniform(0.1, 9.0, (400, 1)), jnp.float32)
    fine = quantize.init_quantizer(x, 8, log=log)
    coarse = quantize.with_bits(fine, 6)
    assert coarse.bits == 6
    levels = np.asarray(quantize.from_codes(fine, jnp.arange(0, 256, 4)[:, None]))
    np.testing.assert_allclose(np.asarray(quantize.from_codes(coarse, jnp.arange(64)[:, None])), levels, rtol=1e-5)
    fine_codes = np.asarray(quantize.to_codes(fine, x))
    coarse_codes = np.asarray(quantize.to_codes(coarse, x))
    assert np.abs(coarse_codes * 4 - fine_codes).max() <= 3
    with pytest.raises(ValueError):
        quantize.with_bits(coarse, 7)


def random_codes(rng, n):
    return np.stack([rng.integers(0, 4096, n), rng.integers(0, 4096, n),
                     np.clip(rng.normal(600, 40, n), 0, 1023), np.clip(rng.normal(580, 40, n), 0, 1023),
                     np.clip(rng.normal(512, 20, n), 0, 1023), rng.integers(10, 50, n),
                     rng.integers(0, 64, n), np.clip(rng.normal(30, 6, n), 0, 63)], 1).astype(np.int64)


def sort_rows(codes):
    return codes[np.lexsort(codes.T[::-1])]


@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_bitstream_round_trip(n):
    rng = np.random.default_rng(n)
    floats = rng.normal(size=16).astype(np.float16).astype(np.float32)  # the header holds float16
    data = bitstream.Encoded(37, 53, (12, 10, 6), floats, random_codes(rng, n))
    back = bitstream.decode(bitstream.encode(data))
    assert (back.height, back.width, back.bits) == (37, 53, (12, 10, 6))
    np.testing.assert_array_equal(back.quantizers, data.quantizers)
    np.testing.assert_array_equal(sort_rows(back.codes), sort_rows(data.codes))


def test_header_size():
    empty = bitstream.encode(bitstream.Encoded(37, 53, (12, 10, 6), np.ones(16, np.float32), np.zeros((0, 8))))
    # magic 4, version 1, bits 3, flags 1, sizes and count 3, quantizers 32, models 12 + 10,
    # CRC 4; the range coder's payload of no symbols is at most one 4-byte word
    assert 70 <= len(empty) <= 74
    assert len(empty) - bitstream.header_bytes(37, 53, 0) in (0, 4)


@pytest.mark.parametrize("correlation, arcsine", [(False, False), (True, False), (True, True)])
def test_older_versions_still_decode_and_the_flags_round_trip(correlation, arcsine):
    rng = np.random.default_rng(5)
    floats = rng.normal(size=16).astype(np.float16).astype(np.float32)
    data = bitstream.Encoded(30, 40, (12, 10, 6), floats, random_codes(rng, 50), correlation, arcsine)
    blob = bitstream.encode(data)
    back = bitstream.decode(blob)
    assert (back.correlation, back.arcsine) == (correlation, arcsine) and blob[4] == bitstream.PLAIN_VERSION == 6
    np.testing.assert_array_equal(sort_rows(back.codes), sort_rows(data.codes))

    def with_header(version, flags=None):
        body = blob[:4] + bytes([version]) + blob[5:8]
        body += (blob[8:9] if flags is None else bytes([flags])) + blob[9:-4]
        return body + struct.pack("<I", zlib.crc32(body))

    old = bitstream.decode(with_header(5))  # version 5: the same bytes
    assert (old.correlation, old.arcsine, old.color_classes) == (correlation, arcsine, None)
    if not arcsine:  # version 4: the same bytes
        old = bitstream.decode(with_header(4))
        assert (old.correlation, old.arcsine) == (correlation, False)
        np.testing.assert_array_equal(sort_rows(old.codes), sort_rows(data.codes))
    if not correlation:  # version 3: the same bytes without the flags byte
        body = blob[:4] + bytes([3]) + blob[5:8] + blob[9:-4]
        old = bitstream.decode(body + struct.pack("<I", zlib.crc32(body)))
        assert not old.correlation
        np.testing.assert_array_equal(sort_rows(old.codes), sort_rows(data.codes))
    # unknown flags: bit 3; sized colors in version 5; the arcsine without the correlation;
    # the arcsine in version 4
    for bad in (with_header(6, 8 | int(correlation)), with_header(5, 4 | int(correlation)), with_header(6, 2),
                with_header(4, 3)):
        with pytest.raises(bitstream.FormatError, match="unknown flags"):
            bitstream.decode(bad)
    body = blob[:4] + bytes([2]) + blob[5:-4]
    with pytest.raises(bitstream.FormatError, match="unsupported .gipp version 2"):
        bitstream.decode(body + struct.pack("<I", zlib.crc32(body)))


def test_color_weights_by_hand():
    # reference 10, span 4: class round((a + c - 10) / 4), halves rounded up, in [-4, 4]
    diag = jnp.array([[5, 5], [6, 5], [6, 6], [4, 4], [3, 4], [2, 2], [0, 0], [99, 99], [10, 10]])
    w = quantize.color_weights(diag, jnp.array([10, 4]))
    r = np.sqrt(2.0)
    np.testing.assert_allclose(w, [1, 1, r, 1, 1 / r, 1 / r, 1 / 2, 4, 2 * r], rtol=1e-7)
    assert float(quantize.color_weights(jnp.array([[0, 0]]), jnp.array([100, 4]))[0]) == 0.25


def test_sized_colors_give_large_gaussians_finer_color_steps():
    rng = np.random.default_rng(3)
    n = 400
    log_var = rng.uniform(-2.0, 10.0, (n, 1))  # variances from 0.14 to 22000 px^2, isotropic
    cov3 = jnp.asarray(np.concatenate([np.exp(log_var), np.zeros((n, 1)), np.exp(log_var)], 1), jnp.float32)
    means = jnp.asarray(rng.uniform(0, 60, (n, 2)), jnp.float32)
    colors = jnp.asarray(rng.uniform(0, 1, (n, 3)), jnp.float32)
    bits = {"position": 10, "covariance": 7, "color": 5}
    qs = quantize.init_gaussian_quantizers(means, cov3, colors, bits, correlation=True, sized_colors=True)
    ref, span = (int(v) for v in qs.color_classes)
    codes = quantize.gaussian_codes(qs, means, cov3, colors)
    u = np.asarray(codes[:, 2] + codes[:, 3])
    assert abs(ref - np.median(u)) <= 0.5
    # half an octave of weight per span: a and c each grow by 2^(1 / gamma) = 4 (gamma 0.5),
    # ln 4 in the log domain each, so over span codes of both together
    assert span == round(2 * np.log(4.0) / float(quantize.quantizer_parameters(qs.cov_diag)[0].mean()))
    w = np.asarray(quantize.color_weights(codes[:, 2:4], qs.color_classes))
    # sizes over a factor 400 (weights over 20 for gamma 0.5) span every class
    assert w.min() == 0.25 and w.max() == 4.0
    decoded = np.asarray(quantize.gaussians_from_codes(qs, codes)[2])
    step = np.asarray(quantize.quantizer_parameters(qs.color)[0])
    err = np.abs(decoded - np.asarray(colors))
    assert np.all(err <= step / (2 * w[:, None]) + 1e-5)
    assert np.all(np.asarray(codes[:, 5:8]) <= 31 * w[:, None] + 0.5)
    np.testing.assert_allclose(quantize.fake_quantize_gaussians(qs, means, cov3, colors)[2], decoded, atol=1e-5)
    big, small = w >= 2, w <= 0.5
    assert err[big].mean() < err[small].mean() / 4


def test_sized_color_codes_round_trip_with_two_bits_more():
    rng = np.random.default_rng(6)
    codes = random_codes(rng, 200)
    codes[:, 2:4] = rng.integers(0, 1024, (200, 2))
    codes[:, 5:8] = rng.integers(0, 64 * 4 - 3, (200, 3))  # up to (2^6 - 1) * 4
    floats = rng.normal(size=16).astype(np.float16).astype(np.float32)
    data = bitstream.Encoded(30, 40, (12, 10, 6), floats, codes, True, True, (700, 45))
    blob = bitstream.encode(data)
    back = bitstream.decode(blob)
    assert back.color_classes == (700, 45) and back.bits == (12, 10, 6) and blob[8] == 7
    np.testing.assert_array_equal(sort_rows(back.codes), sort_rows(codes))
    assert bitstream.header_bytes(30, 40, 200, (700, 45)) == bitstream.header_bytes(30, 40, 200) + 3
    for classes in ((700, 0), (700, 2047), (2047, 45)):  # span or reference beyond a's and c's codes
        forged = bitstream.encode(bitstream.Encoded(30, 40, (12, 10, 6), floats, codes, True, True, classes))
        with pytest.raises(bitstream.FormatError, match="invalid sized-color classes"):
            bitstream.decode(forged)
    codes[0, 5] = 64 * 4 - 3 + 1
    with pytest.raises(ValueError, match="outside their bit depths"):
        bitstream.encode(bitstream.Encoded(30, 40, (12, 10, 6), floats, codes, True, True, (700, 45)))


def test_correlation_coding_keeps_every_covariance_positive_definite():
    # Sizes from 0.7 to 2000 px^2, nearly degenerate ones among them: coding b itself at 7
    # bits turns the small, elongated ones non-positive-definite; the correlation cannot.
    rng = np.random.default_rng(2)
    n = 400
    a, c = np.exp(rng.uniform(np.log(0.7), np.log(2000), (2, n)))
    rho = rng.uniform(-0.98, 0.98, n)
    cov3 = jnp.asarray(np.stack([a, rho * np.sqrt(a * c), c], 1), jnp.float32)
    means, colors = jnp.zeros((n, 2)), jnp.zeros((n, 3))
    bits = {"position": 10, "covariance": 7, "color": 5}
    det = lambda c3: np.asarray(c3[:, 0] * c3[:, 2] - c3[:, 1] ** 2)  # noqa: E731
    needles = np.abs(rho) > 0.95
    error = {}
    for correlation, arcsine, all_positive in ((False, False, False), (True, False, True), (True, True, True)):
        qs = quantize.init_gaussian_quantizers(means, cov3, colors, bits, correlation=correlation,
                                               arcsine=arcsine)
        assert qs.cov_off.arcsine == arcsine
        _, decoded, _ = quantize.gaussians_from_codes(qs, quantize.gaussian_codes(qs, means, cov3, colors))
        assert bool((det(decoded) > 0).all()) == all_positive
        _, trained, _ = quantize.fake_quantize_gaussians(qs, means, cov3, colors)
        np.testing.assert_allclose(trained, decoded, rtol=1e-5, atol=1e-5)  # training sees the decoder's
        got = np.asarray(decoded[:, 1]) / np.sqrt(np.asarray(decoded[:, 0] * decoded[:, 2]))
        error[arcsine] = np.abs(got - rho)[needles].max()
    # 127 steps over (-0.98, 0.98): 0.0154 in rho, up to half of it off; in the arcsine the
    # steps at |rho| > 0.95 are less than 0.45 x as long (cos(asin(0.95)) = 0.31, times pi/2
    # and the arcsine's range 1.74 over 1.96)
    assert error[False] > 0.006 and error[True] < 0.45 * error[False]


def test_morton_round_trip():
    x = np.array([0, 1, 4095, 1234])
    y = np.array([0, 4095, 1, 4321 % 4096])
    np.testing.assert_array_equal(bitstream.unmorton(bitstream.morton(x, y, 12), 12), (x, y))


def test_entropy_coding_beats_fixed_length_on_peaked_codes():
    codes = random_codes(np.random.default_rng(1), 3000)
    blob = bitstream.encode(bitstream.Encoded(512, 768, (12, 10, 6), np.ones(16, np.float32), codes))
    assert len(blob) * 8 < 0.75 * (72 * 3000 + 512)


def test_color_prediction_pays_for_correlated_channels():
    rng = np.random.default_rng(2)
    codes = random_codes(rng, 2000)
    shade = rng.integers(0, 64, 2000)
    correlated = codes.copy()
    correlated[:, 5:8] = np.clip(shade[:, None] + rng.integers(-1, 2, (2000, 3)), 0, 63)
    independent = correlated.copy()
    for j in (6, 7):  # the same marginals, the link between channels broken
        independent[:, j] = rng.permutation(independent[:, j])
    size = lambda c: len(bitstream.encode(bitstream.Encoded(64, 64, (12, 10, 6), np.ones(16, np.float32), c)))
    # green and blue cost about log2(3) bits instead of about 6
    assert size(correlated) * 8 < size(independent) * 8 - 2 * 2000 * 3.5
    back = bitstream.decode(bitstream.encode(bitstream.Encoded(64, 64, (12, 10, 6), np.ones(16, np.float32), correlated)))
    np.testing.assert_array_equal(sort_rows(back.codes), sort_rows(correlated))


def test_cost_breakdown_adds_up_to_the_file_and_charges_each_channel():
    rng = np.random.default_rng(4)
    n = 2000
    codes = random_codes(rng, n)
    codes[:, 3] = 17  # c: one value
    data = bitstream.Encoded(512, 768, (12, 10, 6), np.ones(16, np.float32), codes)
    costs = bitstream.cost_breakdown(data)
    assert set(costs) == set(bitstream.CHANNELS) | {"header"}
    # The range coder adds at most its last two 32-bit words to the models' code lengths.
    assert 0 <= len(bitstream.encode(data)) * 8 - sum(costs.values()) <= 64
    # Red uniform over 40 values: log2(40) = 5.32 bits each; a constant channel a fraction
    # of a bit (what the models' priors keep for every other symbol).
    assert 5.25 * n < costs["red"] < 5.5 * n
    assert costs["c"] < 0.3 * n
    # Scattered positions: log2(4096^2 / n) + log2(e) = 14.48 bits each (the gaps' entropy).
    assert 14.3 * n < costs["position"] < 14.8 * n


@pytest.fixture(scope="module")
def compressed(sample_crop):
    crop = sample_crop[:24, :40]
    result = compress(crop, FitConfig(num_gaussians=150, iterations=200), CompressConfig())
    return crop, result


@pytest.mark.xdist_group("compressed")  # one worker fits the fixture once
def test_compress_round_trip_reproduces_reported_psnr(compressed):
    crop, result = compressed
    decoded = decode_image(result.blob)
    np.testing.assert_array_equal(decoded, result.image)
    assert float(metrics.psnr(decoded, crop)) == result.psnr
    assert result.bpp == pytest.approx(len(result.blob) * 8 / (24 * 40))
    data = bitstream.decode(result.blob)
    assert data.bits == (8, 7, 5)  # the default depths: positions 10 bits on 192 px, 8 on 40
    assert data.correlation and data.arcsine and data.color_classes is not None
    flat = np.broadcast_to(crop.mean(axis=(0, 1)), crop.shape)
    assert result.psnr > float(metrics.psnr(flat, crop)) + 1.0  # it learned the image
    assert decode_image(result.blob, scale=2.0).shape == (48, 80, 3)


@pytest.mark.xdist_group("odd-size")  # one worker: the second case reuses the first's programs
@pytest.mark.parametrize("bits", [(12, 10, 6), (10, 7, 5)])
def test_round_trip_on_an_odd_size_at_two_bit_depths(sample_crop, bits):
    # Narrower than a tile one way, wider the other; the depths are state of one compiled
    # program, so the second case compiles little.
    crop = sample_crop[40:49, 60:91]
    result = compress(crop, FitConfig(num_gaussians=40, iterations=60), CompressConfig(*bits))
    assert bitstream.decode(result.blob).bits == bits
    decoded = decode_image(result.blob)
    np.testing.assert_array_equal(decoded, result.image)
    assert float(metrics.psnr(decoded, crop)) == result.psnr


@pytest.mark.xdist_group("odd-size")  # the programs of the test above
def test_identity_colors_take_two_bits_more_and_decode_to_what_was_reported(sample_crop):
    crop = sample_crop[40:49, 60:91]
    result = compress(crop, FitConfig(num_gaussians=40, iterations=60), CompressConfig(10, 7, colors="identity"))
    data = bitstream.decode(result.blob)
    assert data.bits == (10, 7, 7)
    np.testing.assert_array_equal(decode_image(result.blob), result.image)
    assert float(metrics.psnr(result.image, crop)) == result.psnr


@pytest.mark.xdist_group("compressed")  # one worker fits the fixture once
def test_fuzzed_files_fail_cleanly(compressed):
    blob = compressed[1].blob
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(1500):
        b = bytearray(blob)
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        cases.append(bytes(b))
    cases += [blob[:k] for k in range(len(blob))]
    cases += [blob + bytes(rng.integers(0, 256, k, dtype=np.uint8)) for k in range(1, 200)]
    for case in cases:
        with pytest.raises(bitstream.FormatError):
            bitstream.decode(case)


@pytest.mark.xdist_group("compressed")  # one worker fits the fixture once
def test_forged_files_with_valid_checksums_fail_cleanly(compressed):
    body = compressed[1].blob[:-4]
    rng = np.random.default_rng(1)
    for _ in range(300):
        b = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        forged = bytes(b) + struct.pack("<I", zlib.crc32(bytes(b)))
        try:
            bitstream.decode(forged)
        except bitstream.FormatError:
            pass


def test_cli_compress_to_a_rate_then_decompress(capsys, tmp_path, sample_crop):
    from PIL import Image
    from gipp_jax import rate
    src = tmp_path / "in.png"
    Image.fromarray((sample_crop[:48, :64] * 255).round().astype(np.uint8)).save(src)
    out, target = tmp_path / "a.gipp", 2.0
    code = main(["compress", str(src), "-o", str(out), "--bpp", str(target), "--iters", "60",
                 "--bits", "10", "7", "5", "--json", str(tmp_path / "a.json"), "--no-progress"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "aiming at at most 2 bpp: chose" in cap.err
    assert bitstream.decode(out.read_bytes()).bits == (10, 7, 5)
    bpp = out.stat().st_size * 8 / (48 * 64)
    assert (1 - rate.TOLERANCE) * target <= bpp <= target  # under its target, and near it
    assert not list(tmp_path.glob("*.npz"))  # checkpoints removed once the file is written
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["bytes"] == out.stat().st_size and report["bpp"] == pytest.approx(bpp)
    assert report["target_bpp"] == target
    assert report["method"] == "gipp-gabor"  # compress's default; every other command's is gipp-fast
    assert report["refine_sweeps"] == CompressConfig().refine_sweeps  # the codes were refined
    assert main(["decompress", str(out), "-o", str(tmp_path / "a.png")]) == 0
    from gipp_jax.io import load_image
    original = load_image(src)
    assert float(metrics.psnr(load_image(tmp_path / "a.png"), original)) == pytest.approx(report["psnr"], abs=0.1)
    capsys.readouterr()
    blob = out.read_bytes()
    for name, data, message in [("cut.gipp", blob[:-9], "checksum"), ("flip.gipp", blob[:50] + bytes([blob[50] ^ 4]) + blob[51:], "checksum"),
                                ("png.gipp", src.read_bytes(), "not a .gipp file")]:
        bad = tmp_path / name
        bad.write_bytes(data)
        assert main(["decompress", str(bad), "-o", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
        assert not (tmp_path / "x.png").exists()


def test_compression_config_loads():
    block = load_config("compression-kodak")["compression"]
    config = CompressConfig(**block).validate()
    assert (config.position_bits, config.covariance_bits, config.color_bits) == (12, 10, 6)
    assert not config.correlation  # the reference codes the off-diagonal itself
    assert not config.sized_colors  # with one color step
    assert config.refine_sweeps == 0  # and writes the codes QAT rounds to
    assert not config.coarsen_to_fit  # at its steps, Gaussians dropped to fit a size


def test_interrupted_compress_resumes_from_its_checkpoint(sample_crop, tmp_path, monkeypatch):
    from gipp_jax import compress as compress_lib
    from gipp_jax.train import Fitter
    crop = sample_crop[8:24, 8:28]
    fit = FitConfig(num_gaussians=30, iterations=80, chunk_steps=10)
    cconfig = CompressConfig(10, 7, 5)  # warm-up, QAT and step-down phases
    whole = compress(crop, fit, cconfig)
    monkeypatch.setattr(compress_lib, "CHECKPOINT_SECONDS", 0.0)
    make_program = compress_lib.qat_chunk_program
    calls = {"qat": 0, "fit": 0, "steps": [], "programs": []}
    qat_end = 80 - 16  # the last 20% step down

    def watched(interrupt: bool):
        def program_of(*optimizers_and_weight):
            program = make_program(*optimizers_and_weight)
            calls["programs"].append(program)

            def chunk(capacity, chunk_steps, state, target, num_steps):
                calls["steps"].append(int(state.step))
                if interrupt and bool(state.quantized) and int(state.step) < qat_end:
                    calls["qat"] += 1
                    if calls["qat"] == 3:
                        raise KeyboardInterrupt
                return program(capacity, chunk_steps, state, target, num_steps)
            return chunk
        return program_of

    prefix = tmp_path / "out.gipp.checkpoint"
    monkeypatch.setattr(compress_lib, "qat_chunk_program", watched(True))
    with pytest.raises(KeyboardInterrupt):
        compress(crop, fit, cconfig, checkpoint=prefix)
    assert [Path(p).is_file() for p in compress_lib.checkpoint_files(prefix)] == [True, True, False, False]

    fit_chunk = Fitter._chunk
    monkeypatch.setattr(Fitter, "_chunk", lambda *a: calls.__setitem__("fit", calls["fit"] + 1) or fit_chunk(*a))
    monkeypatch.setattr(compress_lib, "qat_chunk_program", watched(False))
    calls["steps"], calls["programs"] = [], []
    resumed = compress(crop, fit, cconfig, checkpoint=prefix)
    assert calls["fit"] == 0  # the finished representation is not fitted again
    assert calls["steps"][0] == 10 + 20  # warm-up (10 steps), then two QAT chunks
    assert calls["steps"][-1] >= qat_end  # ... and on through the step-down
    assert len(calls["programs"]) == 1 and calls["programs"][0]._cache_size() == 1  # one compiled program
    assert bitstream.decode(resumed.blob).bits == (10, 7, 5)
    assert resumed.psnr == pytest.approx(whole.psnr, abs=1e-3)


def test_cli_compress_interrupted(capsys, tmp_path, sample_crop, monkeypatch):
    from PIL import Image
    from gipp_jax import compress as compress_lib
    src = tmp_path / "in.png"
    Image.fromarray((sample_crop[:8, :8] * 255).round().astype(np.uint8)).save(src)

    def interrupted(*args, **kwargs):
        assert str(kwargs["checkpoint"]) == str(tmp_path / "a.gipp.checkpoint")
        # the depths the command reports are fixed for the image: positions 5 bits on 8 px
        assert args[2].bits == {"position": 5, "covariance": 7, "color": 5}
        raise KeyboardInterrupt

    monkeypatch.setattr(compress_lib, "compress", interrupted)
    capsys.readouterr()
    assert main(["compress", str(src), "-o", str(tmp_path / "a.gipp"), "--no-progress"]) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    assert not (tmp_path / "a.gipp").exists()


@pytest.mark.parametrize("param", ["log-rs", "cholesky", "direct"])
def test_bound_sizes_caps_only_the_giants_and_keeps_their_axes(param):
    from gipp_jax.compress import bound_sizes
    from gipp_jax.model import GaussianModel
    from gipp_jax.parameterization import covariance, from_covariance
    # (a, b, c): a needle 3000 px long at 30 degrees, an ordinary one, a wide round one
    t = np.deg2rad(30.0)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    needle = rot @ np.diag([3000.0 ** 2, 9.0 ** 2]) @ rot.T
    cov3 = np.array([[needle[0, 0], needle[0, 1], needle[1, 1]], [4.0, 1.0, 3.0], [1e6, 0.0, 1e6]], np.float32)
    n = 3
    model = GaussianModel(means=jnp.zeros((n, 2)), cov_params=from_covariance(param, cov3),
                          colors=jnp.zeros((n, 3)), filter_var=jnp.zeros(n), active=jnp.ones(n, bool),
                          height=40, width=60, parameterization=param)
    out = np.asarray(covariance(param, bound_sizes(model).cov_params))
    np.testing.assert_allclose(out[1], cov3[1], rtol=1e-4)  # untouched
    for row, minor in ((out[0], 81.0), (out[2], 3600.0)):
        values, vectors = np.linalg.eigh(np.array([[row[0], row[1]], [row[1], row[2]]]))
        assert values[1] == pytest.approx(3600.0, rel=1e-3) and values[0] == pytest.approx(minor, rel=1e-2)
    values, vectors = np.linalg.eigh(np.array([[out[0, 0], out[0, 1]], [out[0, 1], out[0, 2]]]))
    assert abs(vectors[:, 1] @ rot[:, 0]) == pytest.approx(1.0, abs=1e-4)  # same major axis
