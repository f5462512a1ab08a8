"""A stand-in Triton driver: the whole Python launch path runs on the CPU, the GPU launch does not.

`install()` makes Triton compile every kernel for sm_90 (the cubin an H100/H200 would run) and
replaces the launcher with one that does nothing, so `kernel[grid](...)` on CPU tensors goes
through the binder, specialisation, cache and compile exactly as on a GPU, then returns.
`benchmarks.overhead --host` times the host path with it; `loaded_cubins` keeps each cubin
that would be launched, for reading its SASS.
"""
from __future__ import annotations

import os

loaded_cubins: dict = {}  # kernel name -> cubin bytes, as handed to the (stand-in) loader
launches: list | None = None  # a list: each launch appends (grid, launcher, kernel arguments)


class _NoOpLauncher:
    def __init__(self, src, metadata):
        pass

    def __call__(self, gx, gy, gz, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook,
                 *args):
        if launches is not None:
            launches.append(((gx, gy, gz), self, args))  # one launcher per compiled kernel
        return None


class _Utils:
    @staticmethod
    def load_binary(name, cubin, shared, device):
        loaded_cubins[name] = cubin
        return 1, 1, 32, 0, 1024  # module, function, registers, spills, max threads per block

    @staticmethod
    def unload_module(module):
        pass

    @staticmethod
    def get_device_properties(device):
        # An H100 SXM: enough for Triton's launch-time resource checks.
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536,
                "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}


class StubDriver:
    """Just what JITFunction.run and CompiledKernel need (see shared docs toolchain.md)."""

    def __init__(self, capability=(9, 0)):
        from triton.backends.compiler import GPUTarget
        self._target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
        self._capability = capability
        self.utils = _Utils()
        self.launcher_cls = _NoOpLauncher

    def is_active(self):
        return True

    def get_current_target(self):
        return self._target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return self._capability

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")

    def get_device_interface(self):
        import torch
        return torch.cuda

    def map_python_to_cpp_type(self, ty):
        return ty


def install(capability=(9, 0)) -> StubDriver:
    """Make the stand-in the active Triton driver (the interpreter must be off)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the stand-in driver compiles real kernels: unset TRITON_INTERPRET")
    from triton.runtime import driver
    from kernels import _backend
    stub = StubDriver(capability)
    driver.set_active(stub)
    _backend.STUB_DRIVER = True  # the triton backend now accepts CPU tensors (and launches nothing)
    return stub
