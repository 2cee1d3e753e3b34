"""Build a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) from Go
modules into a cache directory, for the end-to-end tests in this package.

Nothing here ships: it is test machinery. ``python -m tests.e2e.build_control_plane`` builds what
is missing and prints where the binaries are; a second run with the binaries present returns at
once. The Go module and build caches live inside the same cache directory (``.cache/k8s`` in the
repository, or ``$KERNELCUBE_K8S_CACHE``), so a rebuild after ``rm -rf bin`` takes seconds.

Why a throwaway module: ``k8s.io/kubernetes`` replaces its ``k8s.io/*`` staging modules with
``./staging/...`` paths, which a dependent module ignores, so ours repeats each replace with the
published ``v0.X.Y`` version (read from the kubernetes go.mod itself).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
# The Go release tarball's install location, used when ``go`` is not on PATH.
GO_FALLBACK = Path("/usr/local/go/bin/go")
REPO = Path(__file__).resolve().parents[2]


class BuildError(RuntimeError):
    """The control plane cannot be built here (no Go, or a Go step failed)."""


def cache_dir() -> Path:
    return Path(os.environ.get("KERNELCUBE_K8S_CACHE") or REPO / ".cache" / "k8s")


def bin_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "bin"


def built(cache: Path | None = None) -> bool:
    stamp = bin_dir(cache) / ".versions"
    return stamp.is_file() and stamp.read_text() == _versions() and all(
        (bin_dir(cache) / name).is_file() for name in BINARIES)


def _versions() -> str:
    return f"kubernetes {KUBERNETES_VERSION}\netcd {ETCD_VERSION}\n"


def find_go() -> str:
    go = shutil.which("go") or (str(GO_FALLBACK) if GO_FALLBACK.is_file() else None)
    if go is None:
        raise BuildError(
            "Go is needed to build the Kubernetes control plane for the end-to-end tests, and "
            f"neither `go` on PATH nor {GO_FALLBACK} exists; install Go 1.26 or newer")
    return go


def _log(message: str, started: float) -> None:
    print(f"[build-control-plane {time.monotonic() - started:6.0f}s] {message}", flush=True)


class _Builder:
    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.go = find_go()
        self.started = time.monotonic()
        self.env = dict(
            os.environ, GOMODCACHE=str(cache / "gomod"), GOCACHE=str(cache / "gobuild"),
            GOPATH=str(cache / "gopath"), CGO_ENABLED="0", GOFLAGS="-mod=mod", GOTOOLCHAIN="local",
            GOWORK="off")

    def go_run(self, args: list[str], cwd: Path, what: str, capture: bool = False) -> str:
        self.log(f"{what}: go {' '.join(args[:2])} ...")
        done = threading.Event()

        def heartbeat() -> None:
            t0 = time.monotonic()
            while not done.wait(60):
                self.log(f"  still {what} ({time.monotonic() - t0:.0f}s)")

        threading.Thread(target=heartbeat, daemon=True).start()
        try:
            proc = subprocess.run([self.go, *args], cwd=cwd, env=self.env, text=True,
                                  stdout=subprocess.PIPE if capture else None)
        finally:
            done.set()
        if proc.returncode != 0:
            raise BuildError(f"{what} failed: go {' '.join(args)} exited {proc.returncode}")
        return proc.stdout or ""

    def log(self, message: str) -> None:
        _log(message, self.started)

    def module(self, name: str, go_mod: str, imports: list[str]) -> Path:
        root = self.cache / "src" / name
        root.mkdir(parents=True, exist_ok=True)
        (root / "go.mod").write_text(go_mod)
        lines = "\n".join(f'\t_ "{path}"' for path in imports)
        (root / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{lines}\n)\n")
        return root

    def staging_replaces(self) -> list[str]:
        info = json.loads(self.go_run(
            ["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
            self.cache, "reading the kubernetes go.mod", capture=True))
        text = Path(info["GoMod"]).read_text()
        staging = sorted(set(re.findall(r"(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", text)))
        if not staging:
            raise BuildError("found no staging replaces in the kubernetes go.mod")
        minor = KUBERNETES_VERSION.split(".", 1)[1]
        return [f"replace {mod} => {mod} v0.{minor}" for mod in staging]

    def build_etcd(self, out: Path) -> None:
        root = self.module(
            "etcd", f"module kernelcube.test/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 "
            f"{ETCD_VERSION}\n", ["go.etcd.io/etcd/server/v3"])
        self.go_run(["mod", "tidy"], root, "resolving etcd")
        self.go_run(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"),
                     "go.etcd.io/etcd/server/v3"], root, "building etcd")

    def build_kubernetes(self, out: Path) -> None:
        replaces = "\n".join(self.staging_replaces())
        commands = ["k8s.io/kubernetes/cmd/kube-apiserver",
                    "k8s.io/kubernetes/cmd/kube-controller-manager"]
        root = self.module(
            "kubernetes", f"module kernelcube.test/kubernetes\n\ngo 1.24\n\nrequire "
            f"k8s.io/kubernetes {KUBERNETES_VERSION}\n\n{replaces}\n", commands)
        self.go_run(["mod", "tidy"], root, "resolving kubernetes")
        major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
        ldflags = ("-s -w -X k8s.io/component-base/version.gitVersion=" + KUBERNETES_VERSION
                   + f" -X k8s.io/component-base/version.gitMajor={major}"
                   + f" -X k8s.io/component-base/version.gitMinor={minor}")
        self.go_run(["build", "-trimpath", "-ldflags", ldflags, "-o", str(out) + "/", *commands],
                    root, "building kube-apiserver and kube-controller-manager (cold: ~12 min)")

    def run(self) -> Path:
        out = bin_dir(self.cache)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "etcd").is_file():
            self.build_etcd(out)
        if not all((out / name).is_file() for name in BINARIES[1:]):
            self.build_kubernetes(out)
        (out / ".versions").write_text(_versions())
        self.log(f"control plane ready in {out}")
        return out


def ensure_built(cache: Path | None = None) -> Path:
    """The binaries' directory, building what is missing (minutes when the cache is cold)."""
    cache = cache or cache_dir()
    if built(cache):
        return bin_dir(cache)
    cache.mkdir(parents=True, exist_ok=True)
    return _Builder(cache).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache dir (default .cache/k8s "
                        "in the repository, or $KERNELCUBE_K8S_CACHE)")
    args = parser.parse_args(argv)
    try:
        print(ensure_built(args.cache))
    except BuildError as exc:
        print(f"build-control-plane: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
