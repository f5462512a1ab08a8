"""Building and loading the C++/CUDA extension (csrc/): ahead of time by setup.py, or JIT.

The extension is a plain shared library (no Python module): its TORCH_LIBRARY
registrations are what we use, loaded with torch.ops.load_library. Which sources go
in, and the compiler flags, are decided here for both setup.py and the JIT path, so
the two build the same thing.

JIT builds use torch.utils.cpp_extension.load (ninja) in a directory named after a
hash of every source file, the flags and the torch version: a second process, or a
second test session, finds the library built and loads it in well under a second.

Environment:
  GPTK_BUILD_DIR    where JIT builds go (default ~/.cache/gptk/build)
  GPTK_BUILD_CUDA   1: build the CUDA kernels even without a visible GPU (compile
                    and link check); 0: CPU part only. Default: when a GPU and nvcc exist.
  TORCH_CUDA_ARCH_LIST  default "8.0;9.0a" (A100, H100), plus a visible GPU's own arch.
  MAX_JOBS          ninja's parallelism (torch's convention).
  GPTK_SANITIZE     "address": build the C++ (host) code with AddressSanitizer, a separate
                    cached build; run Python with LD_PRELOAD=$(g++ -print-file-name=libasan.so)
                    and ASAN_OPTIONS=detect_leaks=0 (see tests/test_cuda_backend.py).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The sources: csrc/ in a checkout (and editable installs); an installed wheel carries a copy
# as kernels/_csrc (setup.py's build_py puts it there).
CSRC = os.path.join(ROOT, "csrc")
if not os.path.isdir(CSRC):
    CSRC = os.path.join(ROOT, "kernels", "_csrc")
DEFAULT_ARCH_LIST = "8.0;9.0a"
PREBUILT_NAME = "_C"  # kernels/_C*.so, written by setup.py
PREBUILT_META = os.path.join(ROOT, "kernels", "_C_build.json")


class BuildError(RuntimeError):
    """The extension failed to build; str() has the first compiler error and the log path."""


def sources(with_cuda: bool) -> list[str]:
    files = [os.path.join(CSRC, "ops.cpp"), os.path.join(CSRC, "eager.cpp")]
    files += sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    if with_cuda:
        files += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
        files += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    return files


def _all_inputs(with_cuda: bool) -> list[str]:
    """Every file a build of this variant reads (sources and headers)."""
    pattern = ("*.cpp", "*.cu", "*.h", "*.cuh")
    files = sorted(f for p in pattern for f in glob.glob(os.path.join(CSRC, "**", p), recursive=True))
    cuda_dir = os.path.join(CSRC, "cuda") + os.sep
    return files if with_cuda else [f for f in files if not f.startswith(cuda_dir)]


def cuda_home() -> str | None:
    """The CUDA toolkit root, preferring the environment, then /usr/local/cuda, then torch's guess."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path and os.path.exists(os.path.join(path, "bin", "nvcc")):
            return path
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def nvidia_pip_dirs() -> tuple[list[str], list[str]]:
    """Include and library dirs of the pip `nvidia` wheels torch depends on (cuBLAS(Lt)
    headers and libraries live there, not in a compiler-only CUDA toolkit)."""
    includes, libs = [], []
    for base in sys.path:
        for sub in ("cu13", "cu12", "cublas"):
            inc = os.path.join(base, "nvidia", sub, "include")
            if os.path.exists(os.path.join(inc, "cublasLt.h")) and inc not in includes:
                includes.append(inc)
                libs.append(os.path.join(base, "nvidia", sub, "lib"))
    return includes, libs


def cuda_unbuildable_reason() -> str | None:
    """None when the CUDA part can be compiled here, else why not."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if cuda_home() is None:
        return "nvcc was not found (install the CUDA toolkit or set CUDA_HOME)"
    if not nvidia_pip_dirs()[0]:
        return "the cuBLASLt headers (pip package nvidia-cublas) were not found"
    return None


def want_cuda() -> tuple[bool, str | None]:
    """(build the CUDA part?, why not when not)."""
    forced = os.environ.get("GPTK_BUILD_CUDA")
    reason = cuda_unbuildable_reason()
    if forced is not None and forced not in ("", "0"):
        return reason is None, reason
    if forced == "0":
        return False, "GPTK_BUILD_CUDA=0"
    if reason is not None:
        return False, reason
    if not torch.cuda.is_available():
        return False, "no GPU is visible, so only the CPU part was built (GPTK_BUILD_CUDA=1 builds it anyway)"
    return True, None


def arch_list() -> str:
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    archs = DEFAULT_ARCH_LIST.split(";")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            if major not in (8, 9) and f"{major}.{minor}" not in archs:
                archs.append(f"{major}.{minor}")
    return ";".join(archs)


def _prepare_cuda_env() -> None:
    """torch's cpp_extension reads CUDA_HOME (module global) and TORCH_CUDA_ARCH_LIST (env):
    point both at what we found; unset, they fail here (no GPU to query)."""
    import torch.utils.cpp_extension as cpp_extension
    home = cuda_home()
    os.environ.setdefault("CUDA_HOME", home)
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list()


def flags(with_cuda: bool) -> dict:
    """Compiler and linker flags, shared by setup.py and the JIT build."""
    cflags = ["-O3", "-fopenmp", "-DGPTK_WITH_CUDA=%d" % int(with_cuda)]
    ldflags = ["-fopenmp"]
    sanitize = os.environ.get("GPTK_SANITIZE", "")
    if sanitize:
        if sanitize != "address":
            raise BuildError(f"GPTK_SANITIZE={sanitize!r}: only 'address' is supported")
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
        ldflags += ["-fsanitize=address"]
    out = {"extra_cflags": cflags, "extra_ldflags": ldflags, "extra_include_paths": [CSRC],
           "extra_cuda_cflags": []}
    if with_cuda:
        includes, libs = nvidia_pip_dirs()
        out["extra_include_paths"] += includes
        out["extra_cuda_cflags"] = ["-O3", "-std=c++17", "-lineinfo", "-DGPTK_WITH_CUDA=1"]
        # The wheels ship libcublasLt.so.13 without the unversioned link name.
        for lib in libs:
            lt = sorted(glob.glob(os.path.join(lib, "libcublasLt.so*")))
            if lt:
                out["extra_ldflags"] += [f"-L{lib}", f"-l:{os.path.basename(lt[0])}", f"-Wl,-rpath,{lib}"]
                break
    return out


def source_hash(with_cuda: bool) -> str:
    h = hashlib.sha256()
    for path in _all_inputs(with_cuda):
        h.update(os.path.relpath(path, CSRC).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    # Where the sources live is not part of what is built: a wheel's copy and the checkout it
    # came from share one cached library.
    build_flags = json.dumps(flags(with_cuda)).replace(json.dumps(CSRC)[1:-1], "<csrc>")
    h.update(json.dumps([torch.__version__, sys.version_info[:2], with_cuda,
                         arch_list() if with_cuda else "", build_flags]).encode())
    return h.hexdigest()[:16]


def build_root() -> str:
    return os.environ.get("GPTK_BUILD_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gptk", "build")


def first_error_line(log: str) -> str:
    for line in log.splitlines():
        if re.search(r"\berror\b", line, re.IGNORECASE) and "Error building extension" not in line:
            return line.strip()
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def cached_library(with_cuda: bool) -> str:
    """Where jit_build keeps the finished library for these sources (it may not exist yet)."""
    return os.path.join(build_root(), f"gptk_{'cuda' if with_cuda else 'cpu'}_{source_hash(with_cuda)}.so")


def ready_library() -> str | None:
    """The library load() would take without compiling, if there is one."""
    with_cuda, _ = want_cuda()
    path = prebuilt_library(with_cuda)
    if path is None and os.path.isdir(CSRC):
        # No _prepare_cuda_env() here: asking must not change the caller's environment, and the
        # hash does not depend on it (it sets TORCH_CUDA_ARCH_LIST to what arch_list() reads).
        path = cached_library(with_cuda)
    return path if path is not None and os.path.isfile(path) else None


def jit_build(with_cuda: bool, verbose: bool = False) -> str:
    """Build (or find already built) the library for these sources; returns its path, loaded.

    A finished library is kept as <build root>/gptk_<variant>_<source hash>.so and loaded
    from there without running ninja. Building happens in one work directory per
    checkout and variant, so ninja recompiles only the sources (or headers) that changed.
    """
    from torch.utils import cpp_extension
    if not os.path.isdir(CSRC):
        raise BuildError(f"the C++/CUDA sources ({CSRC}) are not part of this installation; "
                         f"reinstall gptk (a wheel carries them as kernels/_csrc)")
    if with_cuda:
        _prepare_cuda_env()
    variant = "cuda" if with_cuda else "cpu"
    final = cached_library(with_cuda)
    if os.path.isfile(final):
        torch.ops.load_library(final)
        return final
    checkout = hashlib.sha256(ROOT.encode()).hexdigest()[:8]
    work = os.path.join(build_root(), f"work_{variant}_{checkout}")
    os.makedirs(work, exist_ok=True)
    log_path = os.path.join(work, "build.log")
    try:
        built = cpp_extension.load(name=f"gptk_{variant}", sources=sources(with_cuda), build_directory=work,
                                   with_cuda=with_cuda, is_python_module=False, verbose=verbose,
                                   **flags(with_cuda))
    except Exception as e:  # a compiler error, ninja missing, a link error...
        log = str(e)
        with open(log_path, "w") as f:
            f.write(log)
        raise BuildError(f"{first_error_line(log)} (full log: {log_path}; "
                         f"rebuild with `python -m kernels.cuda --verbose`)") from e
    tmp = f"{final}.{os.getpid()}.tmp"
    shutil.copy2(built, tmp)
    os.replace(tmp, final)  # atomic: a concurrent reader sees no half-written library
    return built


def prebuilt_library(with_cuda: bool) -> str | None:
    """The library setup.py built ahead of time, if it matches the current sources."""
    try:
        with open(PREBUILT_META) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("with_cuda") != with_cuda:
        return None
    # From a checkout the library must match the sources; an installed copy has none to check.
    if os.path.isdir(CSRC) and meta.get("hash") != source_hash(with_cuda):
        return None
    path = os.path.join(ROOT, "kernels", meta.get("file", ""))
    return path if os.path.isfile(path) else None


def load() -> tuple[str, bool, str | None]:
    """Load the library into this process: (path, with_cuda, why the CUDA part is absent)."""
    with_cuda, why_not = want_cuda()
    path = prebuilt_library(with_cuda)
    if path is not None:
        torch.ops.load_library(path)
        return path, with_cuda, why_not
    return jit_build(with_cuda), with_cuda, why_not
