#!/usr/bin/env python3
"""Entropy coding against fixed-length coding of the same codes.

Quantizes a fitted model (model.npz from `gipp fit`) with min/max-initialised LSQ+
quantizers at 12/10/6 bits, writes the codes as a .gipp file, and compares its size with
the reference's fixed-length layout: 72 bits per Gaussian plus 512 bits of quantizer
parameters. Prints JSON.

    python tools/bench_entropy.py demo-output/model.npz
"""

from __future__ import annotations

import argparse
import json
import sys

from gipp_jax import bitstream
from gipp_jax import quantize as q_lib
from gipp_jax.codec import attributes, encode_model
from gipp_jax.io import load_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    model = load_model(args.model)
    blob = encode_model(model, q_lib.init_gaussian_quantizers(*attributes(model)))
    n = bitstream.decode(blob).codes.shape[0]
    fixed = 72 * n + 512
    pixels = model.height * model.width
    print(json.dumps({
        "command": " ".join(["python"] + sys.argv), "gaussians": n,
        "file_bits": len(blob) * 8, "fixed_length_bits": fixed,
        "saving_percent": round(100 * (1 - len(blob) * 8 / fixed), 2),
        "file_bpp": round(len(blob) * 8 / pixels, 4), "fixed_length_bpp": round(fixed / pixels, 4),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
