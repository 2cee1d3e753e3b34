"""The workspace jail: every client path is resolved inside the workspace, or refused.

Absolute client paths are workspace-relative (upstream behaviour). Beyond upstream, writes
resolve every existing ancestor through symlinks and open the last component without
following a symlink, so no write can land outside the workspace.
"""

from __future__ import annotations

import os
import posixpath

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


class JailError(ValueError):
    """A path that would leave the workspace or cannot name a file; the message says which."""


class Workspace:
    """`shared_group`: user code runs as another uid in the daemon's group (`--run-as`), so what
    the daemon writes for a client is group-writable as far as it is owner-writable: an uploaded
    file can be changed, and an uploaded folder written into, by the code it was uploaded for."""

    def __init__(self, root: str, shared_group: bool = False):
        os.makedirs(root, mode=0o755, exist_ok=True)
        self.root = os.path.realpath(root)
        self.shared_group = shared_group

    def _for_group(self, mode: int) -> int:
        return mode | (mode & 0o700) >> 3 if self.shared_group else mode

    def _lexical(self, user_path: str) -> str:
        if "\x00" in user_path:
            raise JailError(f"access denied: path {user_path!r} contains a NUL byte")
        encoded = user_path.encode("utf-8", "surrogateescape")
        if len(encoded) > MAX_PATH_BYTES:
            raise JailError(f"access denied: path is {len(encoded)} bytes long, the limit is {MAX_PATH_BYTES}")
        for name in user_path.split("/"):
            if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                raise JailError(f"access denied: a name in path {user_path[:64]!r}... is longer than {MAX_NAME_BYTES} bytes")
        cleaned = posixpath.normpath(user_path or ".").lstrip("/")
        full = posixpath.normpath(posixpath.join(self.root, cleaned))
        if not self._inside(full):
            raise JailError(f"access denied: path '{user_path}' escapes workspace jail ({self.root})")
        return full

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    def _check_real(self, user_path: str, path: str) -> None:
        real = os.path.realpath(path)
        if not self._inside(real):
            raise JailError(f"access denied: resolved path '{real}' for '{user_path}' escapes workspace jail via symlink")

    def resolve(self, user_path: str) -> str:
        """Absolute path for reading or listing; an existing target must stay inside once resolved."""
        full = self._lexical(user_path)
        if os.path.lexists(full):
            self._check_real(user_path, full)
        return full

    def relative(self, path: str) -> str:
        return posixpath.relpath(path, self.root)

    def make_dirs(self, user_path: str) -> str:
        """mkdir -p inside the workspace, refusing to pass through a symlink that leads out."""
        full = self._lexical(user_path)
        self._make_dirs(user_path, full)
        return full

    def _make_dirs(self, user_path: str, full: str) -> None:
        current = self.root
        for name in self.relative(full).split("/"):
            if name in ("", "."):
                continue
            current = posixpath.join(current, name)
            if os.path.lexists(current):
                self._check_real(user_path, current)
                if not os.path.isdir(current):
                    raise NotADirectoryError(f"'{self.relative(current)}' exists and is not a directory")
            else:
                os.mkdir(current, self._for_group(0o755))

    def open_for_write(self, user_path: str, mode: int) -> tuple[int, str]:
        """Create parents, then open the file create+truncate without following a final symlink.

        Returns (fd, absolute path). `mode` applies only when the file is created.
        """
        full = self._lexical(user_path)
        if full == self.root:
            raise JailError(f"access denied: path '{user_path}' names the workspace itself, not a file")
        self._make_dirs(user_path, posixpath.dirname(full))
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         self._for_group(mode))
        except OSError as exc:
            if os.path.islink(full):
                raise JailError(f"access denied: '{user_path}' is a symlink; refusing to write through it") from exc
            raise
        return fd, full
