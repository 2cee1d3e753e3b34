"""PicoD: the daemon inside every KernelCube sandbox.

It runs commands, moves files inside a workspace jail, and bridges a live Jupyter kernel,
all behind RS256 JWT authentication. The wire contract is AgentCube PicoD's, so the
unmodified agentcube-sdk works through a router.
"""

__version__ = "0.1.0"
