#!/usr/bin/env python3
"""Where the time of one `gipp compress --bpp` goes: the representation fit, each phase of
quantization-aware training, the codes' refinement, the pruning to size, the decode.
Prints one line per phase as it ends, then a Markdown table with the device, jax version
and command.

    python tools/compress_phases.py ../shared/data/kodak/kodim01.png --bpp 0.5 --iters 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import jax

from gipp_jax import compress as compress_lib
from gipp_jax import refine
from gipp_jax.compile_cache import enable_compilation_cache, use_fast_cpu_flags
from gipp_jax.io import load_image

# (module or class, attribute, label): the calls timed.
TIMED = ((compress_lib.Fitter, "run", "representation fit"),
         (compress_lib, "run_qat", "QAT phase (warm-up, QAT, step-down)"),
         (compress_lib, "refine_codes", "refinement of the codes"),
         (refine, "removal_costs", "removal costs (pruning)"),
         (compress_lib, "encode_to_size", "pruning to size, in all"),
         (compress_lib, "decode_image", "decode"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--bpp", type=float, default=0.5)
    parser.add_argument("--method", default=None, help="fit method (default: gipp compress's)")
    parser.add_argument("--iters", type=int, default=None,
                        help="steps per phase (default: gipp compress's)")
    args = parser.parse_args()
    use_fast_cpu_flags(enable_compilation_cache())

    times: dict[str, list[float]] = {}
    start = time.perf_counter()
    for owner, name, label in TIMED:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*a, _original=original, _label=label, **k):
            t = time.perf_counter()
            out = _original(*a, **k)
            times.setdefault(_label, []).append(time.perf_counter() - t)
            print(f"{time.perf_counter() - start:8.1f} s  {_label}: {times[_label][-1]:.1f} s",
                  file=sys.stderr, flush=True)
            return out

        setattr(owner, name, timed)

    image = load_image(args.image)
    config = compress_lib.compression_fit_config(args.method)
    if args.iters:
        config = dataclasses.replace(config, iterations=args.iters)
    iters = config.iterations
    result, plan = compress_lib.compress_to_rate(image, config, bpp=args.bpp)
    total = time.perf_counter() - start
    device = jax.devices()[0]
    print(f"{args.image}: {config.method_name}, {result.bpp:.4f} bpp, {result.psnr:.2f} dB, "
          f"{result.num_gaussians} Gaussians ({result.num_carriers} with a carrier; planned {plan.num_gaussians}), "
          f"{iters} steps; "
          f"{getattr(device, 'device_kind', device)}, jax {jax.__version__}")
    print()
    print("| phase | calls | seconds | share |")
    print("|---|---|---|---|")
    for _, _, label in TIMED:
        spent = times.get(label, [])
        print(f"| {label} | {len(spent)} | {' + '.join(f'{s:.1f}' for s in spent) or '-'} | "
              f"{100 * sum(spent) / total:.0f}% |")
    print(f"| **encode in all** | | {total:.1f} | |")
    print()
    print("`python " + " ".join(sys.argv) + "`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
