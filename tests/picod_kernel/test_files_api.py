"""`/api/files` over real HTTP: JSON/base64 and multipart writes (empty files included), mode
rules, listing, streamed download with Range and If-Modified-Since, and every jail refusal
leaving nothing written."""

from __future__ import annotations

import base64
import email.utils
import os
import stat

import pytest


def write_json(picod, path, content: bytes | str, mode=None):
    body = {"path": path, "content": content if isinstance(content, str) else base64.b64encode(content).decode()}
    if mode is not None:
        body["mode"] = mode
    return picod.request("POST", "/api/files", json=body)


def test_json_write_and_info(picod):
    response = write_json(picod, "/data/a.csv", b"x,y\n1,2\n")
    assert response.status_code == 200
    info = response.json()
    assert (info["path"], info["size"], info["mode"]) == ("data/a.csv", 8, "-rw-r--r--")
    with open(os.path.join(picod.workspace, "data/a.csv"), "rb") as f:
        assert f.read() == b"x,y\n1,2\n"


def test_empty_file_can_be_written(picod):
    assert write_json(picod, "empty.txt", "").json()["size"] == 0
    assert os.path.getsize(os.path.join(picod.workspace, "empty.txt")) == 0


def test_overwrite_truncates(picod):
    write_json(picod, "over.txt", b"long content")
    assert write_json(picod, "over.txt", b"short").json()["size"] == 5


@pytest.mark.parametrize(("mode", "expected"), [("0755", 0o755), ("600", 0o600), ("0o644", 0o644),
                                                ("1777", 0o644), ("", 0o644), ("abc", 0o644)])
def test_mode_rules(picod, mode, expected):
    name = f"mode-{mode or 'empty'}.sh"
    assert write_json(picod, name, b"#!/bin/sh\n", mode=mode).status_code == 200
    assert stat.S_IMODE(os.stat(os.path.join(picod.workspace, name)).st_mode) == expected


@pytest.mark.parametrize(("body", "wording"), [
    ({"content": "aGk="}, "'Path' failed"),
    ({"path": "", "content": "aGk="}, "'Path' failed"),
    ({"path": "x"}, "'Content' failed"),
    ({"path": "x", "content": "not base64!"}, "Invalid base64 content"),
    ({"path": "x", "content": "aGk"}, "Invalid base64 content"),
])
def test_json_write_errors(picod, body, wording):
    response = picod.request("POST", "/api/files", json=body)
    assert response.status_code == 400 and wording in response.json()["error"]
    assert not os.path.exists(os.path.join(picod.workspace, "x"))


def test_base64_with_newlines_accepted(picod):
    assert write_json(picod, "wrapped.txt", "aGVs\r\nbG8=").json()["size"] == 5


def test_multipart_upload(picod):
    files = {"file": ("ignored-name.bin", b"\x00\x01binary")}
    response = picod.request("POST", "/api/files", data={"path": "up/b.bin", "mode": "0600"}, files=files)
    assert response.status_code == 200 and response.json()["size"] == 8
    assert stat.S_IMODE(os.stat(os.path.join(picod.workspace, "up/b.bin")).st_mode) == 0o600
    empty = picod.request("POST", "/api/files", data={"path": "up/empty"}, files={"file": ("e", b"")})
    assert empty.status_code == 200 and empty.json()["size"] == 0


def test_multipart_errors(picod):
    response = picod.request("POST", "/api/files", data={"mode": "0644"}, files={"file": ("f", b"x")})
    assert response.status_code == 400 and response.json()["error"] == "Missing 'path' field"
    response = picod.request("POST", "/api/files", files={"path": (None, "p.txt"), "other": ("f", b"x")})
    assert response.status_code == 400 and response.json()["error"].startswith("Failed to get file")


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "nul\x00byte", "x" * 300])
def test_jail_refusals_write_nothing(picod, path):
    before = sorted(os.listdir(os.path.dirname(picod.workspace)))
    response = write_json(picod, path, b"data")
    assert response.status_code == 400 and response.json()["error"].startswith("access denied")
    assert sorted(os.listdir(os.path.dirname(picod.workspace))) == before


def test_symlink_escapes_refused(picod, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret")
    os.symlink(outside, os.path.join(picod.workspace, "out-dir"))
    os.symlink(outside / "secret", os.path.join(picod.workspace, "out-file"))
    assert write_json(picod, "out-dir/new.txt", b"x").status_code == 400
    assert write_json(picod, "out-file", b"x").status_code == 400
    assert picod.request("GET", "/api/files/out-file").status_code == 400
    assert picod.request("GET", "/api/files?path=out-dir").status_code == 400
    response = picod.request("POST", "/api/execute", json={"command": ["true"], "working_dir": "out-dir/sub"})
    assert response.status_code == 400
    assert sorted(os.listdir(outside)) == ["secret"] and (outside / "secret").read_text() == "top secret"


def test_list(picod):
    write_json(picod, "listing/b.txt", b"bb")
    write_json(picod, "listing/a.txt", b"a")
    os.mkdir(os.path.join(picod.workspace, "listing/sub"))
    os.symlink("a.txt", os.path.join(picod.workspace, "listing/link"))
    files = picod.request("GET", "/api/files?path=listing").json()["files"]
    assert [f["name"] for f in files] == ["a.txt", "b.txt", "link", "sub"]
    by_name = {f["name"]: f for f in files}
    assert by_name["b.txt"]["size"] == 2 and not by_name["b.txt"]["is_dir"]
    assert by_name["sub"]["is_dir"] and by_name["sub"]["mode"].startswith("d")
    assert by_name["link"]["mode"].startswith("L") and not by_name["link"]["is_dir"]
    assert set(files[0]) == {"name", "size", "modified", "mode", "is_dir"}


def test_list_errors(picod):
    write_json(picod, "plain.txt", b"x")
    cases = [("/api/files", 400, "Missing 'path' query parameter"),
             ("/api/files?path=", 400, "Missing 'path' query parameter"),
             ("/api/files?path=no/such/dir", 404, "Directory not found"),
             ("/api/files?path=plain.txt", 500, "Failed to read directory"),
             ("/api/files?path=../..", 400, "access denied")]
    for path, status, wording in cases:
        response = picod.request("GET", path)
        assert response.status_code == status and wording in response.json()["error"], path
        assert response.json()["code"] == status


def test_download(picod):
    payload = os.urandom(700_000)
    write_json(picod, "dl/blob.bin", payload)
    write_json(picod, "dl/page.html", b"<p>hi</p>")
    response = picod.request("GET", "/api/files/dl/blob.bin")
    assert response.status_code == 200 and response.content == payload
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == 'attachment; filename="blob.bin"'
    assert response.headers["Content-Transfer-Encoding"] == "binary"
    assert response.headers["Content-Description"] == "File Transfer"
    assert picod.request("GET", "/api/files//dl/page.html").headers["Content-Type"] == "text/html"
    assert picod.request("GET", "/api/files/dl/page%2Ehtml").text == "<p>hi</p>"


def test_download_ranges_and_conditional(picod):
    write_json(picod, "r.txt", b"0123456789")
    part = picod.request("GET", "/api/files/r.txt", headers={"Range": "bytes=2-5"})
    assert (part.status_code, part.content, part.headers["Content-Range"]) == (206, b"2345", "bytes 2-5/10")
    assert picod.request("GET", "/api/files/r.txt", headers={"Range": "bytes=-3"}).content == b"789"
    assert picod.request("GET", "/api/files/r.txt", headers={"Range": "bytes=7-"}).content == b"789"
    assert picod.request("GET", "/api/files/r.txt", headers={"Range": "bytes=20-"}).status_code == 416
    modified = picod.request("GET", "/api/files/r.txt").headers["Last-Modified"]
    assert picod.request("GET", "/api/files/r.txt", headers={"If-Modified-Since": modified}).status_code == 304
    old = email.utils.formatdate(0, usegmt=True)
    assert picod.request("GET", "/api/files/r.txt", headers={"If-Modified-Since": old}).status_code == 200


def test_download_errors(picod):
    cases = [("/api/files/missing.txt", 404, "File not found"),
             ("/api/files/", 400, "Path is a directory, not a file"),
             ("/api/files/..%2F..%2Fetc%2Fpasswd", 400, "access denied")]
    for path, status, wording in cases:
        response = picod.request("GET", path)
        assert response.status_code == status and wording in response.json()["error"], path
