#!/usr/bin/env python3
"""What quantizing a fitted model's carriers costs: for each (frequency bits, phase bits),
the PSNR the render loses with its carriers quantized by :func:`gipp_jax.carriers.quantize`
and the bits per carrier :func:`gipp_jax.carriers.carrier_bits` counts (the flag of every
primitive included). The rest of the model stays as fitted. Prints one JSON object.

    gipp fit ../shared/data/kodak/kodim08.png -o out --method gipp-gabor --iters 300
    python tools/carrier_depths.py out/model.npz ../shared/data/kodak/kodim08.png
"""

from __future__ import annotations

import argparse
import json
import sys

import jax.numpy as jnp
import numpy as np

from gipp_jax import carriers as carriers_lib
from gipp_jax import metrics, render
from gipp_jax.environment import environment
from gipp_jax.io import InputError, load_image, load_model
from gipp_jax.model import carrier_rows

DEPTHS = ((6, 5), (7, 6), (8, 6), (9, 6), (10, 5), (10, 6), (10, 7), (11, 6))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model.npz of gipp fit whose primitives carry carriers")
    parser.add_argument("image", help="the image it was fitted to")
    args = parser.parse_args()
    try:
        model, image = load_model(args.model), load_image(args.image)
    except InputError as err:
        parser.error(str(err))
    if model.carriers is None:
        parser.error(f"{args.model} has no carriers (fit it with --method gipp-gabor)")
    if image.shape[:2] != (model.height, model.width):
        parser.error(f"{args.image} is {image.shape[1]}x{image.shape[0]}, the model {model.width}x{model.height}")
    fitted = np.asarray(model.carriers)
    rows = carrier_rows(model)
    base = float(metrics.psnr(render(model), image))
    depths = []
    for frequency_bits, phase_bits in DEPTHS:
        _, values = carriers_lib.quantize(fitted[rows], frequency_bits, phase_bits)
        quantized = fitted.copy()
        quantized[rows] = values
        psnr = float(metrics.psnr(render(model.replace(carriers=jnp.asarray(quantized))), image))
        bits = carriers_lib.carrier_bits(fitted[rows], model.num_active(), frequency_bits, phase_bits)
        depths.append({"frequency_bits": frequency_bits, "phase_bits": phase_bits,
                       "psnr_loss_db": round(base - psnr, 4), "bits_per_carrier": round(bits / max(1, rows.size), 2)})
    print(json.dumps({"command": " ".join(["python"] + sys.argv), **environment(), "model": args.model,
                      "primitives": model.num_active(), "carriers": int(rows.size), "psnr": round(base, 3),
                      "depths": depths}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
