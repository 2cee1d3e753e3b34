"""The kernel zygote: kernels forked, copy-on-write, from one process that imported ipykernel
and the template's preload once, instead of each kernel importing them for itself.

The gateway's local provider starts one zygote per sandbox Python and preload (see
`kernel_gateway_ext/providers/zygote.py`) and asks it, over a socket only the gateway holds, for
a kernel inside a given sandbox. This package runs with the sandbox Python, outside every
sandbox; the child it forks enters the sandbox (`enter.py`) and becomes the kernel
(`kernel.py`). It imports nothing of KernelCube's other packages.
"""
