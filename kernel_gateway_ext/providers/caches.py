"""Caches that every sandbox of one sandbox Python would otherwise build for itself: matplotlib's
font list (a scan of the system's fonts, about a second) and IPython's default profile.

They are prepared once per sandbox Python, when the gateway first needs them, by that Python
itself (so the versions match), and bound into each sandbox read-only, below its private /tmp:
the directories around them stay the sandbox's own and writable (matplotlib and IPython refuse
a read-only home and would warn, then build a throwaway one), the prepared files are not.
Nothing in them is written by a sandbox, so nothing writable is shared between sandboxes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import subprocess

log = logging.getLogger("kernelcube.local")

PREPARE_TIMEOUT = 180.0
# Inside the sandbox (the environment's MPLCONFIGDIR and IPYTHONDIR point here).
MATPLOTLIB_DIR = "/tmp/.matplotlib"
IPYTHON_DIR = "/tmp/.ipython"

# Run by the sandbox Python, isolated (-I), with the cache directory as its argument.
_PREPARE = """\
import os, sys
base = sys.argv[1]
os.environ["MPLCONFIGDIR"] = os.path.join(base, "matplotlib")
os.environ["IPYTHONDIR"] = os.path.join(base, "ipython")
os.makedirs(os.environ["MPLCONFIGDIR"])
os.makedirs(os.environ["IPYTHONDIR"])
try:
    import matplotlib.font_manager  # writes fontlist-v*.json into MPLCONFIGDIR
except ImportError:
    pass
try:
    from IPython.core.profiledir import ProfileDir
except ImportError:
    pass
else:
    ProfileDir.create_profile_dir_by_name(os.environ["IPYTHONDIR"], "default")
"""


class SharedCaches:
    """The prepared caches of each sandbox Python, under `root` (the gateway's state)."""

    def __init__(self, root: str):
        self.root = root
        self._binds: dict[str, list[tuple[str, str]]] = {}
        self._lock = asyncio.Lock()

    async def binds(self, python: str) -> list[tuple[str, str]]:
        """(host path, sandbox path) pairs to bind read-only; empty when they could not be made
        (the sandboxes then build their own, as without this)."""
        if python in self._binds:
            return self._binds[python]
        async with self._lock:
            if python not in self._binds:
                try:
                    self._binds[python] = await asyncio.to_thread(self._prepare, python)
                except (OSError, subprocess.SubprocessError) as exc:
                    log.warning("could not prepare the shared caches for %s (each sandbox builds its own): %s",
                                python, exc)
                    self._binds[python] = []
        return self._binds[python]

    def _prepare(self, python: str) -> list[tuple[str, str]]:
        """Rebuilt at each gateway start: the sandbox Python's packages may have changed."""
        directory = os.path.join(self.root, hashlib.sha256(python.encode()).hexdigest()[:12])
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        os.chmod(self.root, 0o755)  # traversable, like the sandbox Python itself
        result = subprocess.run([python, "-I", "-c", _PREPARE, directory], capture_output=True,
                                timeout=PREPARE_TIMEOUT, cwd=self.root, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        if result.returncode != 0:
            shutil.rmtree(directory, ignore_errors=True)
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise OSError(f"exit {result.returncode}: {' '.join(tail)}")
        _readable(directory)
        binds = []
        fonts = os.path.join(directory, "matplotlib")
        for name in sorted(os.listdir(fonts)):
            if name.startswith("fontlist-") and name.endswith(".json"):
                binds.append((os.path.join(fonts, name), f"{MATPLOTLIB_DIR}/{name}"))
        profile = os.path.join(directory, "ipython", "profile_default")
        if os.path.isdir(profile):
            binds.append((profile, f"{IPYTHON_DIR}/profile_default"))
        log.info("shared caches for %s prepared: %s", python, ", ".join(dest for _, dest in binds) or "none")
        return binds


def _readable(directory: str) -> None:
    """Readable by every sandbox id, writable by none: directories 0755, files 0644 (IPython's
    own 0700 directories keep their mode, which it checks, and stay empty)."""
    for parent, _dirs, files in os.walk(directory):
        if os.stat(parent).st_mode & 0o777 != 0o700:
            os.chmod(parent, 0o755)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o644)
