"""Files: images in and out, models, atomic writes.

Every writer goes through a temporary file in the destination folder and ``os.replace``,
so a crash or a bad input never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

MODEL_FORMAT = "gipp-model"
MODEL_VERSION = 1
# Models whose primitives carry cosine carriers (an array ``carriers``): a reader of version 1
# alone would draw them as plain Gaussians, so they are marked apart.
CARRIER_MODEL_VERSION = 2


class InputError(ValueError):
    """A user-facing problem with an input or output path; the message is one line."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"output folder does not exist: {directory}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=directory)
    except OSError as err:
        raise InputError(f"cannot write to {directory}: {err.strerror}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary name only
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads any image Pillow opens as an (H, W, 3) float32 array in [0, 1].

    Grayscale is replicated to RGB; palette images are expanded; 16-bit and 32-bit
    integer images are scaled from their full range; an alpha channel is composited
    over black (the Gaussians model premultiplied color, and black is their background).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a folder: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb_float(img)
    except UnidentifiedImageError:
        raise InputError(f"not an image Pillow can read: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None


def _to_rgb_float(img) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
    elif mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / 65535.0 if arr.max(initial=0) <= 65535 else arr / 4294967295.0
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
    elif mode in ("1", "L", "RGB", "RGBA", "LA"):
        arr = np.asarray(img.convert(mode if mode != "1" else "L"), dtype=np.float64) / 255.0
    else:  # CMYK, YCbCr, LAB, HSV, ...
        has_alpha = "A" in img.getbands()
        img = img.convert("RGBA" if has_alpha else "RGB")
        arr = np.asarray(img, dtype=np.float64) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] in (2, 4):  # composite the alpha channel over black
        arr = arr[..., :-1] * arr[..., -1:]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError("image has no pixels")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def to_uint8(image) -> np.ndarray:
    """(H, W, 3) floats in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, image) -> None:
    """Writes an (H, W, 3) float image in [0, 1] as an 8-bit PNG, atomically."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def save_model(path: str | os.PathLike, model) -> None:
    """Writes a :class:`~gipp_jax.model.GaussianModel` as ``.npz`` (float32 arrays and a
    JSON header), atomically. Only active rows are stored."""
    active = np.asarray(model.active, bool)
    header = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION if model.carriers is None else CARRIER_MODEL_VERSION,
        "parameterization": model.parameterization,
        "color_activation": model.color_activation,
        "position_activation": model.position_activation,
        "height": model.height,
        "width": model.width,
    }
    arrays = {
        "header": np.array(json.dumps(header)),
        "means": np.asarray(model.means, np.float32)[active],
        "cov_params": np.asarray(model.cov_params, np.float32)[active],
        "colors": np.asarray(model.colors, np.float32)[active],
        "filter_var": np.asarray(model.filter_var, np.float32)[active],
    }
    if model.carriers is not None:
        arrays["carriers"] = np.asarray(model.carriers, np.float32)[active]
    atomic_write_npz(path, arrays)


def load_model(path: str | os.PathLike):
    """Reads a model written by :func:`save_model`; raises :class:`InputError` if the file
    is missing or is not such a model."""
    import jax.numpy as jnp

    from gipp_jax.model import GaussianModel
    from gipp_jax.parameterization import check_parameterization

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such model file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            arrays = {k: np.asarray(data[k], np.float32)
                      for k in ("means", "cov_params", "colors", "filter_var")}
            if header.get("version") == CARRIER_MODEL_VERSION and "carriers" in data.files:
                arrays["carriers"] = np.asarray(data["carriers"], np.float32)
    except Exception:  # zip, json and key errors all mean "not our file"
        raise InputError(f"not a gipp model file: {path}") from None
    if header.get("format") != MODEL_FORMAT:
        raise InputError(f"not a gipp model file: {path}")
    if header.get("version") not in (MODEL_VERSION, CARRIER_MODEL_VERSION):
        raise InputError(f"unsupported model version {header.get('version')} in {path}")
    n = arrays["means"].shape[0]
    shapes = {"means": (n, 2), "cov_params": (n, 3), "colors": (n, 3), "filter_var": (n,)}
    if header["version"] == CARRIER_MODEL_VERSION:
        shapes["carriers"] = (n, 3)
    try:
        check_parameterization(header["parameterization"])
        height, width = int(header["height"]), int(header["width"])
        ok = (all(k in arrays and arrays[k].shape == s and np.all(np.isfinite(arrays[k]))
                  for k, s in shapes.items()) and height > 0 and width > 0)
    except (KeyError, TypeError, ValueError):
        ok = False
    position_activation = header.get("position_activation", "identity")
    if (not ok or header.get("color_activation") not in ("identity", "sigmoid")
            or position_activation not in ("identity", "tanh")):
        raise InputError(f"corrupt gipp model file: {path}")
    return GaussianModel(
        means=jnp.asarray(arrays["means"]), cov_params=jnp.asarray(arrays["cov_params"]),
        colors=jnp.asarray(arrays["colors"]), filter_var=jnp.asarray(arrays["filter_var"]),
        active=jnp.ones(n, bool), carriers=jnp.asarray(arrays["carriers"]) if "carriers" in arrays else None,
        parameterization=header["parameterization"],
        color_activation=header["color_activation"], height=height, width=width,
        position_activation=position_activation)
