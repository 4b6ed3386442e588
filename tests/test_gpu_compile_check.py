"""tools/gpu_compile_check.py without the CUDA plugin: reading ptxas's report, and the
table that says which notes are the known reduction-scratch ones."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import gpu_compile_check as check  # noqa: E402

# What ptxas printed for a backward and a forward kernel (MOSAIC_GPU_DUMP_PTXAS=1, sm_90a), cut.
PTXAS = """\
ptxas /tmp/tempfile-a, line 184; info    : Potential out of bound access while accessing symbol '__dynamic_shmem__0' of type '.b8' with instruction type '.b32'.
ptxas /tmp/tempfile-a, line 212; info    : Potential out of bound access while accessing symbol '__dynamic_shmem__0' of type '.b8' with instruction type '.b32'.
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'anonymous_mosaic_gpu_kernel' for 'sm_90a'
ptxas info    : Function properties for anonymous_mosaic_gpu_kernel
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 47 registers, used 2 barriers, 1 bytes smem
ptxas info    : Compile time = 9.431 ms
ptxas warning : Value of threads per SM is out of range
ptxas info    : Compiling entry function 'anonymous_mosaic_gpu_kernel' for 'sm_90a'
ptxas info    : Function properties for anonymous_mosaic_gpu_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 38 registers, used 2 barriers
"""


def test_each_kernel_gets_its_figures_and_the_notes_printed_before_it():
    backward, forward = check.ptxas_kernels(PTXAS)
    assert (backward["registers"], backward["spill_stores"], backward["spill_loads"], backward["smem_bytes"]) == (
        47, 8, 4, 1)
    assert backward["notes"][0].startswith("line 184: info    : Potential out of bound access")
    assert len(backward["notes"]) == 2
    assert (forward["registers"], forward["spill_stores"], forward["smem_bytes"]) == (38, 0, 0)
    assert forward["notes"] == ["ptxas warning : Value of threads per SM is out of range"]


def test_the_report_keeps_known_notes_apart_and_names_any_other():
    kernels = check.ptxas_kernels(PTXAS)
    assert check.kernel_summary(kernels) == ("47 reg, 8/4 spill, 2 notes (2 known); "
                                             "38 reg, 0/0 spill, 1 notes (0 known)")
    row = {"target": "h100", "program": "fit chunk", "backend": "pallas", "size": "768x512", "gaussians": 5000,
           "status": "compiled", "memory_bytes": {"temp": 2 ** 20, "argument": 0}, "kernels": kernels, "auto": True}
    failed = {"target": "a100", "program": "kernel check (auto's)", "backend": "pallas", "size": "-",
              "status": "skipped", "error": "the kernels need compute capability 9", "kernels": []}
    md = check.markdown({"date": "2026-12-06", "jax": "0.10.2", "jaxlib": "0.10.2", "host": "x86_64",
                         "command": "python tools/gpu_compile_check.py", "rows": [row, failed]})
    assert "| h100 | fit chunk | pallas (= auto) | 768x512 | 5000 | compiled | 1.0 |" in md
    assert "**skipped**: the kernels need compute capability 9" in md
    assert md.rstrip().endswith("ptxas warning : Value of threads per SM is out of range")
