"""Which rasterizer renders: the GPU kernels only after they pass a check on the device."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from gipp_jax import raster
from gipp_jax.raster import KernelFallbackWarning, pallas_gpu, resolve_backend, xla
from gipp_jax.train import FitConfig, Fitter


@pytest.fixture
def on_cuda(monkeypatch):
    """As on a CUDA machine whose kernels were never checked in this process."""
    monkeypatch.setattr(raster, "_on_cuda", lambda: True)
    monkeypatch.setattr(raster, "_kernel_problem", raster._UNCHECKED)


def raising_kernel(*args, **kwargs):
    raise RuntimeError("Mosaic GPU lowering failed: unsupported layout\nmore detail")


def wrong_kernel(means, precisions, colors, bins, height, width, interpret=False, carriers=None):
    return 1.01 * xla.rasterize(means, precisions, colors, bins, height, width, carriers)


def test_auto_is_xla_off_cuda_and_a_forced_choice_is_kept():
    assert resolve_backend("auto") == "xla"
    assert resolve_backend("pallas") == "pallas" and resolve_backend("xla") == "xla"
    with pytest.raises(ValueError, match="unknown render backend"):
        resolve_backend("triton")


@pytest.mark.parametrize("kernel,why", [(raising_kernel, "RuntimeError: Mosaic GPU lowering failed"),
                                        (wrong_kernel, "image differs from XLA's")])
def test_a_failing_kernel_falls_back_to_xla_with_one_warning(on_cuda, monkeypatch, sample_crop, kernel, why):
    monkeypatch.setattr(pallas_gpu, "rasterize", kernel)
    with pytest.warns(KernelFallbackWarning) as caught:
        assert resolve_backend("auto") == "xla"
    caught = [w for w in caught if issubclass(w.category, KernelFallbackWarning)]
    assert len(caught) == 1 and why in str(caught[0].message) and "\n" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)  # checked once per process: no second warning
        fitter = Fitter(sample_crop[:24, :24], FitConfig(num_gaussians=20, iterations=10))
        state = fitter.run()
    assert fitter.loop.capacity.backend == "xla" and np.isfinite(float(state.best_psnr))


def test_a_forced_kernel_reports_its_error(on_cuda, monkeypatch, sample_crop):
    monkeypatch.setattr(pallas_gpu, "rasterize", raising_kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        with pytest.raises(RuntimeError, match="Mosaic GPU lowering failed"):
            Fitter(sample_crop[:24, :24], FitConfig(num_gaussians=20, iterations=10, backend="pallas")).run()


class FakeGpu:
    def __init__(self, capability, kind="NVIDIA A100-SXM4-80GB"):
        self.compute_capability, self.device_kind = capability, kind


def test_kernels_are_not_tried_on_a_gpu_without_warpgroups(on_cuda, monkeypatch, sample_crop):
    # Mosaic GPU's compiler aborts the process on an A100: auto must not even compile there.
    assert raster.kernel_support(FakeGpu("8.0")).startswith("the Mosaic GPU kernels need compute capability 9")
    assert raster.kernel_support(FakeGpu("9.0", "NVIDIA H100")) is None
    assert raster.kernel_support(FakeGpu("10.0", "NVIDIA B200")) is None
    assert raster.kernel_support(FakeGpu(None)) is None  # a device that does not say: the check decides
    monkeypatch.setattr(raster.jax, "devices", lambda *a: [FakeGpu("8.0")])
    monkeypatch.setattr(raster, "check_kernels", raising_kernel)
    with pytest.warns(KernelFallbackWarning, match="compute capability 9 or newer.*A100.*8.0"):
        assert resolve_backend("auto") == "xla"
    with pytest.raises(raster.KernelUnsupportedError, match="backend pallas: the Mosaic GPU kernels need"):
        resolve_backend("pallas")


def test_kernels_that_agree_with_xla_are_used(on_cuda, monkeypatch):
    # The real kernels, run by the Mosaic GPU interpreter on this CPU (a CUDA host compiles them).
    compiled = pallas_gpu.rasterize
    monkeypatch.setattr(pallas_gpu, "rasterize", lambda *a: compiled(*a[:6], None, *a[7:]))
    assert raster.check_kernels() is None
    assert resolve_backend("auto") == "pallas"


def test_cli_takes_a_backend_and_says_so_in_one_line(on_cuda, monkeypatch, tmp_path, capsys):
    from PIL import Image
    from gipp_jax.cli import main
    monkeypatch.setattr(pallas_gpu, "rasterize", raising_kernel)
    src = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(src)
    assert main(["fit", str(src), "-o", str(tmp_path / "out"), "--gaussians", "10", "--iters", "5",
                 "--no-progress", "--backend", "auto"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line] == [
        line for line in err.splitlines() if "Mosaic GPU kernels failed their check" in line]
    assert err.count("failed their check") == 1
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(src), "-o", str(tmp_path / "out2"), "--backend", "cuda"])
    assert exit_.value.code == 2
