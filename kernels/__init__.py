"""CUDA C++ sources of the gpucomp kernels, shipped inside the package as data.

`*.cuh` hold the per-element arithmetic, written once for host and device;
`*.cu` are thin `__global__` wrappers loaded with cupy.RawModule; `host.c` is the
host build's loop over the same per-element functions (gpu-sim backend).
"""
