"""gptk: fused GPT kernels in Triton and C++/CUDA, and a GPT-2 module that runs on them.

Install (editable):   pip install -e ".[test]"
The C++/CUDA extension is built on first use (JIT, ninja) by kernels.cuda; see README.
"""
from setuptools import find_packages, setup

setup(
    name="gptk",
    version="0.1.0",
    description="Fused GPT kernels (Triton and C++/CUDA) with a GPT-2 module on top",
    packages=find_packages(include=["kernels", "kernels.*", "gpt", "gpt.*", "benchmarks", "benchmarks.*"]),
    package_data={"": ["*.cpp", "*.cu", "*.h", "*.cuh"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<3",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy>=1.24",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "transformers>=5.0,<6",
                 "safetensors", "tokenizers", "ninja", "pybind11"],
        # GPT-2 interop (gpt.from_hf / save_hf / patch_hf_gpt2, --tokenizer): tested on 5.0, 5.17, 5.24
        "hf": ["transformers>=5.0,<6", "safetensors"],
        "bench": ["rich", "tqdm", "matplotlib", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["gptk-bench=benchmarks.__main__:main"]},
)
