"""The reference codecs our files are compared with, each one small object: Pillow's JPEG,
WebP, AVIF (at its default speed 6 and at speed 2) and JPEG 2000 encoders, HEVC intra in
HEIC files (libheif with x265, through the ``pillow-heif`` plugin) and JPEG XL (libjxl,
through ``pillow-jxl-plugin``). The two plugins are in the ``bench`` extra (``pip install
-e '.[bench]'``); without them those codecs are left out.

A codec has a name, a sweep of settings for rate-distortion curves (lowest rate first) and
the range a same-size search explores; ``codec.point(image, setting)`` encodes an image
once and returns what every table reports: the file's size in bits per pixel, PSNR and
MS-SSIM of the decoded image, encode and decode times. ``codec.best_under(image, max_bytes)``
is the best setting whose file is no larger than a given size (the codec's rate grows with
its setting).

    from reference_codecs import CODECS
    CODECS["avif"].point(image, 60)  # {"bytes": ..., "bpp": ..., "psnr": ..., "ms_ssim": ...}
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io as pyio
import time
from typing import ClassVar

import numpy as np
from PIL import Image, features

from gipp_jax import metrics
from gipp_jax.io import to_uint8


@dataclasses.dataclass(frozen=True)
class ReferenceCodec:
    """A Pillow image format at integer settings whose rate grows with the setting.

    Subclasses set :attr:`name`, :attr:`key`, :attr:`pillow_format`, the sweep and search
    range, and :meth:`save_options` (Pillow's keyword arguments for one setting)."""

    name: ClassVar[str]            # as tables print it
    key: ClassVar[str]             # as JSON and command lines spell it
    pillow_format: ClassVar[str]
    pillow_feature: ClassVar[str | None] = None  # PIL.features name, where support is optional
    sweep: ClassVar[tuple[int, ...]]             # settings of an RD curve, lowest rate first
    lowest: ClassVar[int]                        # the range of best_under's search
    highest: ClassVar[int]
    setting_name: ClassVar[str] = "quality"

    def save_options(self, setting: int, height: int, width: int) -> dict:
        raise NotImplementedError

    plugin: ClassVar[str | None] = None          # a module that adds the format to Pillow

    def available(self) -> bool:
        """Whether this Pillow can write the format (with its plugin, where it needs one)."""
        if self.plugin is not None:
            return _load_plugin(self.plugin)
        return self.pillow_feature is None or bool(features.check(self.pillow_feature))

    def encode(self, image: np.ndarray, setting: int) -> bytes:
        """The file of an (H, W, 3) float image in [0, 1] at ``setting``."""
        if self.plugin is not None and not _load_plugin(self.plugin):
            raise RuntimeError(f"{self.name} needs the {self.plugin} package (pip install -e '.[bench]')")
        buf = pyio.BytesIO()
        h, w = image.shape[:2]
        Image.fromarray(to_uint8(image)).save(buf, format=self.pillow_format,
                                              **self.save_options(setting, h, w))
        return buf.getvalue()

    @staticmethod
    def decode(blob: bytes) -> np.ndarray:
        """A file back to an (H, W, 3) float image in [0, 1]."""
        with Image.open(pyio.BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB"), np.float32) / 255.0

    def point(self, image: np.ndarray, setting: int, *, ms_ssim: bool = True) -> dict:
        """Encodes ``image`` at ``setting`` and reports ``setting``, ``bytes``, ``bpp``,
        ``psnr`` (dB), ``ms_ssim`` (None when not asked for), ``encode_seconds`` and
        ``decode_seconds``."""
        start = time.perf_counter()
        blob = self.encode(image, setting)
        encode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        decoded = self.decode(blob)
        decode_seconds = time.perf_counter() - start
        h, w = image.shape[:2]
        return {self.setting_name: setting, "bytes": len(blob), "bpp": len(blob) * 8 / (h * w),
                "psnr": float(metrics.psnr(decoded, image)),
                "ms_ssim": float(metrics.ms_ssim(decoded, image)) if ms_ssim else None,
                "encode_seconds": encode_seconds, "decode_seconds": decode_seconds}

    def best_under(self, image: np.ndarray, max_bytes: int) -> dict | None:
        """The :meth:`point` of the highest setting in ``lowest..highest`` whose file is no
        larger than ``max_bytes`` (a binary search: the size grows with the setting), or
        None when even the lowest setting is larger."""
        lo, hi, best = self.lowest, self.highest, None
        while lo <= hi:
            setting = (lo + hi) // 2
            if len(self.encode(image, setting)) <= max_bytes:
                best, lo = setting, setting + 1
            else:
                hi = setting - 1
        return None if best is None else self.point(image, best)


@dataclasses.dataclass(frozen=True)
class QualityCodec(ReferenceCodec):
    """A format whose only setting is Pillow's ``quality``, 1-100."""

    sweep = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    lowest, highest = 1, 100

    def save_options(self, setting, height, width):
        return {"quality": setting}


@dataclasses.dataclass(frozen=True)
class Jpeg(QualityCodec):
    """Baseline JPEG (libjpeg through Pillow, its defaults: 4:2:0 chroma, standard Huffman tables)."""

    name = "JPEG"
    key = "jpeg"
    pillow_format = "JPEG"


@dataclasses.dataclass(frozen=True)
class WebP(QualityCodec):
    """Lossy WebP (libwebp through Pillow, its defaults: method 4)."""

    name = "WebP"
    key = "webp"
    pillow_format = "WEBP"
    pillow_feature = "webp"


@dataclasses.dataclass(frozen=True)
class Avif(ReferenceCodec):
    """AVIF (libavif through Pillow: 4:2:0 chroma, encoder speed ``speed``; 0 is the slowest
    and best, Pillow's default is 6)."""

    name = "AVIF"
    key = "avif"
    pillow_format = "AVIF"
    pillow_feature = "avif"
    sweep = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    lowest, highest = 0, 100
    speed: int = 6

    def save_options(self, setting, height, width):
        return {"quality": setting, "speed": self.speed}


@dataclasses.dataclass(frozen=True)
class Jpeg2000(ReferenceCodec):
    """JPEG 2000 (OpenJPEG through Pillow: the irreversible 9/7 wavelet and the YCbCr color
    transform, which Pillow leaves off unless asked; without it kodim01 at 0.5 bpp measured
    24.4 dB instead of 27.4). Its setting is the rate asked for, in thousandths of a bit per
    pixel, headers included (OpenJPEG lands close to it, above it only where the headers
    alone are larger)."""

    name = "JPEG 2000"
    key = "jpeg2000"
    pillow_format = "JPEG2000"
    pillow_feature = "jpg_2000"
    sweep = (50, 100, 150, 250, 400, 600, 800, 1000, 1500, 2000, 3000)
    lowest, highest = 10, 24000
    setting_name = "millibpp"

    def save_options(self, setting, height, width):
        # OpenJPEG's rate is a compression ratio against the raw 24-bit image.
        return {"irreversible": True, "mct": 1, "quality_mode": "rates",
                "quality_layers": [24000.0 / setting]}


@dataclasses.dataclass(frozen=True)
class AvifSlow(Avif):
    """AVIF at encoder speed 2: slower than Pillow's default and a few percent smaller."""

    name = "AVIF (speed 2)"
    key = "avif-s2"
    speed: int = 2


@dataclasses.dataclass(frozen=True)
class Heic(ReferenceCodec):
    """HEVC intra in a HEIC file: x265 through libheif (``pillow-heif``), 4:4:4 chroma,
    x265's preset ``slow``; the setting is libheif's quality, 0-100."""

    name = "HEVC (HEIC, x265 4:4:4)"
    key = "heic"
    pillow_format = "HEIF"
    plugin = "pillow_heif"
    sweep = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
    lowest, highest = 0, 100

    def save_options(self, setting, height, width):
        return {"quality": setting, "chroma": 444, "enc_params": {"preset": "slow"}}


@dataclasses.dataclass(frozen=True)
class JpegXl(ReferenceCodec):
    """JPEG XL (libjxl through ``pillow-jxl-plugin``) at effort ``effort`` (9: the slowest
    and smallest); the setting is its quality, 0-100 (90 is visually lossless)."""

    name = "JPEG XL"
    key = "jxl"
    pillow_format = "JXL"
    plugin = "pillow_jxl"
    sweep = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    lowest, highest = 0, 100
    effort: int = 9

    def save_options(self, setting, height, width):
        return {"quality": setting, "effort": self.effort}


def _load_plugin(module: str) -> bool:
    """Imports a Pillow plugin (``pillow_heif`` registers its opener too); False where it
    is not installed."""
    try:
        plugin = importlib.import_module(module)
    except ImportError:
        return False
    if hasattr(plugin, "register_heif_opener"):
        plugin.register_heif_opener()
    return True


CODECS: dict[str, ReferenceCodec] = {c.key: c for c in (Jpeg(), WebP(), Avif(), AvifSlow(), Jpeg2000(), Heic(),
                                                        JpegXl())}


def available_codecs(keys=None) -> list[ReferenceCodec]:
    """The codecs of ``keys`` (default: all) that this Pillow can write; a key it does not
    know raises ValueError."""
    keys = list(CODECS) if keys is None else list(keys)
    unknown = [k for k in keys if k not in CODECS]
    if unknown:
        raise ValueError(f"unknown codec {unknown[0]!r}; choose from {', '.join(CODECS)}")
    return [CODECS[k] for k in keys if CODECS[k].available()]


def add_codecs_argument(parser: argparse.ArgumentParser) -> None:
    """``--codecs KEY,KEY,...`` on a tool's command line; ``args.codecs`` is then the list
    of :func:`available_codecs` (an unknown key is a one-line usage error)."""

    def codec_list(text: str) -> list[ReferenceCodec]:
        try:
            return available_codecs(text.split(","))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser.add_argument("--codecs", type=codec_list, default=",".join(CODECS),
                        help="comma-separated reference codecs (default: %(default)s; those this "
                             "Pillow cannot write are left out)")
