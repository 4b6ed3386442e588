"""Named configurations: JSON files with a ``fit`` block of :class:`~gipp_jax.train.FitConfig`
fields (and other blocks for later stages).

A name is looked up as a file path first, then as ``NAME.json`` in the project's
``configs/`` folder (a source checkout or an editable install) and in
``<prefix>/share/gipp-jax/configs`` (a regular install).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from gipp_jax.io import InputError


def config_dirs() -> list[Path]:
    return [Path(__file__).resolve().parents[1] / "configs",
            Path(sys.prefix) / "share" / "gipp-jax" / "configs"]


def available_configs() -> list[str]:
    names = set()
    for d in config_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def load_config(name: str) -> dict:
    """Reads a config by path or name; raises :class:`InputError` with a one-line reason."""
    path = Path(name)
    if not path.is_file():
        candidates = [d / f"{name}.json" for d in config_dirs()]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise InputError(f"no config named {name!r}; available: {', '.join(available_configs()) or 'none'}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read config {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("fit", {}), dict):
        raise InputError(f"config {path} must be a JSON object with a 'fit' object")
    from gipp_jax.compress import CompressConfig
    from gipp_jax.train import FitConfig
    for block, cls in (("fit", FitConfig), ("compression", CompressConfig)):
        if not isinstance(data.get(block, {}), dict):
            raise InputError(f"config {path}: '{block}' must be a JSON object")
        unknown = set(data.get(block, {})) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"config {path}: unknown {block} settings {', '.join(sorted(unknown))}")
    return data
