"""The workspace jail: lexical escapes, absolute paths, symlinks out, NUL bytes, long names,
and writes that must never follow a symlink out of the workspace."""

from __future__ import annotations

import os

import pytest

from picod_kernel.jail import JailError, Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    return Workspace(str(tmp_path / "ws"))


@pytest.mark.parametrize(("given", "expected"), [
    ("a.txt", "a.txt"), ("./a.txt", "a.txt"), ("/data/a.csv", "data/a.csv"),
    ("", "."), (".", "."), ("/", "."), ("/../etc/passwd", "etc/passwd"), ("a/b/../c", "a/c"),
])
def test_resolution(ws, given, expected):
    assert ws.relative(ws.resolve(given)) == expected


@pytest.mark.parametrize("given", ["../x", "a/../../x", "..", "../ws2/x"])
def test_lexical_escape_refused(ws, given):
    with pytest.raises(JailError, match="escapes workspace jail"):
        ws.resolve(given)


def test_nul_and_long_names_refused(ws):
    with pytest.raises(JailError, match="NUL"):
        ws.resolve("a\x00b")
    with pytest.raises(JailError, match="longer than 255"):
        ws.resolve("x" * 256)
    with pytest.raises(JailError, match="limit is 4096"):
        ws.resolve("a/" * 2100)


def test_symlink_out_refused_for_reads(ws, tmp_path):
    os.symlink(tmp_path / "outside" / "secret", os.path.join(ws.root, "link"))
    os.symlink(tmp_path / "outside", os.path.join(ws.root, "dirlink"))
    with pytest.raises(JailError, match="via symlink"):
        ws.resolve("link")
    with pytest.raises(JailError, match="via symlink"):
        ws.resolve("dirlink/secret")


def test_symlink_inside_allowed_for_reads(ws):
    os.mkdir(os.path.join(ws.root, "real"))
    os.symlink("real", os.path.join(ws.root, "alias"))
    assert ws.resolve("alias") == os.path.join(ws.root, "alias")


def test_write_below_symlinked_dir_refused(ws, tmp_path):
    # Upstream accepts this (its check runs only when the target exists); we do not.
    os.symlink(tmp_path / "outside", os.path.join(ws.root, "dirlink"))
    with pytest.raises(JailError, match="via symlink"):
        ws.open_for_write("dirlink/new.txt", 0o644)
    with pytest.raises(JailError, match="via symlink"):
        ws.make_dirs("dirlink/sub")
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret"]


def test_write_through_final_symlink_refused(ws, tmp_path):
    os.symlink(tmp_path / "outside" / "secret", os.path.join(ws.root, "link"))
    with pytest.raises(JailError, match="symlink"):
        ws.open_for_write("link", 0o644)
    assert (tmp_path / "outside" / "secret").read_text() == "s"


def test_write_creates_parents_and_truncates(ws):
    fd, path = ws.open_for_write("/a/b/c.txt", 0o600)
    os.write(fd, b"hello")
    os.close(fd)
    fd, _ = ws.open_for_write("a/b/c.txt", 0o644)
    os.close(fd)
    assert os.path.getsize(path) == 0
    assert os.stat(os.path.join(ws.root, "a")).st_mode & 0o777 == 0o755


def test_write_refuses_workspace_itself_and_file_as_dir(ws):
    with pytest.raises(JailError, match="workspace itself"):
        ws.open_for_write("/", 0o644)
    fd, _ = ws.open_for_write("f", 0o644)
    os.close(fd)
    with pytest.raises(NotADirectoryError):
        ws.open_for_write("f/g", 0o644)
