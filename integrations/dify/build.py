"""Package the KernelCube Dify plugin as a `.difypkg`, the file Dify installs ("Install plugin" →
"Local package file", or the plugin daemon's install API).

A `.difypkg` is a zip of the plugin directory, `manifest.yaml` at its root, without what
`.difyignore` lists. The KernelCube client (`kernelcube/`, which needs only httpx) is copied
in, so the plugin installs from its `requirements.txt` alone.

    python integrations/dify/build.py [-o build/dify/kernelcube-0.1.0.difypkg]
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLIENT = os.path.join(REPO, "kernelcube")
# The client proper; the LangChain tool and the MCP server need frameworks the plugin does not.
CLIENT_MODULES = ("__init__.py", "_core.py", "_summary.py", "aio.py", "client.py", "errors.py", "models.py",
                  "py.typed")
MAX_SIZE = 50 * 1024 * 1024  # Dify refuses larger packages


def ignored_patterns(root: str) -> list[str]:
    try:
        with open(os.path.join(root, ".difyignore")) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def is_ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            if pattern.rstrip("/") in parts[:-1]:
                return True
        elif fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(parts[-1], pattern):
            return True
    return False


def plugin_version(root: str) -> str:
    with open(os.path.join(root, "manifest.yaml")) as f:
        for line in f:
            if line.startswith("version:"):
                return line.split(":", 1)[1].strip()
    raise SystemExit("manifest.yaml has no version")


def build(output: str, root: str = HERE) -> str:
    """Write the package to `output`; returns its path."""
    patterns = ignored_patterns(root)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as package:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for name in sorted(files):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                if not is_ignored(relative, patterns) and os.path.abspath(path) != os.path.abspath(output):
                    package.write(path, relative)
        for name in CLIENT_MODULES:
            package.write(os.path.join(CLIENT, name), f"kernelcube/{name}")
    if os.path.getsize(output) > MAX_SIZE:
        raise SystemExit(f"{output} is larger than Dify accepts ({MAX_SIZE} bytes)")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", help="the package to write (default: build/dify/kernelcube-<version>.difypkg)")
    args = parser.parse_args()
    output = args.output or os.path.join(REPO, "build", "dify", f"kernelcube-{plugin_version(HERE)}.difypkg")
    print(build(output))


if __name__ == "__main__":
    main()
