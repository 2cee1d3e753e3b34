"""AgentCube's Go PicoD for the side-by-side bench: a binary you name, or one built from an
agentcube source tree the way its `docker/Dockerfile.picod` builds it, cached in `.cache/`.

`AGENTCUBE_PICOD_BINARY`: a built `picod` to use as is.
`AGENTCUBE_SRC`: a checkout of github.com/volcano-sh/agentcube (with `go.mod`, `cmd/picod`,
`pkg/picod`). It is built once per content of those files (`.cache/picod-go/<hash>/picod`);
the module proxy serves its dependencies, not agentcube itself, hence a local tree.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tests.e2e.build_control_plane import BuildError, find_go

BINARY_ENV = "AGENTCUBE_PICOD_BINARY"
SOURCE_ENV = "AGENTCUBE_SRC"
REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "picod-go"


class Unavailable(RuntimeError):
    """No Go PicoD here; the message says what to set."""


def go_picod() -> str:
    """The path of a Go PicoD binary, building it first when only the source is given."""
    binary = os.environ.get(BINARY_ENV)
    if binary:
        if not os.access(binary, os.X_OK):
            raise Unavailable(f"{BINARY_ENV}={binary} is not an executable file")
        return binary
    source = os.environ.get(SOURCE_ENV)
    if not source:
        raise Unavailable(f"set {SOURCE_ENV} to a checkout of github.com/volcano-sh/agentcube, or "
                          f"{BINARY_ENV} to a built cmd/picod, to measure against the Go PicoD")
    root = Path(source)
    if not (root / "go.mod").is_file() or not (root / "cmd" / "picod").is_dir():
        raise Unavailable(f"{SOURCE_ENV}={source} has no go.mod and cmd/picod; it must be the "
                          "root of an agentcube checkout")
    try:
        go = find_go()
    except BuildError:
        raise Unavailable(f"{SOURCE_ENV} is set, but building the Go PicoD needs Go 1.26 or newer "
                          "(`go` on PATH, or where the Go release tarball installs it)") from None
    target = CACHE / _source_hash(root, go) / "picod"
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name("picod.partial")
    print(f"   building the Go PicoD from {SOURCE_ENV} into {target.relative_to(REPO)} (once)", flush=True)
    # As docker/Dockerfile.picod: static, stripped.
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOWORK": "off"}
    proc = subprocess.run([go, "build", "-ldflags=-s -w", "-o", str(partial), "./cmd/picod"], cwd=root,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"go build ./cmd/picod failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    partial.replace(target)
    return str(target)


def _source_hash(root: Path, go: str) -> str:
    """What the binary depends on: the module files, the two packages and the Go version."""
    digest = hashlib.sha256()
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout
    digest.update(version.encode())
    files = [root / "go.mod", root / "go.sum", *sorted((root / "cmd" / "picod").glob("*.go")),
             *sorted((root / "pkg" / "picod").glob("*.go"))]
    for path in files:
        if path.is_file() and not path.name.endswith("_test.go"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
