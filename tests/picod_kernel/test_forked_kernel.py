"""PicoD's side of the kernel zygote (`--kernel-channel-fd`): it asks the gateway for a kernel
with what it would have spawned (the kernel's arguments, its environment without
JPY_PARENT_PID and without PicoD's own variables, the workspace, the umask) and spawns it when
the answer is no, or when the gateway is gone, saying why in its log. A kernel that is not its
child is followed through its supervisor's status pipe: its exit status when it ends, and a
kill when the supervisor vanishes without a word. (Kernels actually forked from a zygote, in
real sandboxes, are tested with the gateway.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from picod_kernel.forked_kernel import ForkedKernel


class FakeGateway:
    """The gateway's end of the channel, answering every request with no."""

    def __init__(self):
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.requests: list[dict] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while data := self.ours.recv(1 << 20):
            self.requests.append(json.loads(data))
            self.ours.send(json.dumps({"ok": False, "error": "no zygote in this test"}).encode())

    def close(self) -> None:
        if self.ours.fileno() != -1:
            self.ours.shutdown(socket.SHUT_RDWR)
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def fake_gateway():
    gateway = FakeGateway()
    yield gateway
    gateway.close()


def test_picod_asks_for_the_kernel_it_would_spawn_and_spawns_it_when_refused(fresh_picod, fake_gateway, tmp_path):
    fd = fake_gateway.theirs.fileno()
    # PYTHONPATH empty, as a fresh sandbox's package directory (PicoD itself is imported from
    # the working directory): packages there would make PicoD spawn without asking.
    (tmp_path / "packages").mkdir()
    env = {"PICOD_SANDBOX_ID": "sb-test", "KERNELCUBE_X": "1", "PYTHONPATH": str(tmp_path / "packages")}
    picod = fresh_picod("--kernel-channel-fd", str(fd), env=env, pass_fds=(fd,))
    health = picod.request("GET", "/health", auth=False).json()
    assert health["kernel"] == "ready" and health["kernel_source"] == "spawn"
    request, = fake_gateway.requests
    body = request["kernel"]
    assert body["argv"][0] == "-f" and body["argv"][1].endswith("connection.json")
    assert os.path.realpath(body["cwd"]) == picod.workspace and isinstance(body["umask"], int)
    assert "JPY_PARENT_PID" not in body["env"] and not [k for k in body["env"] if k.startswith(("PICOD_", "KERNELCUBE_"))]
    assert os.path.basename(body["python"]).startswith("python")
    assert "kernel spawned, not forked from the zygote: no zygote in this test" in picod.log
    # The gateway gone: a restart spawns without asking again.
    fake_gateway.close()
    assert picod.request("POST", "/api/kernel/restart").json()["kernel"] == "ready"
    assert len(fake_gateway.requests) == 1
    assert picod.request("POST", "/api/run", json={"code": "6 * 7"}).json()["results"][0]["text/plain"] == "42"


@pytest.fixture
def child():
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_a_forked_kernel_ends_with_the_status_its_supervisor_reports(child):
    status_read, status_write = os.pipe()
    kernel = ForkedKernel(child.pid, status_read)
    assert kernel.poll() is None
    os.write(status_write, b'{"exit": -9}\n')
    os.close(status_write)
    assert kernel.poll() == -9 and kernel.wait() == -9
    kernel.send_signal(signal.SIGTERM)  # after its end: nothing is signalled
    assert child.poll() is None
    kernel.close()


def test_a_kernel_whose_supervisor_vanished_is_killed(child):
    status_read, status_write = os.pipe()
    kernel = ForkedKernel(child.pid, status_read)
    os.close(status_write)
    assert kernel.poll() == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.returncode == -signal.SIGKILL
    kernel.close()


def test_a_kernel_gone_before_picod_heard_of_it_ends_with_its_status():
    gone = subprocess.Popen(["true"])
    gone.wait()
    status_read, status_write = os.pipe()
    kernel = ForkedKernel(gone.pid, status_read)  # no pidfd to be had: nothing to signal
    os.write(status_write, b'{"exit": 1}\n')
    os.close(status_write)
    kernel.kill()
    assert kernel.poll() == 1
    kernel.close()
