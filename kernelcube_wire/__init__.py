"""Wire formats shared by the gateway (`kernel_gateway_ext`) and the controller (`controller`).

Neither server package may import the other (DESIGN.md), so what both must agree on byte for
byte lives here. This package imports neither of them, nor any Kubernetes or Redis client.
"""
