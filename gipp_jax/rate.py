"""Rate control: what a file of N Gaussians costs, which budget and bit depths a target
rate or quality calls for, and which Gaussians to drop when a file must shrink.

The rate model is measured, not derived: ``tools/rate_table.py`` reads the ``.gipp`` files
and points of ``tools/rd_curve.py`` runs and writes ``gipp_jax/data/rate_table.json``. For
each (method, bit depths) it holds

* the payload's bits per Gaussian as ``a - b * log2(N)`` (sorted positions cost less per
  Gaussian as they get denser), plus a fixed header, and
* the mean PSNR as ``p0 + p1 * log2(N / pixels)``, a fit over the measured images: a first
  guess for ``--psnr``, since how many Gaussians a given quality needs depends on the image.

Bit depths that were never measured (``--bits 12 10 6``, the reference's) borrow the size
model of a measured setting, scaled by the raw bits a Gaussian holds at each
(:func:`derived_entry`): a first guess that pruning to size and the second encode correct.
Where rate control picks the depths, a budget sparse for its image gets fewer position bits
than the size rule gives, and one covariance bit less (:func:`entry_for_density`): a step
of at most 1/32 of the mean spacing between Gaussians (11/6/5 at 0.15 bpp on Kodak's
768x512, 12/7/5 from about 0.3).

The table is measured with sigmoid colors (:attr:`RateEntry.colors`). A fit whose colors
are the identity (``CompressConfig.colors``) gets
:data:`~gipp_jax.quantize.IDENTITY_COLOR_EXTRA_BITS` more color bits, at
:data:`IDENTITY_COLOR_COST` bits per Gaussian more (:func:`entry_for_colors`).

A ``--bpp`` target is met by aiming :data:`OVERSHOOT` above it (:data:`DETAILED_OVERSHOOT`
where much of the image is finer than the Gaussians are apart, :func:`overshoot_for`) and
then dropping the Gaussians whose removal costs the decoded image the least squared error
(:func:`gipp_jax.refine.removal_costs`) until the file fits
(:func:`gipp_jax.compress.encode_to_size`), or coding them all with coarser steps that fit
(:func:`gipp_jax.compress.coarsened_to_fit`), whichever file is nearer the image.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache
from importlib import resources

import numpy as np

from gipp_jax.attributes import LEARNED_GROUPS, depth_of
from gipp_jax.methods import METHODS
from gipp_jax.model import check_color_activation
from gipp_jax.quantize import IDENTITY_COLOR_EXTRA_BITS, position_bits_for, position_bits_for_density

OVERSHOOT = 1.08    # the first encode aims this far above a --bpp target, then prunes or coarsens to fit
# ... and this far where much of the image is finer than its Gaussians are apart
# (detail_psnr below DETAIL_PSNR_DB) and the target at most DETAILED_MAX_BPP: there the fit's
# own error outweighs what coarser steps add, so more Gaussians at coarser steps beat fewer
# at the table's; at 1 bpp they are dense enough that it no longer pays
# (docs/studies/compression.md).
DETAILED_OVERSHOOT = 1.15
DETAIL_PSNR_DB = 21.0
DETAILED_MAX_BPP = 0.75
TOLERANCE = 0.10    # a --bpp result below (1 - TOLERANCE) x target is encoded again, larger
PSNR_TOLERANCE_DB = 0.5  # a --psnr result further than this from its target is encoded again
MAX_BUDGET_CHANGE = 4.0  # the second --psnr encode scales the budget by at most this (or 1/this)
TABLE_RESOURCE = "rate_table.json"
# What identity colors cost per Gaussian more than sigmoid ones, in bits: on full-size
# kodim01-05 at 0.5 bpp the three color channels took 0.6-2.7 bits more at 7 bits than
# sigmoid colors at 5, 1.7 on the mean (docs/studies/compression.md).
IDENTITY_COLOR_COST = 1.7
# A method whose primitives may carry a carrier and which was never measured gets the
# table's entries with each Gaussian of the budget (``FitConfig.num_gaussians``, a carrier
# counted as part of one) costing this much more: gipp-gabor's fits at gipp-fast's planned
# budgets on full-size kodim01-08, each carrier's codes counted by entropy at 10 frequency
# and 6 phase bits, came 7% over (tools/rd_ceiling.py, docs/studies/carriers.md), and the
# carriers' grid of 8 and 4 bits (quantize.FREQUENCY_BITS) takes 4-5% off a file.
CARRIER_RATE_FACTOR = 1.02


@dataclasses.dataclass(frozen=True)
class RateEntry:
    """What one (method, bit depths) setting measured: bits per Gaussian and mean PSNR."""

    method: str
    bits: tuple[int, int, int]
    header_bytes: float
    bits_per_gaussian: tuple[float, float]  # (a, b): payload bits per Gaussian = a - b * log2(N)
    psnr: tuple[float, float]               # (p0, p1): dB = p0 + p1 * log2(N / pixels)
    images: int                             # how many images the fit rests on
    gaussians_per_pixel: tuple[float, float]  # the measured range; outside it the fit extrapolates
    image_side: int = 192                   # the longer side of the images measured (pixels)
    derived_from: tuple[int, int, int] | None = None  # measured depths it was scaled from, if any
    colors: str = "sigmoid"                 # the color activation of the files measured

    def file_bytes(self, num_gaussians: int) -> float:
        a, b = self.bits_per_gaussian
        n = max(num_gaussians, 1)
        return self.header_bytes + n * max(a - b * math.log2(n), 1.0) / 8.0

    def gaussians_for_bytes(self, max_bytes: float) -> int:
        """The largest N whose predicted file fits in ``max_bytes`` (0 if not even one)."""
        lo, hi = 0, 1
        while self.file_bytes(hi) <= max_bytes:
            lo, hi = hi, hi * 2
            if hi > 1 << 26:
                return lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.file_bytes(mid) <= max_bytes else (lo, mid)
        return lo

    def predicted_psnr(self, num_gaussians: int, pixels: int) -> float:
        p0, p1 = self.psnr
        return p0 + p1 * math.log2(max(num_gaussians, 1) / pixels)

    def gaussians_for_psnr(self, psnr: float, pixels: int) -> int:
        p0, p1 = self.psnr
        return max(1, round(pixels * 2.0 ** ((psnr - p0) / p1)))


@lru_cache(maxsize=None)
def rate_table() -> tuple[RateEntry, ...]:
    """The measured table shipped with the package (``gipp_jax/data/rate_table.json``)."""
    text = resources.files("gipp_jax").joinpath("data", TABLE_RESOURCE).read_text()
    return tuple(entry_from_dict(e) for e in json.loads(text)["entries"])


def entry_from_dict(d: dict) -> RateEntry:
    return RateEntry(method=d["method"], bits=tuple(d["bits"]), header_bytes=float(d["header_bytes"]),
                     bits_per_gaussian=tuple(d["bits_per_gaussian"]), psnr=tuple(d["psnr"]),
                     images=int(d["images"]), gaussians_per_pixel=tuple(d["gaussians_per_pixel"]),
                     image_side=int(d.get("image_side", 192)), colors=d.get("colors", "sigmoid"))


def raw_bits(bits: tuple[int, int, int]) -> int:
    """Bits one Gaussian's codes hold before entropy coding: each learned group's channels
    at its depth among ``bits`` (2 position, 3 covariance and 3 color codes)."""
    return sum(g.channels * depth_of(g, bits) for g in LEARNED_GROUPS)


def derived_entry(entry: RateEntry, bits: tuple[int, int, int]) -> RateEntry:
    """``entry``'s model for unmeasured depths ``bits``: payload bits per Gaussian scaled by
    the ratio of raw bits (entropy coding saves about the same fraction at nearby depths);
    the PSNR model kept, which favours the finer depths less than it should."""
    ratio = raw_bits(bits) / raw_bits(entry.bits)
    a, b = entry.bits_per_gaussian
    return dataclasses.replace(entry, bits=tuple(bits), bits_per_gaussian=(a * ratio, b * ratio),
                               derived_from=entry.derived_from or entry.bits)


def _with_position_bits(entry: RateEntry, pos: int, **changes) -> RateEntry:
    """``entry`` at position depth ``pos``, each position bit more costing two bits per
    Gaussian (a sorted position's code carries about ``2 * bits - log2 N`` bits)."""
    shift = pos - entry.bits[0]
    if shift == 0:
        return entry
    a, b = entry.bits_per_gaussian
    return dataclasses.replace(entry, bits=(pos, *entry.bits[1:]), bits_per_gaussian=(a + 2 * shift, b),
                               derived_from=entry.derived_from or entry.bits, **changes)


def entry_for_size(entry: RateEntry, height: int, width: int) -> RateEntry:
    """``entry`` moved to an image of ``height`` x ``width``: its position depth shifted as
    :func:`~gipp_jax.quantize.position_bits_for` shifts it (the same step in pixels)."""
    pos = position_bits_for(height, width, bits=entry.bits[0], side=entry.image_side)
    return _with_position_bits(entry, pos, image_side=max(height, width))


def entry_for_density(entry: RateEntry, height: int, width: int, num_gaussians: int) -> RateEntry:
    """``entry`` with its position depth lowered to what ``num_gaussians`` Gaussians on that
    image need (:func:`~gipp_jax.quantize.position_bits_for_density`), never raised, and
    where it is lowered one covariance bit less too, three bits per Gaussian cheaper (its
    three channels are nearly uniform): at such sparse budgets both measured better (Kodak
    at 0.15 bpp full size and 0.25 bpp at quarter size, docs/studies/compression.md)."""
    pos = min(entry.bits[0], position_bits_for_density(height, width, num_gaussians))
    sparse = _with_position_bits(entry, pos)
    if sparse is entry or entry.bits[1] <= 1:
        return sparse
    a, b = sparse.bits_per_gaussian
    return dataclasses.replace(sparse, bits=(pos, entry.bits[1] - 1, entry.bits[2]),
                               bits_per_gaussian=(a - 3.0, b))


def entry_for_colors(entry: RateEntry, colors: str | None) -> RateEntry:
    """``entry`` for a fit whose colors have the activation ``colors`` (None: the entry's
    own): identity colors take :data:`~gipp_jax.quantize.IDENTITY_COLOR_EXTRA_BITS` more
    color bits than sigmoid ones, at :data:`IDENTITY_COLOR_COST` bits per Gaussian more
    (fewer the other way)."""
    if colors is None or colors == entry.colors:
        return entry
    sign = 1 if check_color_activation(colors) == "identity" else -1
    color_bits = entry.bits[2] + sign * IDENTITY_COLOR_EXTRA_BITS
    if not 1 <= color_bits <= 16:
        return entry
    a, b = entry.bits_per_gaussian
    return dataclasses.replace(entry, bits=(*entry.bits[:2], color_bits), colors=colors,
                               bits_per_gaussian=(a + sign * IDENTITY_COLOR_COST, b),
                               derived_from=entry.derived_from or entry.bits)


def entries_for(method: str, bits: tuple[int, int, int] | None = None,
                table: tuple[RateEntry, ...] | None = None, *, height: int | None = None,
                width: int | None = None, colors: str | None = None) -> list[RateEntry]:
    """The table's entries for ``method`` (and ``bits``, if given), moved to an image of
    ``height`` x ``width`` when given (:func:`entry_for_size`) and to a fit with ``colors``
    (:func:`entry_for_colors`; None: as measured); for a method never measured, every
    method's; for depths never measured, the nearest measured setting's model scaled to
    them (:func:`derived_entry`)."""
    table = rate_table() if table is None else table
    if not table:
        raise ValueError("the rate table is empty: no rate measurements")
    measured_methods = {e.method for e in table}
    # A file's size is the codes', whatever fitted them: another method's measurements
    # predict it (and, less well, the quality).
    of_method = [e for e in table if e.method == method or method not in measured_methods]
    if method not in measured_methods and _has_carriers(method):
        of_method = [_with_carriers(e) for e in of_method]
    if height is not None and width is not None:
        of_method = [entry_for_size(e, height, width) for e in of_method]
    of_method = [entry_for_colors(e, colors) for e in of_method]
    if bits is None:
        return of_method
    found = [e for e in of_method if e.bits == tuple(bits)]
    if found:
        return found
    nearest = min(of_method, key=lambda e: abs(raw_bits(e.bits) - raw_bits(bits)))
    return [derived_entry(nearest, tuple(bits))]


def _has_carriers(method: str) -> bool:
    return bool(getattr(METHODS.get(method), "carriers", False))


def _with_carriers(entry: RateEntry) -> RateEntry:
    """``entry``'s model for a method with carriers (:data:`CARRIER_RATE_FACTOR`)."""
    a, b = entry.bits_per_gaussian
    return dataclasses.replace(entry, bits_per_gaussian=(a * CARRIER_RATE_FACTOR, b * CARRIER_RATE_FACTOR),
                               derived_from=entry.derived_from or entry.bits)


@dataclasses.dataclass(frozen=True)
class RatePlan:
    """What the encoder chose: a budget, bit depths and the byte limit (None: no limit)."""

    num_gaussians: int
    bits: tuple[int, int, int]
    max_bytes: int | None
    predicted_psnr: float
    predicted_bpp: float
    derived_from: tuple[int, int, int] | None = None  # the measured depths the model was scaled from
    psnr_per_doubling: float = 2.0  # the PSNR model's slope: dB gained by twice the Gaussians
    overshoot: float = OVERSHOOT  # how far above max_bytes the budget aims (OVERSHOOT or DETAILED_OVERSHOOT)

    def budget_for_psnr(self, psnr: float, measured_psnr: float) -> int:
        """The budget a second encode tries after this plan's file measured ``measured_psnr``
        dB against a ``psnr`` target: scaled along the table's slope, by at most
        :data:`MAX_BUDGET_CHANGE` either way."""
        factor = 2.0 ** ((psnr - measured_psnr) / max(self.psnr_per_doubling, 1e-3))
        factor = min(max(factor, 1.0 / MAX_BUDGET_CHANGE), MAX_BUDGET_CHANGE)
        return max(1, round(self.num_gaussians * factor))


def detail_psnr(image, num_gaussians: int) -> float:
    """How much of ``image`` ((H, W, C) in [0, 1]) is finer than ``num_gaussians`` Gaussians
    spread over it are apart: the PSNR (dB) of the image against itself blurred by a
    Gaussian of half their mean spacing, ``sqrt(H W / N) / 2`` pixels (mirrored at the
    borders). Smooth photos give 24-27 dB at Kodak's 0.5 bpp budgets, fine texture 17-20."""
    image = np.asarray(image, np.float64)
    height, width = image.shape[:2]
    sigma = 0.5 * math.sqrt(height * width / max(int(num_gaussians), 1))
    pad = min(int(math.ceil(3.0 * sigma)), height - 1, width - 1)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    gain = np.exp(-2.0 * math.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))[..., None]
    blurred = np.fft.irfft2(np.fft.rfft2(padded, axes=(0, 1)) * gain, s=padded.shape[:2], axes=(0, 1))
    mse = float(np.mean(np.square(blurred[pad:pad + height, pad:pad + width] - image)))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def overshoot_for(image, num_gaussians: int, bpp: float) -> float:
    """How far above a target of ``bpp`` to aim the first encode of ``image`` with about
    ``num_gaussians``: :data:`DETAILED_OVERSHOOT` where :func:`detail_psnr` is below
    :data:`DETAIL_PSNR_DB` and ``bpp`` at most :data:`DETAILED_MAX_BPP`, else
    :data:`OVERSHOOT`."""
    if bpp > DETAILED_MAX_BPP or detail_psnr(image, num_gaussians) >= DETAIL_PSNR_DB:
        return OVERSHOOT
    return DETAILED_OVERSHOOT


def plan_for_bpp(bpp: float, height: int, width: int, method: str,
                 bits: tuple[int, int, int] | None = None, table=None, colors: str | None = None,
                 overshoot: float = OVERSHOOT) -> RatePlan:
    """Budget and bit depths for a file of at most ``bpp`` bits per pixel of a fit whose
    colors have the activation ``colors`` (None: the table's): for each measured depth
    setting (or only ``bits``), the budget that fills the rate ``overshoot`` over, and
    of those the one with the best predicted PSNR."""
    pixels = height * width
    max_bytes = int(bpp * pixels / 8)
    best = None
    for entry in entries_for(method, bits, table, height=height, width=width, colors=colors):
        n = entry.gaussians_for_bytes(max_bytes * overshoot)
        if n < 1:
            continue
        if bits is None:  # depths of rate control's choosing: sparse Gaussians, coarser codes
            sparse = entry_for_density(entry, height, width, n)
            entry, n = sparse, sparse.gaussians_for_bytes(max_bytes * overshoot)
        plan = RatePlan(n, entry.bits, max_bytes, entry.predicted_psnr(n, pixels),
                        8 * entry.file_bytes(n) / pixels, entry.derived_from, entry.psnr[1], overshoot)
        if best is None or plan.predicted_psnr > best.predicted_psnr:
            best = plan
    if best is None:
        smallest = min(e.file_bytes(1) for e in entries_for(method, bits, table, height=height, width=width,
                                                             colors=colors))
        raise ValueError(f"--bpp {bpp:g} is below what one Gaussian costs on a {width}x{height} image "
                         f"(about {8 * smallest / pixels:.3g} bpp)")
    return best


def plan_for_psnr(psnr: float, height: int, width: int, method: str,
                  bits: tuple[int, int, int] | None = None, table=None, colors: str | None = None) -> RatePlan:
    """Budget and bit depths predicted to reach ``psnr`` dB with the smallest file
    (``colors`` as in :func:`plan_for_bpp`)."""
    pixels = height * width
    best = None
    for entry in entries_for(method, bits, table, height=height, width=width, colors=colors):
        n = entry.gaussians_for_psnr(psnr, pixels)
        if bits is None:
            entry = entry_for_density(entry, height, width, n)
        plan = RatePlan(n, entry.bits, None, psnr, 8 * entry.file_bytes(n) / pixels, entry.derived_from,
                        entry.psnr[1])
        if best is None or plan.predicted_bpp < best.predicted_bpp:
            best = plan
    return best


def plan_for_target(height: int, width: int, method: str, *, bpp: float | None = None,
                    psnr: float | None = None, bits: tuple[int, int, int] | None = None,
                    num_gaussians: int | None = None, table=None, colors: str | None = None,
                    image=None) -> RatePlan:
    """The plan for exactly one target, ``bpp`` (:func:`plan_for_bpp`) or ``psnr``
    (:func:`plan_for_psnr`), for a fit with ``colors`` (None: the table's), its budget
    replaced by ``num_gaussians`` when given. With the (H, W, 3) ``image`` and no
    ``num_gaussians``, a ``bpp`` plan aims as far over as :func:`overshoot_for` says at the
    budget planned :data:`OVERSHOOT` over; else :data:`OVERSHOOT`. Raises ValueError with a
    one-line message for a missing, doubled or non-positive target."""
    if (bpp is None) == (psnr is None):
        raise ValueError("give exactly one of bpp and psnr")
    if not (bpp if bpp is not None else psnr) > 0:  # NaN fails too
        raise ValueError("the target must be positive")
    if bpp is None:
        plan = plan_for_psnr(psnr, height, width, method, bits, table, colors)
    else:
        plan = plan_for_bpp(bpp, height, width, method, bits, table, colors)
    if num_gaussians is not None:  # the budget is given: how far over to aim does not arise
        return dataclasses.replace(plan, num_gaussians=num_gaussians)
    if bpp is not None and image is not None:
        overshoot = overshoot_for(image, plan.num_gaussians, bpp)
        if overshoot != plan.overshoot:
            plan = plan_for_bpp(bpp, height, width, method, bits, table, colors, overshoot)
    return plan
