#!/usr/bin/env python3
"""Where a file's bits go, and entropy coding against fixed-length coding of the same codes.

For a ``.gipp`` file: its bits per Gaussian in each channel (position, the covariance's
a, c and off-diagonal b, red, and the residuals of green and blue; ``bitstream.cost_breakdown``)
and the header. For a fitted model (model.npz from `gipp fit`): the same for its Gaussians
quantized with min/max-initialised LSQ+ quantizers at 12/10/6 bits, and the file's size against
the reference's fixed-length layout, 72 bits per Gaussian plus 512 bits of quantizer
parameters. With ``--contexts``, what a context model could save at most: each attribute
channel's empirical entropy against that of its residual after a least-squares prediction
from the local density (the mean Morton gap length of the 8 Gaussians before it) and the
mean of the 4 before it in the file's order (both known to a decoder). Prints JSON, one
object per file.

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


def _entropy(symbols: np.ndarray) -> float:
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _causal_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of the ``k`` values before each one (the first: the overall mean)."""
    sums = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(x.shape[0])
    lo = np.maximum(i - k, 0)
    return np.where(i > lo, (sums[i] - sums[lo]) / np.maximum(i - lo, 1), x.mean())


def context_entropies(data: bitstream.Encoded) -> dict:
    """Per attribute channel: (empirical entropy, entropy of the residual of its prediction
    from the local density and the previous values), bits per Gaussian."""
    streams = bitstream.coded_streams(data)
    density = _causal_mean(streams.lengths.astype(np.float64), 8)
    out = {}
    for j, name in enumerate(bitstream.CHANNELS[1:]):
        x = streams.symbols[:, j].astype(np.float64)
        design = np.stack([np.ones_like(x), density, _causal_mean(x, 4)], 1)
        coef = np.linalg.lstsq(design, x, rcond=None)[0]
        residual = np.rint(x - design @ coef).astype(np.int64)
        out[name] = [round(_entropy(streams.symbols[:, j]), 3), round(_entropy(residual), 3)]
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
        out["entropy_and_with_context"] = context_entropies(data)
    if Path(path).suffix.lower() != ".gipp":
        fixed = 72 * n + 512
        out.update(fixed_length_bits=fixed, fixed_length_bpp=round(fixed / pixels, 4),
                   saving_percent=round(100 * (1 - len(blob) * 8 / fixed), 2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="FILE", help=".gipp files or model.npz files")
    parser.add_argument("--contexts", action="store_true",
                        help="also what a context model of neighbours could save at most")
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
