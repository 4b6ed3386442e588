#!/usr/bin/env python3
"""Where a file's bits go, and entropy coding against fixed-length coding of the same codes.

For a ``.gipp`` file: its bits per Gaussian in each channel (position, the covariance's
a, c and off-diagonal b, red, and the residuals of green and blue; ``bitstream.cost_breakdown``)
and the header. For a fitted model (model.npz from `gipp fit`): the same for its Gaussians
quantized with min/max-initialised LSQ+ quantizers at 12/10/6 bits, and the file's size against
the reference's fixed-length layout, 72 bits per Gaussian plus 512 bits of quantizer
parameters.

With ``--contexts``, what coding a channel in context would save: its symbols split by a
context the decoder already has, each class coded by its own adaptive model (the file's
``entropy.AdaptiveCategorical`` with the channel's prior), in bits per Gaussian against the
file's own coding. Contexts (:data:`CONTEXTS`): the local density (distance to the 4th
nearest other position, all positions being decoded first), the Gaussian's size (its
covariance diagonal codes, ``a + c``), its ``a`` code (for ``c``) and the shape (``|a - c|``,
for the off-diagonal), each in 4 or 8 classes of equal counts (the class edges would cost a
few header bytes). Prints JSON, one object per file.

    python tools/bench_entropy.py demo-output/model.npz
    python tools/bench_entropy.py docs/rd/kodak-full-defaults/points/kodim01-bpp0.5-gipp-fast.gipp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gipp_jax import bitstream
from gipp_jax import quantize as q_lib
from gipp_jax.codec import attributes, encode_model
from gipp_jax.io import load_model


def _classes(values: np.ndarray, k: int) -> np.ndarray:
    """(N,) class of each value among ``k`` classes of equal counts."""
    edges = np.quantile(values, np.linspace(0, 1, k + 1)[1:-1])
    return np.searchsorted(edges, values)


def _density(codes: np.ndarray) -> np.ndarray:
    """log2 of the distance from each position to the 4th nearest other one, in position codes."""
    from scipy.spatial import cKDTree

    points = codes[:, :2].astype(np.float64)
    distance, _ = cKDTree(points).query(points, 5)
    return np.log2(distance[:, 4] + 1.0)


# Which contexts each channel is tried with: name -> (N,) values whose classes split it.
CONTEXTS = {
    "a": ("density",),
    "c": ("density", "a"),
    "b": ("density", "size", "shape"),
    "red": ("density", "size"),
    "green": ("size",),
    "blue": ("size",),
}


def context_costs(data: bitstream.Encoded) -> dict:
    """Per attribute channel, bits per Gaussian: the file's coding and, for each context of
    :data:`CONTEXTS` in 4 and 8 classes, the same model per class."""
    streams = bitstream.coded_streams(data)
    codes = streams.codes
    n = codes.shape[0]
    values = {"density": _density(codes), "size": codes[:, 2] + codes[:, 3] + 1e-3 * codes[:, 2],
              "a": codes[:, 2].astype(np.float64), "shape": np.abs(codes[:, 2] - codes[:, 3]) + 1e-3 * codes[:, 2]}
    out = {}
    for channel in streams.channels:
        if channel.name not in CONTEXTS:
            continue
        model, symbols = channel.model, channel.symbols
        row = {"file": round(model.bits(symbols) / n, 3)}
        for context in CONTEXTS[channel.name]:
            for k in (4, 8):
                split = _classes(values[context], k)
                row[f"{context}/{k}"] = round(sum(model.bits(symbols[split == c]) for c in range(k)) / n, 3)
        out[channel.name] = row
    return out


def report(path: str, contexts: bool = False) -> dict:
    if Path(path).suffix.lower() == ".gipp":
        blob, fixed = Path(path).read_bytes(), None
    else:
        model = load_model(path)
        blob = encode_model(model, q_lib.init_gaussian_quantizers(*attributes(model)))
    data = bitstream.decode(blob)
    n, pixels = data.codes.shape[0], data.height * data.width
    costs = bitstream.cost_breakdown(data)
    out = {"file": path, "gaussians": n, "bits": list(data.bits), "file_bits": len(blob) * 8,
           "file_bpp": round(len(blob) * 8 / pixels, 4),
           "bits_per_gaussian": {k: round(v / max(n, 1), 3) for k, v in costs.items()},
           "share_percent": {k: round(100 * v / (len(blob) * 8), 1) for k, v in costs.items()}}
    if contexts and n:
        out["bits_per_gaussian_in_context"] = context_costs(data)
    if Path(path).suffix.lower() != ".gipp":
        fixed = 72 * n + 512
        out.update(fixed_length_bits=fixed, fixed_length_bpp=round(fixed / pixels, 4),
                   saving_percent=round(100 * (1 - len(blob) * 8 / fixed), 2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="FILE", help=".gipp files or model.npz files")
    parser.add_argument("--contexts", action="store_true",
                        help="also what coding each channel in context would cost")
    args = parser.parse_args()
    command = " ".join(["python"] + sys.argv)
    for path in args.files:
        try:
            out = report(path, args.contexts)
        except (OSError, ValueError) as err:  # FormatError and a bad model.npz are ValueErrors
            parser.error(f"cannot read {path}: {err}")
        print(json.dumps({"command": command, **out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
