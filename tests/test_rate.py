"""Rate control: removal costs against decoding, pruning to a size, the rate model's
arithmetic, and `gipp compress --bpp` landing under and near its target."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gipp_jax import bitstream, rate
from gipp_jax.cli import main
from gipp_jax.codec import decode_image, quantizers_from_header
from gipp_jax.compress import encode_to_size
from gipp_jax.parameterization import triple_to_matrix
from gipp_jax.quantize import gaussians_from_codes
from gipp_jax.raster import render_gaussians
from gipp_jax.refine import removal_costs


def coded_scene(rng, n=60, h=32, w=48, bits=(10, 7, 5)):
    """A quantized random scene as a file's contents, and a target it roughly matches."""
    floats = np.array([w / 1023, h / 1023, 0, 0,   # position scale, offset (x, y)
                       0.02, 0.02, 0, 0,            # log covariance diagonal
                       0.1, -6.0,                   # off-diagonal
                       0.05, 0.05, 0.05, -0.4, -0.4, -0.4], np.float16).astype(np.float32)
    levels = [1 << bits[0]] * 2 + [1 << bits[1]] * 3 + [1 << bits[2]] * 3
    codes = np.stack([rng.integers(0, lv, n) for lv in levels], 1)
    codes[:, 2:4] = rng.integers(60, 100, (n, 2))  # 3-7 px^2 (log-domain codes)
    codes[:, 4] = 60                                 # off-diagonal 0
    data = bitstream.Encoded(h, w, bits, floats, codes)
    qs = quantizers_from_header(floats, bits)
    means, cov3, colors = gaussians_from_codes(qs, jnp.asarray(codes))
    image = render_gaussians(means, triple_to_matrix(cov3), colors, h, w)
    target = np.clip(np.asarray(image) + rng.normal(0, 0.05, image.shape), 0, 1).astype(np.float32)
    return data, (means, cov3, colors), target


def bright_spot_scene(rng):
    """``coded_scene`` plus four Gaussians on one spot whose plain sum (2.4 at the centre)
    the decoder clamps to 1, and the target the decoder draws of it all: (data, target)."""
    data, _, _ = coded_scene(rng)
    spot = np.array([[512, 512, 127, 127, 60, 20, 20, 20]] * 4)  # centre; 12.7 px^2; color 0.6
    data = dataclasses.replace(data, codes=np.concatenate([data.codes, spot]))
    return data, decode_image(bitstream.encode(data))


def squared_error_of(data, target):
    return float(np.sum(np.square(decode_image(bitstream.encode(data)) - target)))


def test_removal_costs_are_the_decoded_error_each_removal_adds():
    rng = np.random.default_rng(0)
    data, target = bright_spot_scene(rng)
    target = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    n = data.codes.shape[0]
    for keep in (np.arange(n), np.sort(rng.choice(n, 40, replace=False))):
        cost = removal_costs(data, target, keep)
        subset = dataclasses.replace(data, codes=data.codes[keep])
        base = squared_error_of(subset, target)
        brute = [squared_error_of(dataclasses.replace(data, codes=data.codes[np.delete(keep, i)]), target) - base
                 for i in range(len(keep))]
        np.testing.assert_allclose(cost, brute, atol=1e-3 * np.abs(brute).max())
    # Each of the four on the bright spot alone changes little: the other three still clamp.
    assert cost.shape == (40,) and removal_costs(data, target)[-4:].max() < np.median(removal_costs(data, target))


def test_encode_to_size_keeps_what_the_decoded_image_needs_and_as_many_as_fit():
    rng = np.random.default_rng(1)
    data, target = bright_spot_scene(rng)
    h, w = target.shape[:2]
    full, n = len(bitstream.encode(data)), data.codes.shape[0]
    per_gaussian = full / n
    limit = int(full - 3.5 * per_gaussian)
    blob = encode_to_size(data, target, limit)
    kept = bitstream.decode(blob).codes
    assert len(blob) <= limit and 0 < kept.shape[0] < n
    assert len(blob) > limit - 2 * per_gaussian  # as many as fit
    # Without the clamp each spot Gaussian looks harmful (the plain sum overshoots the
    # target there) and all four would go first; measured on the decoded image and again
    # as they go, at most two may (the spot stays white).
    assert decode_image(blob)[h // 2, w // 2].min() > 0.99
    assert (kept[:, :2] == 512).all(axis=1).sum() >= 2
    assert encode_to_size(data, target, full) == bitstream.encode(data)  # fits: untouched
    with pytest.raises(ValueError, match="empty file"):
        encode_to_size(data, target, 20)


ENTRY = rate.RateEntry(method="m", bits=(10, 7, 5), header_bytes=70.0, bits_per_gaussian=(50.0, 1.0),
                       psnr=(40.0, 3.0), images=4, gaussians_per_pixel=(0.001, 0.03))


def test_rate_entry_inverts_its_size_and_quality_models():
    for max_bytes in (80, 500, 4321, 10 ** 6):
        n = ENTRY.gaussians_for_bytes(max_bytes)
        assert ENTRY.file_bytes(n) <= max_bytes < ENTRY.file_bytes(n + 1)
    # 70 bytes of header, then 300 Gaussians of 50 - log2(300) = 41.77 bits
    assert ENTRY.file_bytes(300) == pytest.approx(70 + 300 * (50 - np.log2(300)) / 8)
    n = ENTRY.gaussians_for_psnr(31.0, 10000)  # 31 = 40 + 3 log2(N / 10^4): N = 10^4 / 8
    assert n == 1250 and ENTRY.predicted_psnr(n, 10000) == pytest.approx(31.0)


def test_plans_choose_the_depths_the_table_favours():
    coarse = dataclasses.replace(ENTRY, bits=(8, 6, 4), bits_per_gaussian=(30.0, 1.0), psnr=(38.0, 3.0))
    table = (ENTRY, coarse)
    # 3 dB per doubling: the coarse depths buy 1.6x more Gaussians (+2 dB) for 2 dB less.
    plan = rate.plan_for_bpp(0.5, 128, 192, "m", table=table)
    assert plan.max_bytes == int(0.5 * 128 * 192 / 8)
    best = max(table, key=lambda e: e.predicted_psnr(e.gaussians_for_bytes(plan.max_bytes * rate.OVERSHOOT),
                                                     128 * 192))
    assert plan.bits == best.bits
    assert rate.plan_for_bpp(0.5, 128, 192, "m", bits=(10, 7, 5), table=table).bits == (10, 7, 5)
    assert rate.plan_for_psnr(30.0, 128, 192, "m", table=table).bits == (8, 6, 4)  # smaller file
    assert rate.plan_for_bpp(0.5, 128, 192, "unmeasured", table=table).bits in {(10, 7, 5), (8, 6, 4)}
    with pytest.raises(ValueError, match="below what one Gaussian costs"):
        rate.plan_for_bpp(0.01, 16, 16, "m", table=table)
    # Unmeasured depths borrow the nearest setting's size model, scaled by the raw bits:
    # 9/9/9 holds 72 raw bits against 56 at 10/7/5 and 40 at 8/6/4.
    plan = rate.plan_for_bpp(0.5, 128, 192, "m", bits=(9, 9, 9), table=table)
    assert plan.bits == (9, 9, 9) and plan.derived_from == (10, 7, 5)
    derived = dataclasses.replace(ENTRY, bits=(9, 9, 9), bits_per_gaussian=(50.0 * 72 / 56, 72 / 56))
    assert plan.num_gaussians == derived.gaussians_for_bytes(plan.max_bytes * rate.OVERSHOOT)
    assert plan.num_gaussians < rate.plan_for_bpp(0.5, 128, 192, "m", bits=(10, 7, 5), table=table).num_gaussians



def test_detail_psnr_is_what_the_blur_at_half_the_spacing_takes_from_a_wave():
    # A cosine of f cycles per pixel keeps exp(-2 pi^2 sigma^2 f^2) of itself through a
    # Gaussian blur of sigma; what it loses has the mean square (1 - that)^2 a^2 / 2.
    h, w, n, f, a = 64, 96, 96, 1.0 / 8.0, 0.3
    sigma = 0.5 * np.sqrt(h * w / n)  # 4 px
    wave = 0.5 + a * np.cos(2 * np.pi * f * np.arange(w))
    image = np.broadcast_to(wave[None, :, None], (h, w, 3))
    kept = np.exp(-2 * np.pi ** 2 * sigma ** 2 * f ** 2)
    expected = -10 * np.log10((1 - kept) ** 2 * a ** 2 / 2)
    # The wave's period divides the width: the mirrored borders blur as the inside does.
    assert rate.detail_psnr(image, n) == pytest.approx(expected, abs=0.05)
    assert rate.detail_psnr(np.full((h, w, 3), 0.4), n) == np.inf


def test_a_plan_aims_further_over_where_the_image_is_finer_than_its_gaussians():
    rng = np.random.default_rng(0)
    smooth = np.broadcast_to(np.linspace(0.2, 0.8, 192)[None, :, None], (128, 192, 3))
    grain = rng.uniform(0.0, 1.0, (128, 192, 3))
    plain = rate.plan_for_target(128, 192, "m", bpp=0.5, table=(ENTRY,))
    assert rate.plan_for_target(128, 192, "m", bpp=0.5, table=(ENTRY,), image=smooth) == plain
    assert plain.overshoot == rate.OVERSHOOT
    detailed = rate.plan_for_target(128, 192, "m", bpp=0.5, table=(ENTRY,), image=grain)
    assert rate.overshoot_for(grain, plain.num_gaussians, 0.5) == detailed.overshoot == rate.DETAILED_OVERSHOOT
    assert detailed == rate.plan_for_bpp(0.5, 128, 192, "m", table=(ENTRY,), overshoot=rate.DETAILED_OVERSHOOT)
    assert detailed.num_gaussians > plain.num_gaussians and detailed.max_bytes == plain.max_bytes
    # Nor where the target is dense or the budget given, nor for a quality target.
    fixed = rate.plan_for_target(128, 192, "m", bpp=0.5, num_gaussians=77, table=(ENTRY,), image=grain)
    assert fixed == dataclasses.replace(plain, num_gaussians=77)
    assert rate.plan_for_target(128, 192, "m", bpp=1.0, table=(ENTRY,), image=grain) == rate.plan_for_target(
        128, 192, "m", bpp=1.0, table=(ENTRY,))
    assert rate.plan_for_target(128, 192, "m", psnr=30.0, table=(ENTRY,), image=grain).overshoot == rate.OVERSHOOT


def test_a_plan_for_a_target_takes_exactly_one_positive_target():
    plan = rate.plan_for_target(128, 192, "m", bpp=0.5, table=(ENTRY,))
    assert plan == rate.plan_for_bpp(0.5, 128, 192, "m", table=(ENTRY,))
    assert rate.plan_for_target(128, 192, "m", psnr=30.0, table=(ENTRY,)) == rate.plan_for_psnr(
        30.0, 128, 192, "m", table=(ENTRY,))
    fixed = rate.plan_for_target(128, 192, "m", bpp=0.5, num_gaussians=77, table=(ENTRY,))
    assert fixed.num_gaussians == 77 and fixed.max_bytes == plan.max_bytes
    for bad in ({}, {"bpp": 0.5, "psnr": 30.0}, {"bpp": 0.0}, {"psnr": -1.0}):
        with pytest.raises(ValueError):
            rate.plan_for_target(128, 192, "m", table=(ENTRY,), **bad)

def test_positions_keep_their_step_in_pixels_on_other_image_sizes():
    from gipp_jax.quantize import position_bits_for
    # 10 bits on 192 px is a step of 192 / 1024 px; 12 bits on 768 px is the same step.
    assert [position_bits_for(h, w) for h, w in ((128, 192), (192, 128), (256, 384), (512, 768))] == [10, 10, 11, 12]
    assert position_bits_for(48, 32) == 8 and position_bits_for(1356, 2040) == 12  # the format's 12 at most
    # ENTRY (10/7/5, measured on 192-px sides) on a 768-px side: 12/7/5, 2 x 2 bits more per Gaussian
    moved = rate.entry_for_size(ENTRY, 512, 768)
    assert moved.bits == (12, 7, 5) and moved.derived_from == (10, 7, 5)
    assert moved.file_bytes(300) - ENTRY.file_bytes(300) == pytest.approx(300 * 4 / 8)
    assert rate.entry_for_size(ENTRY, 128, 192) is ENTRY
    plan = rate.plan_for_bpp(0.5, 512, 768, "m", table=(ENTRY,))
    assert plan.bits == (12, 7, 5) and plan.num_gaussians == moved.gaussians_for_bytes(plan.max_bytes * rate.OVERSHOOT)
    # depths given at that size are matched against the moved entry, not scaled by raw bits
    assert rate.plan_for_bpp(0.5, 512, 768, "m", bits=(12, 7, 5), table=(ENTRY,)).num_gaussians == plan.num_gaussians


def test_sparse_gaussians_get_coarser_positions():
    from gipp_jax.quantize import position_bits_for_density
    # 1348 Gaussians on 768x512: 17.1 px apart; a step of 1/32 of that is 0.53 px, which
    # 2^11 codes over 768 px (0.375 px) meet and 2^10 (0.75 px) do not.
    assert position_bits_for_density(512, 768, 1348) == 11
    assert position_bits_for_density(512, 768, 4784) == 12  # 9.1 px apart: 0.28 px, 2^12 codes
    assert position_bits_for_density(512, 768, 10 ** 6) == 12  # the format's 12 at most
    assert position_bits_for_density(16, 16, 1) == 5  # 16 px apart: 0.5-px steps, 32 codes
    # A --bpp plan lowers the size rule's depth where its budget is sparse, and the
    # covariance's by one: 2 + 3 bits per Gaussian cheaper, so the budget grows; dense
    # budgets keep the depths.
    moved = rate.entry_for_size(ENTRY, 512, 768)  # 12/7/5
    sparse = rate.plan_for_bpp(0.15, 512, 768, "m", table=(ENTRY,))
    assert sparse.bits == (11, 6, 5)
    cheaper = rate.entry_for_density(moved, 512, 768, sparse.num_gaussians)
    assert moved.file_bytes(1000) - cheaper.file_bytes(1000) == pytest.approx(1000 * 5 / 8)
    assert sparse.num_gaussians > moved.gaussians_for_bytes(sparse.max_bytes * rate.OVERSHOOT)
    assert sparse.predicted_bpp <= 0.15 * rate.OVERSHOOT
    assert rate.plan_for_bpp(0.5, 512, 768, "m", table=(ENTRY,)).bits == (12, 7, 5)
    assert rate.plan_for_psnr(15.0, 512, 768, "m", table=(ENTRY,)).bits == (11, 6, 5)  # 1220 Gaussians
    # Depths the user gives are kept.
    assert rate.plan_for_bpp(0.15, 512, 768, "m", bits=(12, 7, 5), table=(ENTRY,)).bits == (12, 7, 5)


def test_compress_config_fixes_the_position_depth_for_the_image_and_the_color_depth_for_the_colors():
    from gipp_jax.compress import CompressConfig
    assert CompressConfig().for_image(512, 768).for_colors("sigmoid").bits == {
        "position": 12, "covariance": 7, "color": 5}
    assert CompressConfig().for_image(128, 192).position_bits == 10
    assert CompressConfig(position_bits=9).for_image(512, 768).position_bits == 9  # given: kept
    assert CompressConfig().for_colors("identity").color_bits == 7
    assert CompressConfig(color_bits=6).for_colors("identity").color_bits == 6  # given: kept
    with pytest.raises(ValueError, match="color activation"):
        CompressConfig().for_colors("tanh")
    # Whose colors: the settings', else the fit method's.
    from gipp_jax.train import FitConfig
    assert CompressConfig().colors_for(FitConfig(method="gaussianimage++")) == "sigmoid"
    assert CompressConfig(colors="sigmoid").colors_for(FitConfig(method="gipp-fast")) == "sigmoid"
    assert CompressConfig().colors_for(FitConfig(method="gipp-fast")) == FitConfig().recipe.compression_colors
    with pytest.raises(ValueError, match="unknown color activation 'tanh'"):
        CompressConfig(colors="tanh").validate()


def test_identity_colors_take_two_color_bits_more_at_their_measured_cost():
    wide = rate.entry_for_colors(ENTRY, "identity")
    assert wide.bits == (10, 7, 7) and wide.colors == "identity" and wide.derived_from == (10, 7, 5)
    assert wide.file_bytes(300) - ENTRY.file_bytes(300) == pytest.approx(300 * rate.IDENTITY_COLOR_COST / 8)
    assert rate.entry_for_colors(ENTRY, None) is ENTRY and rate.entry_for_colors(ENTRY, "sigmoid") is ENTRY
    assert rate.entry_for_colors(wide, "sigmoid").bits_per_gaussian == pytest.approx(ENTRY.bits_per_gaussian)
    with pytest.raises(ValueError, match="unknown color activation"):
        rate.entry_for_colors(ENTRY, "tanh")
    # A plan for identity colors: the table's depths with two color bits more, and as many
    # Gaussians as that entry's size model fits (the predicted quality is the table's).
    plan = rate.plan_for_bpp(0.5, 512, 768, "m", table=(ENTRY,), colors="identity")
    moved = rate.entry_for_colors(rate.entry_for_size(ENTRY, 512, 768), "identity")
    assert plan.bits == (12, 7, 7) and plan.num_gaussians == moved.gaussians_for_bytes(plan.max_bytes * rate.OVERSHOOT)
    assert plan.num_gaussians < rate.plan_for_bpp(0.5, 512, 768, "m", table=(ENTRY,)).num_gaussians
    assert rate.plan_for_bpp(0.15, 512, 768, "m", table=(ENTRY,), colors="identity").bits == (11, 6, 7)
    # Given depths are matched against the moved entry, not scaled by raw bits.
    given = rate.plan_for_bpp(0.5, 512, 768, "m", bits=(12, 7, 7), table=(ENTRY,), colors="identity")
    assert given.num_gaussians == plan.num_gaussians


def test_shipped_table_is_a_measured_one():
    table = rate.rate_table()
    assert table and all(e.images >= 1 and e.bits_per_gaussian[0] > 0 and e.psnr[1] > 0 for e in table)
    from gipp_jax.methods import DEFAULT_METHOD
    assert any(e.method == DEFAULT_METHOD for e in table)


@pytest.mark.parametrize("args, message", [
    (["--bpp", "0.001"], "below what one Gaussian costs"),
    (["--bpp", "1", "--psnr", "30"], "not allowed with"),
    (["--psnr", "-3"], "--psnr must be a positive number (got -3)"),
])
def test_cli_rate_errors_are_one_line(capsys, tmp_path, sample_crop, args, message):
    src = tmp_path / "in.png"
    Image.fromarray((sample_crop[:16, :16] * 255).round().astype(np.uint8)).save(src)
    capsys.readouterr()
    try:
        code = main(["compress", str(src), "-o", str(tmp_path / "a.gipp"), *args])
    except SystemExit as exc:  # argparse's own checks exit from parsing
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.glob("a.gipp*"))


@pytest.mark.parametrize("args, bits", [
    ([], None),                                          # rate control picks the depths
    (["--bits", "12", "10", "6"], (12, 10, 6)),
    (["--config", "compression-kodak"], (12, 10, 6)),    # the config's depths are kept
])
def test_cli_rate_control_keeps_depths_that_were_given(capsys, tmp_path, sample_crop, monkeypatch,
                                                       args, bits):
    import gipp_jax.compress

    src = tmp_path / "in.png"
    Image.fromarray((sample_crop[:32, :48] * 255).round().astype(np.uint8)).save(src)
    seen = {}

    def stop(image, config, cconfig, **kwargs):
        seen.update(kwargs, cconfig_bits=tuple(cconfig.bits.values()))
        raise KeyboardInterrupt

    monkeypatch.setattr(gipp_jax.compress, "compress_to_rate", stop)
    assert main(["compress", str(src), "-o", str(tmp_path / "a.gipp"), "--bpp", "1.5", *args,
                 "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert seen["bits"] == bits
    measured = {e.bits for e in rate.rate_table()}
    # on a 48-px side, the measured depths' positions move 2 bits down (the same step in pixels)
    moved = {(e.bits[0] - 2, *e.bits[1:]) for e in rate.rate_table()}
    assert seen["cconfig_bits"] == bits if bits else seen["cconfig_bits"] in moved
    assert f"at bits {'/'.join(map(str, seen['cconfig_bits']))}" in err
    assert ("scaled from" in err) == (seen["cconfig_bits"] not in measured)
    assert not (tmp_path / "a.gipp").exists()


def test_psnr_target_is_encoded_again_when_the_image_misses_it(monkeypatch):
    """compress_to_rate(psnr=...) with a stand-in encoder whose quality is known: the table
    (ENTRY) says 40 + 3 log2(N / pixels) dB; this image gives ``harder`` dB less."""
    import gipp_jax.compress as compress_lib
    from gipp_jax.train import FitConfig

    monkeypatch.setattr(rate, "rate_table", lambda: (ENTRY,))
    budgets, harder = [], 2.0

    def fake_compress(image, fit_config, config, **kwargs):
        n = fit_config.num_gaussians
        budgets.append(n)
        return compress_lib.CompressResult(blob=bytes(n), image=image, psnr=40.0 - harder + 3 * np.log2(n / 10000),
                                           ms_ssim=1.0, bpp=8 * n / 10000, num_gaussians=n, encode_seconds=0.0)

    monkeypatch.setattr(compress_lib, "compress", fake_compress)
    image = np.zeros((100, 100, 3), np.float32)
    result, plan = compress_lib.compress_to_rate(image, FitConfig(), psnr=31.0)
    # The table asks for 1250 Gaussians (31 dB on its images); this image gives 29 dB with
    # them, so the second encode moves 2 dB along the slope: 1250 * 2^(2/3).
    assert budgets == [1250, round(1250 * 2 ** (2 / 3))]
    assert plan.num_gaussians == budgets[1] and result.psnr == pytest.approx(31.0, abs=0.01)
    budgets.clear()
    compress_lib.compress_to_rate(image, FitConfig(), psnr=31.0, num_gaussians=1000)
    assert budgets == [1000]  # a budget that was given is kept
    # Far out of reach (9 dB short: 8x the budget): it grows by MAX_BUDGET_CHANGE at most,
    # and the better of two files that both miss is kept.
    budgets.clear()
    harder = 9.0
    result, plan = compress_lib.compress_to_rate(image, FitConfig(), psnr=31.0)
    assert budgets == [1250, round(1250 * rate.MAX_BUDGET_CHANGE)] and plan.num_gaussians == budgets[1]
    # Within the tolerance: one encode.
    budgets.clear()
    harder = rate.PSNR_TOLERANCE_DB / 2
    result, plan = compress_lib.compress_to_rate(image, FitConfig(), psnr=31.0)
    assert budgets == [1250] and plan.num_gaussians == 1250
    # Too good (the image is easier): the second, smaller file is kept, as it still reaches the target.
    budgets.clear()
    harder = -1.5
    result, plan = compress_lib.compress_to_rate(image, FitConfig(), psnr=31.0)
    assert budgets == [1250, round(1250 * 2 ** (-1.5 / 3))] and plan.num_gaussians == budgets[1]
    assert result.psnr == pytest.approx(31.0, abs=0.01)


def test_a_method_with_carriers_never_measured_plans_from_the_plain_entries_at_their_cost():
    (plain,) = rate.entries_for("gipp-fast", table=(ENTRY,))
    (textured,) = rate.entries_for("gipp-gabor", table=(ENTRY,))
    assert plain == ENTRY  # a method never measured, without carriers: the entries as they are
    assert textured.bits_per_gaussian == pytest.approx((50.0 * rate.CARRIER_RATE_FACTOR, rate.CARRIER_RATE_FACTOR))
    assert textured.derived_from == ENTRY.bits
    a = rate.plan_for_bpp(0.5, 512, 768, "gipp-fast", table=(ENTRY,))
    b = rate.plan_for_bpp(0.5, 512, 768, "gipp-gabor", table=(ENTRY,))
    assert b.max_bytes == a.max_bytes and b.num_gaussians < a.num_gaussians
    measured = dataclasses.replace(ENTRY, method="gipp-gabor")
    assert rate.entries_for("gipp-gabor", table=(ENTRY, measured)) == [measured]  # once measured, its own
