#!/usr/bin/env python3
"""What one bit less on each attribute would cost a .gipp file, without training again.

For each of position, covariance and color: the file's Gaussians re-quantized onto every
other level of that attribute's quantizer (the step doubled, as compression's step-down does),
refined against the image as ``gipp compress`` refines (:func:`gipp_jax.refine.refine_codes`,
4 sweeps), then decoded: bits per Gaussian and PSNR against the file's own. A depth whose
bits saved buy more than its PSNR lost (at the rate's PSNR per doubling of the file) is too
fine for that file; QAT at the lower depth would recover some of the loss, so this bounds
what the step down costs from above. Prints one JSON object per file.

    python tools/depth_probe.py ../shared/data/kodak/kodim01.png \\
        docs/rd/kodak-full-defaults/points/kodim01-bpp0.15-gipp-fast.gipp
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


def measure(blob: bytes, image: np.ndarray) -> tuple[float, float]:
    """(bits per Gaussian, PSNR dB) of a file's bytes."""
    n = max(bitstream.decode(blob).codes.shape[0], 1)
    return len(blob) * 8 / n, float(metrics.psnr(codec.decode_image(blob), image))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("files", nargs="+", metavar="FILE.gipp")
    parser.add_argument("--sweeps", type=int, default=4, help="refinement passes (default 4)")
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
        print(json.dumps({"command": " ".join(["python"] + sys.argv), "file": path,
                          "bits": list(data.bits), "gaussians": int(data.codes.shape[0]),
                          "bits_per_gaussian": round(per_gaussian, 3), "psnr": round(psnr, 3),
                          "one_bit_less": rows}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
