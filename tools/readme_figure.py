#!/usr/bin/env python3
"""The README's picture: an image beside its render at half size, a crop of each at 2x below.

    gipp fit -o demo-output
    python tools/readme_figure.py gipp_jax/data/kodim23.png demo-output/render.png \
        -o docs/img/demo.png --crop 400 110 192 128

The crop is given as ``X Y W H`` in the image's pixels and drawn 2x with nearest-neighbour
upsampling (the pixels as they are); the overview is halved (box filter). The picture is
written atomically as a PNG.
"""

from __future__ import annotations

import argparse
import io as bytes_io
import sys

import numpy as np
from PIL import Image, ImageDraw

from gipp_jax.io import InputError, atomic_write_bytes, load_image

GAP = 8  # pixels between panels


def _panel(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8))


def figure(original: np.ndarray, render: np.ndarray, crop: tuple[int, int, int, int]) -> Image.Image:
    """Original and render side by side at half size, the crop ``(x, y, w, h)`` of each at
    2x below, the crop's rectangle outlined on the overview."""
    x, y, w, h = crop
    height, width = original.shape[:2]
    if not (0 <= x < x + w <= width and 0 <= y < y + h <= height):
        raise InputError(f"crop {x} {y} {w} {h} is not inside the {width}x{height} image")
    full = [_panel(original), _panel(render)]
    half = (max(1, width // 2), max(1, height // 2))
    top = [p.resize(half, Image.BOX) for p in full]
    bottom = [p.crop((x, y, x + w, y + h)).resize((2 * w, 2 * h), Image.NEAREST) for p in full]
    out = Image.new("RGB", (max(2 * half[0], 4 * w) + GAP, half[1] + GAP + 2 * h), "white")
    for i, (upper, lower) in enumerate(zip(top, bottom)):
        ImageDraw.Draw(upper).rectangle((x // 2, y // 2, (x + w) // 2 - 1, (y + h) // 2 - 1), outline=(255, 255, 0))
        out.paste(upper, (i * (half[0] + GAP), 0))
        out.paste(lower, (i * (2 * w + GAP), half[1] + GAP))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original")
    parser.add_argument("render")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--crop", type=int, nargs=4, metavar=("X", "Y", "W", "H"), default=(400, 110, 192, 128))
    args = parser.parse_args()
    try:
        original, render = load_image(args.original), load_image(args.render)
        if original.shape != render.shape:
            raise InputError(f"the images differ in size: {original.shape[:2]} and {render.shape[:2]}")
        buffer = bytes_io.BytesIO()
        figure(original, render, tuple(args.crop)).save(buffer, format="PNG", optimize=True)
    except InputError as err:
        print(f"readme_figure: error: {err}", file=sys.stderr)
        return 2
    atomic_write_bytes(args.output, buffer.getvalue())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
