"""gptk: fused GPT kernels in Triton and C++/CUDA, and a GPT-2 module that runs on them.

Install (editable):   pip install -e ".[test]"

The C++/CUDA extension (csrc/) is built here ahead of time when torch is importable at
build time (`pip install --no-build-isolation -e .`): with ninja, MAX_JOBS respected,
TORCH_CUDA_ARCH_LIST defaulting to "8.0;9.0a", and its CUDA part whenever nvcc and
the cuBLASLt headers are found (no GPU needed; GPTK_BUILD_CUDA=0 skips it). A failed
or skipped build never fails the install: kernels.cuda then JIT-builds the extension
on first use (see kernels/cuda/_build.py).
"""
import importlib.util
import json
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_helpers():
    # By path: importing the `kernels` package here would run its __init__.
    spec = importlib.util.spec_from_file_location("_gptk_build", os.path.join(HERE, "kernels", "cuda", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extension():
    """(ext_modules, cmdclass) for the ahead-of-time build, or ([], {}) without torch."""
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # build isolation: no torch here, kernels.cuda builds at first use
        return [], {}
    b = _load_build_helpers()
    with_cuda = os.environ.get("GPTK_BUILD_CUDA", "1") not in ("", "0") and b.cuda_unbuildable_reason() is None
    if with_cuda:
        b._prepare_cuda_env()  # CUDA_HOME and TORCH_CUDA_ARCH_LIST (default "8.0;9.0a")
    f = b.flags(with_cuda)
    kind = CUDAExtension if with_cuda else CppExtension
    ext = kind(name="kernels._C", sources=[os.path.relpath(s, HERE) for s in b.sources(with_cuda)],
               include_dirs=f["extra_include_paths"],
               extra_compile_args={"cxx": f["extra_cflags"], "nvcc": f["extra_cuda_cflags"]},
               extra_link_args=f["extra_ldflags"])

    class BuildOrDefer(BuildExtension):
        """Build the extension; on failure warn and leave it to the JIT path."""

        def build_extension(self, extension):
            target = self.get_ext_fullpath(extension.name)
            meta = os.path.join(os.path.dirname(target), "_C_build.json")
            if os.path.exists(meta):
                os.remove(meta)
            try:
                super().build_extension(extension)
            except Exception as e:  # noqa: BLE001 - any failure defers to the JIT build
                print(f"warning: the C++/CUDA extension did not build ahead of time ({e}); "
                      f"kernels.cuda will build it on first use")
                return
            with open(meta, "w") as fh:
                json.dump({"hash": b.source_hash(with_cuda), "with_cuda": with_cuda,
                           "file": os.path.basename(target)}, fh)

        def run(self):
            # In-place and editable builds copy the library into the source tree after
            # building it; its metadata goes with it (the loader reads it there).
            inplace = self.inplace or getattr(self, "editable_mode", False)
            if inplace and os.path.exists(b.PREBUILT_META):
                os.remove(b.PREBUILT_META)
            super().run()
            built = os.path.join(self.build_lib, "kernels", "_C_build.json")
            if inplace and os.path.exists(built):
                shutil.copyfile(built, b.PREBUILT_META)

    return [ext], {"build_ext": BuildOrDefer.with_options(use_ninja=True)}


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package as kernels/_csrc: an installed wheel can then JIT-build the
    cuda backend (kernels/cuda/_build.py looks there when there is no checkout)."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "kernels", "_csrc")
        if os.path.isdir(os.path.join(HERE, "csrc")):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(os.path.join(HERE, "csrc"), target,
                            ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__"))


ext_modules, cmdclass = _extension()
cmdclass["build_py"] = BuildPyWithSources

setup(
    name="gptk",
    version="0.1.0",
    description="Fused GPT kernels (Triton and C++/CUDA) with a GPT-2 module on top",
    packages=find_packages(include=["kernels", "kernels.*", "gpt", "gpt.*", "benchmarks", "benchmarks.*"]),
    package_data={"": ["*.cpp", "*.cu", "*.h", "*.cuh"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<3",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy>=1.24",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "pytest-benchmark>=4", "hypothesis>=6", "matplotlib", "rich", "tqdm", "transformers>=5.0,<6",
                 "safetensors", "tokenizers", "ninja", "pybind11"],
        # GPT-2 interop (gpt.from_hf / save_hf / patch_hf_gpt2, --tokenizer): tested on 5.0, 5.17, 5.24
        "hf": ["transformers>=5.0,<6", "safetensors"],
        "bench": ["rich", "tqdm", "matplotlib", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["gptk-bench=benchmarks.__main__:main"]},
)
