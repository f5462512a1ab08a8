"""Build (or find cached) the C++/CUDA extension and say what was loaded.

    python -m kernels.cuda              # what kernels would build and load here
    python -m kernels.cuda --cuda       # also compile and link the CUDA kernels (no GPU needed)
    python -m kernels.cuda --verbose    # show the compiler commands and output
"""
import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.cuda", description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="build the CUDA part even without a GPU")
    parser.add_argument("--cpu-only", action="store_true", help="build the CPU part only")
    parser.add_argument("--verbose", action="store_true", help="print the build commands and compiler output")
    args = parser.parse_args(argv)
    if args.cuda:
        os.environ["GPTK_BUILD_CUDA"] = "1"
    if args.cpu_only:
        os.environ["GPTK_BUILD_CUDA"] = "0"
    from . import _build
    with_cuda, why_not = _build.want_cuda()
    if args.cuda and not with_cuda:
        print(f"error: cannot build the CUDA part here: {why_not}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        path = _build.prebuilt_library(with_cuda) or _build.jit_build(with_cuda, verbose=args.verbose)
    except _build.BuildError as e:
        print(f"error: the C++/CUDA extension failed to build: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"library": path, "with_cuda": with_cuda, "why_no_cuda": why_not,
                      "arch_list": _build.arch_list() if with_cuda else None,
                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
