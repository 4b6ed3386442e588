#!/usr/bin/env python3
"""What one bit less on each attribute would cost a .gipp file, without training again.

For each of position, covariance and color: the file's Gaussians re-quantized onto every
other level of that attribute's quantizer (the step doubled, as compression's step-down does),
refined against the image as ``gipp compress`` refines (:func:`gipp_jax.refine.refine_codes`,
4 sweeps), then decoded: bits per Gaussian and PSNR against the file's own. A depth whose
bits saved buy more than its PSNR lost (at the rate's PSNR per doubling of the file) is too
fine for that file; QAT at the lower depth would recover some of the loss, so this bounds
what the step down costs from above. With ``--carriers F/P ...``, a file whose primitives
carry carriers is also coded on each of those carrier grids (F frequency bits, P phase bits,
:class:`~gipp_jax.quantize.CarrierQuantizer`), refined the same way, against the file
refined as many sweeps again (refinement alone gains a little). Prints one JSON object per
file.

    python tools/depth_probe.py ../shared/data/kodak/kodim01.png \\
        docs/rd/kodak-full-defaults/points/kodim01-bpp0.15-gipp-fast.gipp
    python tools/depth_probe.py ../shared/data/kodak/kodim01.png FILE.gipp --carriers 9/5 8/4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import jax.numpy as jnp
import numpy as np

from gipp_jax import bitstream, codec, metrics
from gipp_jax import quantize as q_lib
from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
from gipp_jax.io import InputError, load_image
from gipp_jax.refine import refine_codes

ATTRIBUTES = ("position", "covariance", "color")  # in the order of Encoded.bits


def one_bit_less(data: bitstream.Encoded, attribute: str) -> bitstream.Encoded:
    """``data``'s Gaussians, as decoded, coded again with ``attribute``'s quantizer one bit
    coarser (:func:`~gipp_jax.quantize.gaussian_quantizers_with_bits`: the same offsets,
    every other level), as compression's step-down re-quantizes."""
    depths = dict(zip(ATTRIBUTES, data.bits))
    depths[attribute] -= 1
    coarse = q_lib.gaussian_quantizers_with_bits(codec.file_quantizers(data), depths)
    codes = q_lib.gaussian_codes(coarse, *(jnp.asarray(x) for x in codec.file_gaussians(data)))
    return dataclasses.replace(data, bits=tuple(depths.values()), codes=np.asarray(codes, np.int64),
                               quantizers=codec.header_floats(coarse))


def on_carrier_grid(data: bitstream.Encoded, frequency_bits: int, phase_bits: int) -> bitstream.Encoded:
    """``data``'s carriers, as decoded, coded again on the grid of ``frequency_bits`` and
    ``phase_bits``; a carrier that would round to the plain Gaussian's codes keeps the
    nearest code that is not (a primitive keeps its kind)."""
    grid = q_lib.CarrierQuantizer(frequency_bits, phase_bits)
    codes = np.asarray(q_lib.carrier_codes(grid, jnp.asarray(codec.file_carriers(data))), np.int64)
    flagged = bitstream.carrier_flags(np.asarray(data.carriers))
    codes[flagged & ~bitstream.carrier_flags(codes), 2] = 1
    return dataclasses.replace(data, carriers=codes, carrier_bits=(frequency_bits, phase_bits))


def carrier_grid(text: str) -> tuple[int, int]:
    """``F/P`` -> (F, P)."""
    try:
        frequency_bits, phase_bits = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not F/P (frequency and phase bits, e.g. 8/4)") from None
    try:
        q_lib.CarrierQuantizer(frequency_bits, phase_bits).validate()
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return frequency_bits, phase_bits


def measure(blob: bytes, image: np.ndarray) -> tuple[float, float]:
    """(bits per Gaussian, PSNR dB) of a file's bytes."""
    n = max(bitstream.decode(blob).codes.shape[0], 1)
    return len(blob) * 8 / n, float(metrics.psnr(codec.decode_image(blob), image))


def carrier_grids(data: bitstream.Encoded, image: np.ndarray, grids, sweeps: int) -> dict:
    """The file refined ``sweeps`` more passes, then on each carrier grid (F, P) of ``grids``
    refined as many: bytes and PSNR, and the changes against the file refined again."""
    def measured(d: bitstream.Encoded) -> dict:
        blob = bitstream.encode(refine_codes(d, image, sweeps=sweeps))
        return {"bytes": len(blob), "psnr": round(measure(blob, image)[1], 4)}

    again = measured(data)
    rows = {"refined_again": {"grid": list(data.carrier_bits), **again}}
    for frequency_bits, phase_bits in grids:
        row = measured(on_carrier_grid(data, frequency_bits, phase_bits))
        rows[f"{frequency_bits}/{phase_bits}"] = {
            **row, "saved_percent": round(100 * (1 - row["bytes"] / again["bytes"]), 2),
            "psnr_change": round(row["psnr"] - again["psnr"], 4)}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("files", nargs="+", metavar="FILE.gipp")
    parser.add_argument("--sweeps", type=int, default=4, help="refinement passes (default 4)")
    parser.add_argument("--carriers", nargs="+", type=carrier_grid, default=[], metavar="F/P",
                        help="also code a file's carriers on these grids (frequency/phase bits)")
    args = parser.parse_args()
    use_fast_cpu_flags(enable_compilation_cache())
    try:
        image = load_image(args.image)
    except InputError as err:
        parser.error(str(err))
    for path in args.files:
        try:
            blob = open(path, "rb").read()
            data = bitstream.decode(blob)
        except (OSError, bitstream.FormatError) as err:
            parser.error(f"cannot read {path}: {err}")
        per_gaussian, psnr = measure(blob, image)
        rows = {}
        for attribute in ATTRIBUTES:
            if data.bits[ATTRIBUTES.index(attribute)] <= 1:
                continue
            coarse = one_bit_less(data, attribute)
            refined = refine_codes(coarse, image, sweeps=args.sweeps)
            bits, db = measure(bitstream.encode(refined), image)
            rows[attribute] = {"bits": list(coarse.bits), "bits_per_gaussian": round(bits, 3),
                               "saved_percent": round(100 * (1 - bits / per_gaussian), 2),
                               "psnr": round(db, 3), "psnr_change": round(db - psnr, 3)}
        report = {"command": " ".join(["python"] + sys.argv), "file": path,
                  "bits": list(data.bits), "gaussians": int(data.codes.shape[0]),
                  "bits_per_gaussian": round(per_gaussian, 3), "psnr": round(psnr, 3),
                  "one_bit_less": rows}
        if args.carriers and data.carriers is not None:
            report["carriers"] = carrier_grids(data, image, args.carriers, args.sweeps)
        print(json.dumps(report, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
