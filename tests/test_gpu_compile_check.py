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


def test_a_tpu_report_gives_each_program_its_share_of_the_chips_memory():
    assert check.hbm_bytes("TPU v5 lite") == 16 * 2 ** 30  # not v5p's 95 GiB
    assert check.hbm_bytes("TPU v5") == 95 * 2 ** 30 and check.hbm_bytes("TPU v6 lite") == 32 * 2 ** 30
    assert check.hbm_bytes("NVIDIA H100 80GB HBM3") == 80 * 2 ** 30 and check.hbm_bytes("TPU v9") is None
    memory = {"argument": 2 * 2 ** 30, "output": 2 * 2 ** 30, "alias": 2 ** 30, "temp": 13 * 2 ** 30}
    assert check.resident_bytes({"memory_bytes": memory}) == 16 * 2 ** 30  # the aliased output counts once
    rows = [check._row("v5e:2x2", "TPU v5 lite", "fit chunk", "xla", "2040x1356",
                       {"status": "compiled", "seconds": 1.0, "kernels": [], "memory_bytes": memory},
                       lambda *a: None, gaussians=10000, auto=True),
            check._row("v5e:2x2", "TPU v5 lite", "render", "xla", "2040x1356",
                       {"status": "compiled", "seconds": 1.0, "kernels": [],
                        "memory_bytes": {**memory, "temp": 14 * 2 ** 30}}, lambda *a: None, gaussians=10000)]
    assert [r["fits_hbm"] for r in rows] == [True, False]
    md = check.markdown({"date": "2026-12-08", "platform": "tpu", "jax": "0.10.2", "jaxlib": "0.10.2",
                         "libtpu": "0.0.42.1", "host": "x86_64", "command": "python tools/gpu_compile_check.py "
                         "--platform tpu", "rows": rows})
    assert md.startswith("# Compile-only TPU check") and "libtpu 0.0.42.1" in md
    assert "| v5e:2x2 | fit chunk | xla (= auto) | 2040x1356 | 10000 | compiled | 13312.0 | 2048.0 | - | 100.0% |" in md
    assert "| 106.2% **over** |" in md and "ptxas" not in md
