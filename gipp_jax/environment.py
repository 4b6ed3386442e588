"""What every reported figure is given with: the device, the versions, the date and the
XLA flags it was measured under."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess

import jax


def environment() -> dict:
    """Device, versions, date and XLA flags: what every benchmark figure and every fit or
    compression report is given with."""
    import jaxlib

    device = jax.devices()[0]
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
           "num_devices": len(jax.local_devices()), "jax_version": jax.__version__,
           "jaxlib_version": jaxlib.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if jax.default_backend() == "gpu" and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if jax.default_backend() == "tpu":
        from importlib.metadata import PackageNotFoundError, version
        try:
            env["libtpu"] = version("libtpu")
        except PackageNotFoundError:
            pass
    try:
        from jax._src.lib import cuda_versions  # private; absent on CPU-only installs
        if cuda_versions is not None:
            env["cuda_runtime"] = cuda_versions.cuda_runtime_get_version()
            env["cuda_driver"] = cuda_versions.cuda_driver_get_version()
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    return env
