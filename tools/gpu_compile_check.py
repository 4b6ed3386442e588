#!/usr/bin/env python3
"""Compiles every program a GPU or TPU user runs, for accelerators this machine does not have.

XLA compiles for a GPU described by a target config (``tools/gpu_targets/*.txtpb``), and
Mosaic GPU then runs ptxas on the kernels: no GPU is needed, only the CUDA plugin. With
``--platform tpu`` it compiles for TPU topologies named as libtpu names them (``v5e:2x2``:
four v5e chips), with ``libtpu`` installed (``pip install -e '.[tpu]'``) and no TPU: the same
programs, the Mosaic GPU kernels never tried (``auto`` is XLA on a TPU), the batched chunk
over two and four chips, and each program's memory against the chip's HBM. For each
target and rasterizer, each program (a fit's training chunk for ``gipp-fast``,
``gaussianimage++`` and ``gipp-gabor``, the quantization-aware chunk, the render and color
solve at a fit's buffers, the batched chunk under ``vmap`` and ``shard_map`` over two GPUs,
decoding) at each size is compiled, and the report gives: compiled or the error, XLA's
memory analysis and cost analysis, and for the Mosaic GPU kernels ptxas's registers,
spills, shared memory and notes.

The programs are the ones a CUDA host builds (``backend="pallas"`` there compiles the
kernels; ``auto`` is ``pallas`` once the kernels passed their check on the device, which
the ``kernel check`` row stands for: where it does not compile, ``auto`` renders with XLA).
A forced ``pallas`` lowered on this CPU host for a GPU is one more row.

    python -m venv .venv-cuda && .venv-cuda/bin/pip install -q -e '.[cuda12]'
    .venv-cuda/bin/python tools/gpu_compile_check.py -o docs/gpu/compile-only
    python -m venv .venv-tpu && .venv-tpu/bin/pip install -q -e '.[tpu]'
    .venv-tpu/bin/python tools/gpu_compile_check.py --platform tpu -o docs/tpu/compile-only

About 2 GB of memory and 10-20 minutes on a 2-core CPU for the four GPU targets; about
30 minutes for the three TPU targets (libtpu prints warnings about the TPU host it does not
find on the way: harmless here).
"""

from __future__ import annotations

import os

# Before jax is imported: the CUDA plugin loads without a GPU, and Mosaic GPU prints ptxas's report.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # libtpu: no TPU host's metadata to ask for

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from gipp_jax.io import atomic_write_text  # noqa: E402

TARGETS_DIR = Path(__file__).resolve().parent / "gpu_targets"
DEFAULT_TARGETS = {"cuda": ("h100", "h200", "b200", "a100"), "tpu": ("v5e:2x2", "v5p:2x2x1", "v6e:2x2")}
# Each chip's memory, by the device kind XLA reports (GiB; a GPU's as sold, a TPU's HBM).
HBM_GIB = {"H100": 80, "H200": 141, "B200": 180, "A100": 40, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}
SIZES = ((768, 512, 5000), (768, 512, 10000), (2040, 1356, 10000))  # width, height, Gaussians
BACKENDS = ("xla", "pallas")
CHUNK_STEPS = 50
# ptxas notes every kernel of this toolchain carries (docs/GPU.md, "ptxas and the reduction
# scratch"): the cross-warp sums read Mosaic GPU's dynamic shared memory through a symbol
# LLVM declares one byte long.
KNOWN_NOTE = re.compile(r"Potential out of bound access while accessing symbol '__dynamic_shmem__0'")


# -- compiling and what it reports ---------------------------------------------------------

@contextlib.contextmanager
def captured_fds(sink: list):
    """Everything written to file descriptors 1 and 2 inside (ptxas's report comes from
    C++), appended to ``sink`` as one string."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


def ptxas_kernels(text: str) -> list[dict]:
    """Each kernel ptxas compiled, in order: registers, spills, shared memory, and its notes
    (ptxas prints a kernel's notes, then its spills, then its registers)."""
    kernels, notes, spills = [], [], (None, None)
    for line in text.splitlines():
        if "Potential" in line or "warning" in line.lower():
            notes.append(re.sub(r"^ptxas \S+, line (\d+); ", r"line \1: ", line.strip()))
        elif (spill := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            spills = int(spill.group(1)), int(spill.group(2))
        elif (used := re.search(r"Used (\d+) registers", line)):
            smem = re.search(r"(\d+) bytes smem", line)
            kernels.append({"registers": int(used.group(1)), "spill_stores": spills[0], "spill_loads": spills[1],
                            "smem_bytes": int(smem.group(1)) if smem else 0, "notes": notes})
            notes, spills = [], (None, None)
    return kernels


def compile_report(fn, args, platform: str = "cuda") -> dict:
    """Lowers ``fn(*args)`` for ``platform`` and compiles it; what XLA and ptxas said."""
    out: list[str] = []
    start = time.perf_counter()
    try:
        with captured_fds(out):
            compiled = fn.trace(*args).lower(lowering_platforms=(platform,)).compile()
    except Exception as err:  # noqa: BLE001 - the error is the result
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] or [type(err).__name__]
        return {"status": "failed", "error": f"{type(err).__name__}: {lines[0]}"[:500],
                "seconds": round(time.perf_counter() - start, 1), "kernels": ptxas_kernels("".join(out)),
                "traceback": traceback.format_exc()[-4000:]}
    report = {"status": "compiled", "seconds": round(time.perf_counter() - start, 1),
              "kernels": ptxas_kernels("".join(out))}
    memory = compiled.memory_analysis()
    if memory is not None:
        report["memory_bytes"] = {k: int(getattr(memory, f"{k}_size_in_bytes"))
                                  for k in ("argument", "output", "temp", "alias", "generated_code")
                                  if hasattr(memory, f"{k}_size_in_bytes")}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    if cost:
        report["cost"] = {k: float(cost[k]) for k in ("flops", "bytes accessed", "transcendentals") if k in cost}
    return report


# -- the programs ----------------------------------------------------------------------------

def _one_device(devices) -> NamedSharding:
    return NamedSharding(jax.sharding.Mesh(np.array(devices[:1]), ("x",)), PartitionSpec())


def abstract(tree, sharding):
    """Arrays of ``tree`` as shape/dtype stand-ins placed by ``sharding``; other leaves kept."""
    def one(x):
        if isinstance(x, (jax.Array, np.ndarray)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return x
    return jax.tree_util.tree_map(one, tree)


def full_size_state(config, image):
    """A fit's first state carried to its full-size level: ``(state, optimizer)``."""
    from gipp_jax import train
    h, w = image.shape[:2]
    levels = train.fit_levels(config, h, w)
    optimizer = train.make_optimizer(config, h, w)
    state = train.init_state(train.initial_model(config, image), optimizer)
    for old, new in zip(levels, levels[1:]):
        state = train.enter_level(state, old, new, h, w)
    return state, optimizer


def programs(width: int, height: int, n: int, backend: str, devices, batch_sizes=(2,),
             unit: str = "GPUs") -> list[tuple[str, callable]]:
    """``[(name, build)]``; ``build()`` gives ``(jitted_fn, args)`` for one device of
    ``devices`` (for the batched chunk, each of ``batch_sizes`` devices: ``unit``)."""
    from gipp_jax import batch, codec, compress, raster, train
    from gipp_jax.bench import synthetic_image

    one = _one_device(devices)
    image = synthetic_image(height, width)

    def capacity_for(model):
        return dataclasses.replace(raster.budget_capacity(model, "xla"), backend=backend)

    def fit_chunk(method):
        def build():
            config = train.FitConfig(num_gaussians=n, iterations=50000, method=method, backend="xla").validate()
            state, _ = full_size_state(config, image)
            fn = train.chunk_program(config, height, width)
            return fn, (capacity_for(state.model), CHUNK_STEPS, abstract(state, one),
                        abstract(jnp.asarray(image), one), abstract(jnp.int32(CHUNK_STEPS), one))
        return build

    def qat_chunk():
        config = train.FitConfig(num_gaussians=n, iterations=6000, backend="xla").validate()
        state, _ = full_size_state(config, image)
        cconfig = compress.CompressConfig().for_image(height, width).for_colors(
            compress.CompressConfig().colors_for(config))
        qat, opt_m, opt_q, _ = compress.qat_start(codec.compact(state.model), config, cconfig,
                                                  cconfig.phase_steps(config))
        fn = compress.qat_chunk_program(opt_m, opt_q)
        return fn, (capacity_for(qat.model), CHUNK_STEPS, abstract(qat, one), abstract(jnp.asarray(image), one),
                    abstract(jnp.int32(CHUNK_STEPS), one))

    def render_and_solve():
        config = train.FitConfig(num_gaussians=n, iterations=50000, backend="xla").validate()
        state, _ = full_size_state(config, image)
        return raster._render_and_solve, (capacity_for(state.model), abstract(state.model, one),
                                          abstract(jnp.asarray(image), one), abstract(jnp.int32(16), one))

    def batch_chunk(count):
        config = train.FitConfig(num_gaussians=n, iterations=50000, backend="xla").validate()
        mesh_devices = tuple(devices[:count])
        fn, _ = batch._programs(dataclasses.replace(config, seed=0), mesh_devices, height, width)
        states = [full_size_state(dataclasses.replace(config, seed=s), image)[0] for s in range(len(mesh_devices))]
        state = batch.stack(states)
        mesh = batch.device_mesh(mesh_devices)
        sharded, replicated = NamedSharding(mesh, PartitionSpec(batch.BATCH_AXIS)), NamedSharding(mesh, PartitionSpec())
        targets = jnp.stack([jnp.asarray(image)] * len(mesh_devices))
        return fn, (capacity_for(states[0].model), CHUNK_STEPS, abstract(state, sharded), abstract(targets, sharded),
                    abstract(jnp.int32(CHUNK_STEPS), replicated))

    def batched(count):
        return lambda: batch_chunk(count)

    def decode():
        from gipp_jax.bench import fitted_like_scene
        means, cov3, colors = fitted_like_scene(height, width, n)
        means, cov3, colors = raster.padded_rows(means, cov3, colors)
        pairs, chunks = (int(v) for v in raster.measure_usage(means, cov3, height, width))
        return raster._render_jit, (abstract(jnp.asarray(means), one), abstract(jnp.asarray(cov3), one),
                                    abstract(jnp.asarray(colors), one), height, width,
                                    raster.round_capacity(pairs, headroom=1.0), chunks, backend,
                                    raster.DEFAULT_CHUNK_SIZE)

    return ([("fit chunk, gipp-fast", fit_chunk("gipp-fast")),
            ("fit chunk, gaussianimage++", fit_chunk("gaussianimage++")),
            ("fit chunk, gipp-gabor", fit_chunk("gipp-gabor")),
            ("QAT chunk", qat_chunk),
            ("render + color solve", render_and_solve)]
            + [(f"batched chunk, {count} {unit}", batched(count)) for count in batch_sizes]
            + [("decode", decode)])


def kernel_programs(devices, width: int = 768, height: int = 512, n: int = 5000) -> list[tuple[str, callable]]:
    """One program per Mosaic GPU kernel, compiled in this order so that each adds one
    kernel (Mosaic GPU compiles a kernel once per process): the forward kernel, the backward
    one (its program holds the forward kernel too), each plain and with carriers."""
    from gipp_jax import raster
    from gipp_jax.bench import fitted_like_scene
    from gipp_jax.raster import pallas_gpu
    one = _one_device(devices)
    means, cov3, colors = fitted_like_scene(height, width, n)
    carriers = jnp.asarray(np.random.default_rng(1).uniform(-0.2, 0.2, (n, 3)), jnp.float32)
    pairs, chunks = (int(v) for v in raster.measure_usage(means, cov3, height, width))

    def program(with_carriers: bool, gradient: bool):
        def build():
            def image(m, c, k, f):
                fp, bins = raster._binned(m, c, height, width, raster.round_capacity(pairs, headroom=1.0), chunks)
                return pallas_gpu.rasterize(m, fp.precisions, k, bins, height, width, False,
                                            f if with_carriers else None)
            fn = jax.grad(lambda *a: jnp.sum(image(*a) ** 2), (0, 1, 2, 3)) if gradient else image
            return jax.jit(fn), tuple(abstract(x, one) for x in (means, cov3, colors, carriers))
        return build

    return [("forward kernel", program(False, False)), ("backward kernel", program(False, True)),
            ("forward kernel, carriers", program(True, False)), ("backward kernel, carriers", program(True, True))]


def kernel_check(devices):
    """The program ``auto``'s check compiles on a device
    (:func:`gipp_jax.raster.kernel_check_case`) with the kernels."""
    from gipp_jax import raster
    image_and_grads, args = raster.kernel_check_case()
    one = _one_device(devices)
    return jax.jit(functools.partial(image_and_grads, "pallas")), tuple(abstract(x, one) for x in args)


# -- the run ---------------------------------------------------------------------------------

def target_devices(name: str, platform: str = "cuda", count: int = 2):
    """The devices of target ``name``: ``count`` GPUs of a target config, or a TPU topology's chips."""
    if platform == "tpu":
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    config = (TARGETS_DIR / f"{name}.txtpb").read_text()
    topology = topologies.get_topology_desc(platform="cuda", target_config=config, topology=f"1x{count}x1")
    return list(topology.devices)


def hbm_bytes(device_kind: str) -> int | None:
    """A chip's memory by its device kind (:data:`HBM_GIB`: the longest name it starts with), or None."""
    names = [k for k in HBM_GIB if device_kind.upper().startswith(k.upper()) or k.upper() in device_kind.upper()]
    return None if not names else HBM_GIB[max(names, key=len)] * 2 ** 30


def resident_bytes(report: dict) -> int | None:
    """What a compiled program holds at once on a device: arguments, outputs (less what they
    share with the arguments) and temporaries."""
    memory = report.get("memory_bytes")
    if not memory:
        return None
    return (memory.get("argument", 0) + memory.get("output", 0) - memory.get("alias", 0) + memory.get("temp", 0))


def _compiled_as_on_a_cuda_host(build) -> dict:
    """``build()`` host-side (as on this CPU host), then its program lowered and compiled as a
    CUDA host lowers it."""
    try:
        with _on_cuda_host(False):
            fn, args = build()
    except Exception as err:  # noqa: BLE001 - a program that cannot be built is a result too
        return {"status": "failed", "error": f"building: {type(err).__name__}: {err}"[:500],
                "traceback": traceback.format_exc()[-4000:]}
    with _on_cuda_host(True):
        return compile_report(fn, args)


def run_tpu_target(target: str, sizes, log) -> list[dict]:
    """Every row of one TPU topology: each program as a TPU host builds it (``auto`` is
    XLA there: the Mosaic GPU kernels are never tried), compiled for the topology, the
    batched chunk over two and four chips."""
    devices = target_devices(target, "tpu")
    kind = devices[0].device_kind
    log(f"{target}: {len(devices)} x {kind}")
    rows = []
    for width, height, n in sizes:
        for name, build in programs(width, height, n, "xla", devices, batch_sizes=(2, 4), unit="chips"):
            try:
                report = compile_report(*build(), platform="tpu")
            except Exception as err:  # noqa: BLE001 - a program that cannot be built is a result too
                report = {"status": "failed", "error": f"building: {type(err).__name__}: {err}"[:500]}
            rows.append(_row(target, kind, name, "xla", f"{width}x{height}", report, log, gaussians=n, auto=True))
    return rows


def _row(target, kind, program, backend, size, report, log, **extra) -> dict:
    """One row of the report, logged; ``hbm_bytes`` and ``fits_hbm`` where the chip's memory is known."""
    row = {"target": target, "device": kind, "program": program, "backend": backend, "size": size, **extra, **report}
    hbm, resident = hbm_bytes(kind), resident_bytes(report)
    if hbm is not None and resident is not None:
        row.update(hbm_bytes=hbm, fits_hbm=resident <= hbm)
    count = f" {extra['gaussians']}" if "gaussians" in extra else ""
    log(f"  {program}, {backend}, {size}{count}: "
        + (f"failed: {report['error'][:160]}" if report["status"] != "compiled" else
           f"temp {report.get('memory_bytes', {}).get('temp', 0) / 2**20:.1f} MiB ({report['seconds']} s)"
           + "".join(f"; {k['registers']} registers, {len(k['notes'])} ptxas notes" for k in report["kernels"])))
    return row


def run_target(target: str, sizes, log) -> list[dict]:
    """Every row of one GPU target (run in a process of its own: a process Mosaic GPU's
    compiler aborts takes no other target with it)."""
    from gipp_jax import raster
    devices = target_devices(target)
    kind = devices[0].device_kind
    log(f"{target}: {kind}")
    rows = []

    def add(program, backend, size, report, **extra):
        rows.append(_row(target, kind, program, backend, size, report, log, **extra))

    unsupported = raster.kernel_support(devices[0])
    if unsupported:  # as auto decides on such a device: the kernels are not tried (they abort the process)
        log(f"  {unsupported}: auto renders with XLA; the kernels are not compiled")
        rows.append({"target": target, "device": kind, "program": "kernel check (auto's)", "backend": "pallas",
                     "size": "-", "status": "skipped", "error": unsupported, "kernels": []})
    else:
        for name, build in kernel_programs(devices):
            add(name, "pallas", "768x512", _compiled_as_on_a_cuda_host(build))
        check = _compiled_as_on_a_cuda_host(lambda: kernel_check(devices))
        add("kernel check (auto's)", "pallas", "56x40", check)
        unsupported = None if check["status"] == "compiled" else check["error"]
        with _on_cuda_host(False):
            add("forced pallas lowered on this CPU host", "pallas", "56x40", compile_report(*kernel_check(devices)))
    auto = "xla" if unsupported else "pallas"
    for width, height, n in sizes:
        for backend in BACKENDS if auto == "pallas" else ("xla",):
            for name, build in programs(width, height, n, backend, devices):
                add(name, backend, f"{width}x{height}", _compiled_as_on_a_cuda_host(build), gaussians=n,
                    auto=auto == backend)
    return rows


@contextlib.contextmanager
def _on_cuda_host(value: bool):
    """Builds programs as a CUDA host does (``True``) or as this CPU host does."""
    from gipp_jax import raster
    saved = raster._on_cuda
    raster._on_cuda = lambda: value
    try:
        yield
    finally:
        raster._on_cuda = saved


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def kernel_summary(kernels: list[dict]) -> str:
    if not kernels:
        return "-"
    parts = []
    for k in kernels:
        notes = len(k["notes"])
        known = sum(bool(KNOWN_NOTE.search(n)) for n in k["notes"])
        parts.append(f"{k.get('registers', '?')} reg, {k.get('spill_stores') or 0}/{k.get('spill_loads') or 0} spill"
                     + (f", {notes} notes ({known} known)" if notes else ""))
    return "; ".join(parts)


def markdown(report: dict) -> str:
    platform = report.get("platform", "cuda")
    tpu = platform == "tpu"
    lines = [f"# Compile-only {'TPU' if tpu else 'GPU'} check ({report['date']})", "",
             f"jax {report['jax']}, jaxlib {report['jaxlib']}"
             + (f", libtpu {report['libtpu']}" if report.get("libtpu") else "")
             + f", host: {report['host']}; `{report['command']}`", "",
             "| target | program | rasterizer | size | Gaussians | result | temp MiB | arguments MiB | "
             "GFLOP | of the chip's memory | " + ("" if tpu else "kernels (registers, spill stores/loads, ptxas notes) |"),
             "|---|---|---|---|---|---|---|---|---|---|" + ("" if tpu else "---|")]
    for row in report["rows"]:
        memory = row.get("memory_bytes", {})
        flops = row.get("cost", {}).get("flops")
        result = "compiled" if row["status"] == "compiled" else f"**{row['status']}**: {row['error'][:160]}"
        backend = row["backend"] + (" (= auto)" if row.get("auto") else "")
        share = "-"
        if row.get("hbm_bytes"):
            share = f"{100 * resident_bytes(row) / row['hbm_bytes']:.1f}%" + ("" if row["fits_hbm"] else " **over**")
        lines.append(f"| {row['target']} | {row['program']} | {backend} | {row['size']} | {row.get('gaussians', '-')} | "
                     f"{result} | {_mib(memory.get('temp'))} | {_mib(memory.get('argument'))} | "
                     f"{'-' if flops is None else f'{flops / 1e9:.2f}'} | {share} |"
                     + ("" if tpu else f" {kernel_summary(row.get('kernels', []))} |"))
    if tpu:
        lines += ["", "Of the chip's memory: arguments, outputs not aliased to them and temporaries, against "
                  "one chip's HBM (" + ", ".join(f"{k} {v} GiB" for k, v in HBM_GIB.items() if k.startswith("TPU"))
                  + "); a batched chunk's per chip."]
        return "\n".join(lines) + "\n"
    notes = sorted({n for row in report["rows"] for k in row.get("kernels", []) for n in k["notes"]
                    if not KNOWN_NOTE.search(n)})
    lines += ["", "ptxas notes other than the known reduction-scratch note: "
              + (", ".join(notes) if notes else "none")]
    return "\n".join(lines) + "\n"


def _platform_missing(platform: str) -> str | None:
    """Why this Python cannot compile for ``platform``, in one line, or None."""
    module, extra = ("libtpu", "tpu") if platform == "tpu" else ("jax_cuda12_plugin", "cuda12")
    try:
        __import__(module)
    except ImportError:
        return f"the {module} package is not installed (pip install -e '.[{extra}]')"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for report.json and report.md")
    parser.add_argument("--platform", choices=("cuda", "tpu"), default="cuda")
    parser.add_argument("--targets", default=None,
                        help="comma-separated targets: names of gpu_targets/*.txtpb for cuda, libtpu topology "
                             "names for tpu (defaults: " + "; ".join(f"{p}: {','.join(t)}" for p, t in
                                                                      DEFAULT_TARGETS.items()) + ")")
    parser.add_argument("--quick", action="store_true", help="768x512 with 5000 Gaussians only")
    parser.add_argument("--one-target", help=argparse.SUPPRESS)  # a child process's share of the run
    args = parser.parse_args(argv)
    sizes = SIZES[:1] if args.quick else SIZES

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if args.one_target:
        run = run_tpu_target if args.platform == "tpu" else run_target
        rows = run(args.one_target, sizes, log)
        atomic_write_text(args.output / f"{_file_name(args.one_target)}.json", json.dumps(rows, indent=1) + "\n")
        return 0
    targets = [t for t in (args.targets or ",".join(DEFAULT_TARGETS[args.platform])).split(",") if t]
    missing = [t for t in targets if args.platform == "cuda" and not (TARGETS_DIR / f"{t}.txtpb").is_file()]
    if missing:
        print(f"gpu_compile_check: no target config {', '.join(missing)} in {TARGETS_DIR}", file=sys.stderr)
        return 2
    if (problem := _platform_missing(args.platform)):
        print(f"gpu_compile_check: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            child = ([sys.executable, __file__, "--platform", args.platform, "--one-target", target, "-o", tmp]
                     + (["--quick"] if args.quick else []))
            if subprocess.run(child).returncode != 0:
                print(f"gpu_compile_check: the run for {target} stopped (its log above)", file=sys.stderr)
                return 1
            rows += json.loads((Path(tmp) / f"{_file_name(target)}.json").read_text())
    import platform

    import jaxlib
    report = {"date": datetime.date.today().isoformat(), "platform": args.platform, "jax": jax.__version__,
              "jaxlib": jaxlib.__version__, "libtpu": _libtpu_version() if args.platform == "tpu" else None,
              "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "command": "python tools/gpu_compile_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "seconds": round(time.perf_counter() - start, 1), "rows": rows}
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.output / "report.md", markdown(report))
    print(markdown(report))
    failed = sum(row["status"] == "failed" for row in rows)
    log(f"{len(rows)} programs, {failed} failed, {report['seconds']:.0f} s")
    return 1 if failed else 0


def _file_name(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", target)


def _libtpu_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("libtpu")
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
