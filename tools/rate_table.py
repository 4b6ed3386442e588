#!/usr/bin/env python3
"""Derives the rate model of :mod:`gipp_jax.rate` from measured RD runs.

Reads the ``.gipp`` files and points of one or more ``tools/rd_curve.py`` output folders
(each with its ``rd.json``: method and bit depths) and, per (method, bit depths), fits

* the payload's bits per Gaussian (file size less header and checksum) as ``a - b log2 N``,
* PSNR as ``p0 + p1 log2(N / pixels)`` over every point,

by least squares, then writes the table (default: the one the package ships) and prints
each fit with its worst error.

    python tools/rd_curve.py ../shared/data/kodak -o rd --quick --bits 10 7 5
    python tools/rate_table.py rd [more RD folders] -o gipp_jax/data/rate_table.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gipp_jax import bitstream
from gipp_jax.io import atomic_write_text
from gipp_jax.methods import get_method

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "gipp_jax" / "data" / "rate_table.json"


def measured_points(folder: Path, method: str | None = None) -> list[dict]:
    """The points of an RD folder (finished ones too, before the run has gathered them),
    each with its method (the point's, else the folder's ``rd.json``, else ``method``), bit
    depths, and its file's size, Gaussian count, pixels and payload bits. Files that code the
    off-diagonal as the reference does (not as a correlation) are left out."""
    summary = json.loads((folder / "rd.json").read_text()) if (folder / "rd.json").is_file() else {}
    points = []
    for path in sorted((folder / "points").glob("*.json")):
        point = json.loads(path.read_text())
        blob = path.with_suffix(".gipp").read_bytes()
        data = bitstream.decode(blob)
        if not data.correlation:  # the reference's coding of the off-diagonal: not what rate control writes
            continue
        n = data.codes.shape[0]
        point_method = point.get("method") or summary.get("method") or method
        if point_method is None:
            raise SystemExit(f"{path}: no method recorded; say which with --method")
        # Counted as the budget counts them (a carrier as part of a Gaussian), so that the
        # entry predicts the file of a budget.
        count = get_method(point_method).budget_units(n, data.num_carriers)
        header = bitstream.header_bytes(data.height, data.width, n, data.color_classes, data.carriers is not None)
        points.append({**point, "method": point_method, "bits": list(data.bits), "bytes": len(blob), "count": count,
                       "pixels": data.height * data.width, "side": max(data.height, data.width),
                       "payload_bits": 8 * (len(blob) - header)})
    return points


def fit_entry(method: str, bits, colors: str, points: list[dict]) -> dict:
    n = np.array([p["count"] for p in points], float)
    per_gaussian = np.array([p["payload_bits"] for p in points], float) / n
    a, minus_b = np.polynomial.polynomial.polyfit(np.log2(n), per_gaussian, 1)
    density = n / np.array([p["pixels"] for p in points], float)
    psnr = np.array([p["psnr"] for p in points], float)
    p0, p1 = np.polynomial.polynomial.polyfit(np.log2(density), psnr, 1)
    headers = [p["bytes"] - p["payload_bits"] / 8 for p in points]
    predicted = np.array(headers) + n * (a + minus_b * np.log2(n)) / 8
    size_error = predicted / np.array([p["bytes"] for p in points]) - 1
    psnr_error = p0 + p1 * np.log2(density) - psnr
    return {"method": method, "bits": list(bits), "colors": colors, "header_bytes": round(float(np.mean(headers)), 2),
            "bits_per_gaussian": [round(float(a), 4), round(float(-minus_b), 4)],
            "psnr": [round(float(p0), 4), round(float(p1), 4)],
            "images": len({p["image"] for p in points}),
            "image_side": int(np.median([p["side"] for p in points])),
            "gaussians_per_pixel": [round(float(density.min()), 6), round(float(density.max()), 6)],
            "fit_error": {"size_max_relative": round(float(np.abs(size_error).max()), 4),
                          "psnr_rms_db": round(float(np.sqrt(np.mean(psnr_error ** 2))), 3)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="tools/rd_curve.py output folders")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--method", help="the method of points that do not record one")
    args = parser.parse_args()
    groups: dict[tuple, list[dict]] = {}
    for folder in args.folders:
        for point in measured_points(folder, args.method):
            # points that do not record their colors predate the setting: sigmoid colors
            key = (point["method"], tuple(point["bits"]), point.get("colors", "sigmoid"))
            groups.setdefault(key, []).append(point)
    entries = [fit_entry(*key, points) for key, points in sorted(groups.items())]
    table = {"command": " ".join(["python"] + sys.argv), "entries": entries}
    atomic_write_text(args.output, json.dumps(table, indent=2) + "\n")
    for e in entries:
        print(f"{e['method']} {'/'.join(map(str, e['bits']))}: {e['images']} images, payload bits per "
              f"Gaussian {e['bits_per_gaussian'][0]:.2f} - {e['bits_per_gaussian'][1]:.3f} log2 N "
              f"(worst size error {100 * e['fit_error']['size_max_relative']:.1f}%), PSNR "
              f"{e['psnr'][0]:.2f} + {e['psnr'][1]:.3f} log2(N / pixels) (rms {e['fit_error']['psnr_rms_db']:.2f} dB)")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
