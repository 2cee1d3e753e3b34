"""The KernelCube gateway: a jupyter-server extension mapping sessions to sandboxes from warm pools."""

from .app import KernelCubeApp


def _jupyter_server_extension_points():
    return [{"module": "kernel_gateway_ext", "app": KernelCubeApp}]
