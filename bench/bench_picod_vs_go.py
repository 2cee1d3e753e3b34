"""PicoD side by side with AgentCube's Go PicoD, the daemon it re-implements: same machine, same
client, same token, runs interleaved so that a noisy neighbour hurts both alike.

Measured: `/api/execute ["true"]` p50/p99 (one keep-alive client), requests/s with 50
concurrent keep-alive clients, start to the first 200 on `/health` (ours with and without its
kernel), the daemon's idle PSS (beside two floors: the bare interpreter, and the interpreter
with asyncio and httptools imported) and a 30 MiB multipart upload. Goals (issue 12): execute
p50 <= 1.1x Go, throughput >= 0.8x, idle PSS <= 20 MiB, upload >= 0.8x.

The Go side comes from `bench.gopicod` (`AGENTCUBE_SRC` or `AGENTCUBE_PICOD_BINARY`); without
either it is skipped and only ours is measured. `PICOD_COMPARE_REF=<git ref>` adds ours as of
that commit (exported into `.cache/`), to show a change against its base in the same run.

Ours runs as the sandbox provider runs it: the sandbox interpreter (`.sandbox-venv`, else this
one) with `-I`, PicoD's source put first on sys.path, `--log-level WARNING`. The Go PicoD runs as
its Dockerfile runs it (`picod -port P -workspace W`; it logs every request, to a file here).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.gopicod import REPO, Unavailable, go_picod
from bench.httpload import closed_loop, request_bytes, wait_for_status
from bench.stats import percentile

START_ROUNDS = 5
IDLE_SETTLE = 1.0  # seconds between the first 200 and reading PSS
LATENCY_BLOCKS, LATENCY_BLOCK = 16, 25
THROUGHPUT_ROUNDS, THROUGHPUT_SECONDS, CLIENTS = 3, 2.0, 50
UPLOAD_ROUNDS, UPLOAD_MIB = 5, 30
EXECUTE = json.dumps({"command": ["true"]}).encode()
# What a Python daemon cannot go below: the interpreter alone, and with the frameworks PicoD is built on.
FLOORS = {
    "floor: python -I, idle": "import time; time.sleep(100)",
    "floor: + asyncio, httptools, idle": "import asyncio, httptools, time; time.sleep(100)",
}
BOOTSTRAP = "import sys; sys.path.insert(0, {src!r}); from picod_kernel.{entry} import main; sys.exit(main())"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Daemon:
    label: str
    base_argv: tuple[str, ...]
    go: bool = False
    kernel: bool = False

    def argv(self, port: int, workspace: str) -> list[str]:
        if self.go:
            return [*self.base_argv, "-port", str(port), "-workspace", workspace]
        extra = [] if self.kernel else ["--no-kernel"]
        return [*self.base_argv, "--host", "127.0.0.1", "--port", str(port), "--workspace", workspace,
                "--log-level", "WARNING", *extra]


def sandbox_python() -> str:
    candidate = os.environ.get("KERNELCUBE_SANDBOX_PYTHON") or str(REPO / ".sandbox-venv" / "bin" / "python")
    return candidate if os.access(candidate, os.X_OK) else sys.executable


def ours(label: str, source: Path, kernel: bool) -> Daemon:
    # The daemon's entry point; before it had one of its own (a PICOD_COMPARE_REF), `app`.
    entry = "daemon" if (source / "picod_kernel" / "daemon.py").is_file() else "app"
    return Daemon(label, (sandbox_python(), "-I", "-c", BOOTSTRAP.format(src=str(source), entry=entry)), kernel=kernel)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory(pid: int) -> dict[str, float]:
    """Pss, Rss and Uss (private pages) of one process, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) / 1024
    return {"pss": fields["Pss"], "rss": fields["Rss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def cpu_seconds(pid: int) -> float:
    """User and system CPU of one process so far (its reaped children not counted)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Running:
    """One started daemon; `start_seconds` is Popen to the first 200 on /health."""

    def __init__(self, daemon: Daemon, public_pem: str, directory: str):
        self.daemon = daemon
        self.port = _free_port()
        self.workspace = tempfile.mkdtemp(prefix="ws-", dir=directory)
        self.log = open(os.path.join(directory, f"daemon-{self.port}.log"), "wb")  # noqa: SIM115
        env = {**os.environ, "PICOD_AUTH_PUBLIC_KEY": public_pem}
        started = time.perf_counter()
        self.proc = subprocess.Popen(daemon.argv(self.port, self.workspace), env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.start_seconds = wait_for_status(self.port, "/health", 200, started, 60)
        except TimeoutError:
            output = self.output()
            self.stop()
            raise RuntimeError(f"{daemon.label} did not become healthy:\n{output[-2000:]}") from None

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class Client:
    """One keep-alive connection with TCP_NODELAY."""

    def __init__(self, port: int, token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> dict:
        self.conn.request("POST", path, body, {**self.auth, "Content-Type": content_type})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


def _multipart(path: str, content: bytes) -> tuple[bytes, str]:
    boundary = "kernelcube-bench-boundary-7f3a"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n{path}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _rotations(items: list, rounds: int):
    """Each round in another order, so no contender always runs first (or after the same one)."""
    for r in range(rounds):
        shift = r % len(items)
        yield items[shift:] + items[:shift]


def _export_ref(ref: str) -> tuple[str, Path] | None:
    """PicoD's package as of a git ref, exported once into .cache/picod-ref/<commit>."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                                capture_output=True, text=True, check=True).stdout.strip()
        target = REPO / ".cache" / "picod-ref" / commit
        if not (target / "picod_kernel" / "app.py").is_file():
            archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "picod_kernel"],
                                     capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(target, filter="data")
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"   PICOD_COMPARE_REF={ref}: cannot export it ({exc}); leaving it out")
        return None
    return ref, target


def _token(key: rsa.RSAPrivateKey) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "bench", "iat": now, "exp": now + 3600, "session_id": "bench-session",
                       "sandbox": "bench-sandbox"}, key, algorithm="RS256")


def _ratio_note(value: float, base: float | None, goal: float | None, higher_is_better: bool) -> str:
    if not base:
        return ""
    ratio = value / base
    note = f"  {ratio:5.2f}x Go"
    if goal is not None:
        met = ratio >= goal if higher_is_better else ratio <= goal
        note += f" (goal {'>=' if higher_is_better else '<='} {goal}x: {'met' if met else 'NOT met'})"
    return note


def run() -> None:
    try:
        go_binary: str | None = go_picod()
    except Unavailable as exc:
        go_binary = None
        print(f"   Go PicoD: skipped -- {exc}")
    refs = [_export_ref(os.environ["PICOD_COMPARE_REF"])] if os.environ.get("PICOD_COMPARE_REF") else []
    sources = [("PicoD", REPO)] + [(f"PicoD @{ref}", path) for ref, path in filter(None, refs)]

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    token = _token(key)
    go = Daemon("Go PicoD", (go_binary,), go=True) if go_binary else None
    print(f"   ours: {sandbox_python()} -I, --log-level WARNING; client: this process, one token for all")

    with tempfile.TemporaryDirectory(prefix="bench-picod-vs-go-") as directory:
        _start_and_memory(go, sources, public_pem, directory)
        served = [go] if go else []
        served += [ours(label, path, kernel=True) for label, path in sources]
        running = [Running(d, public_pem, directory) for d in served]
        try:
            _requests(running, token)
        finally:
            for r in running:
                r.stop()


def _start_and_memory(go: Daemon | None, sources: list[tuple[str, Path]], public_pem: str, directory: str) -> None:
    contenders = [go] if go else []
    for label, path in sources:
        contenders += [ours(f"{label} --no-kernel", path, kernel=False), ours(label, path, kernel=True)]
    starts: dict[str, list[float]] = {d.label: [] for d in contenders}
    mem: dict[str, list[dict]] = {d.label: [] for d in contenders}
    floors: dict[str, list[dict]] = {label: [] for label in FLOORS}
    for order in _rotations(contenders + list(FLOORS), START_ROUNDS):
        for daemon in order:
            if isinstance(daemon, str):  # a floor: the same interpreter, idle
                proc = subprocess.Popen([sandbox_python(), "-I", "-c", FLOORS[daemon]])
                time.sleep(IDLE_SETTLE)
                floors[daemon].append(memory(proc.pid))
                proc.kill()
                proc.wait()
                continue
            r = Running(daemon, public_pem, directory)
            starts[daemon.label].append(r.start_seconds * 1000)
            time.sleep(IDLE_SETTLE)
            mem[daemon.label].append(memory(r.proc.pid))
            r.stop()

    go_start = statistics.median(starts[go.label]) if go else None
    print(f"\n  start to the first 200 on /health (median of {START_ROUNDS})")
    for d in contenders:
        ms = statistics.median(starts[d.label])
        print(f"    {d.label:<38} {ms:8.0f} ms  (min {min(starts[d.label]):.0f}){_ratio_note(ms, go_start, None, False)}")
    print(f"\n  daemon memory {IDLE_SETTLE:.0f} s after its first 200 (median of {START_ROUNDS}; MiB)")
    for label, samples in [*((d.label, mem[d.label]) for d in contenders), *floors.items()]:
        pss, rss, uss = (statistics.median(s[k] for s in samples) for k in ("pss", "rss", "uss"))
        goal = "" if label.startswith(("Go", "floor")) else f"  (goal PSS <= 20 MiB: {'met' if pss <= 20 else 'NOT met'})"
        print(f"    {label:<38} PSS {pss:6.1f}  RSS {rss:6.1f}  USS {uss:6.1f}{goal}")


def _requests(running: list[Running], token: str) -> None:
    go = running[0] if running[0].daemon.go else None
    clients = {r.daemon.label: Client(r.port, token) for r in running}
    latency: dict[str, list[float]] = {r.daemon.label: [] for r in running}
    for c in clients.values():
        for _ in range(10):
            c.post("/api/execute", EXECUTE)
    for order in _rotations(running, LATENCY_BLOCKS):
        for r in order:
            c = clients[r.daemon.label]
            for _ in range(LATENCY_BLOCK):
                t0 = time.perf_counter()
                c.post("/api/execute", EXECUTE)
                latency[r.daemon.label].append((time.perf_counter() - t0) * 1000)
    print(f"\n  /api/execute [\"true\"], one keep-alive client (n={LATENCY_BLOCKS * LATENCY_BLOCK} each, "
          f"in blocks of {LATENCY_BLOCK})")
    base = statistics.median(latency[go.daemon.label]) if go else None
    for r in running:
        s = latency[r.daemon.label]
        p50 = statistics.median(s)
        note = _ratio_note(p50, base, None if r is go else 1.1, False) if r is not go else ""
        print(f"    {r.daemon.label:<38} p50 {p50:6.2f} ms  p99 {percentile(s, 99):6.2f} ms{note}")

    request = request_bytes("POST", "/api/execute", {"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/json"}, EXECUTE)
    rates: dict[str, list[float]] = {r.daemon.label: [] for r in running}
    cpu: dict[str, list[float]] = {r.daemon.label: [] for r in running}
    for r in running:
        closed_loop(r.port, request, CLIENTS, 0.5)  # warm-up
    for order in _rotations(running, THROUGHPUT_ROUNDS):
        for r in order:
            before = cpu_seconds(r.proc.pid)
            rate, errors = closed_loop(r.port, request, CLIENTS, THROUGHPUT_SECONDS)
            if errors:
                raise RuntimeError(f"{r.daemon.label}: {errors} answers other than 200 under load")
            rates[r.daemon.label].append(rate)
            cpu[r.daemon.label].append((cpu_seconds(r.proc.pid) - before) / (rate * THROUGHPUT_SECONDS) * 1000)
    print(f"\n  /api/execute [\"true\"], {CLIENTS} concurrent keep-alive clients (median of {THROUGHPUT_ROUNDS} "
          f"x {THROUGHPUT_SECONDS:.0f} s; the daemon's own CPU per request, its commands' apart)")
    base = statistics.median(rates[go.daemon.label]) if go else None
    for r in running:
        rate = statistics.median(rates[r.daemon.label])
        note = _ratio_note(rate, base, 0.8, True) if r is not go else ""
        print(f"    {r.daemon.label:<38} {rate:7.0f} requests/s  CPU {statistics.median(cpu[r.daemon.label]):5.2f} ms{note}")

    body, content_type = _multipart("bench/upload.bin", os.urandom(UPLOAD_MIB * MIB))
    speeds: dict[str, list[float]] = {r.daemon.label: [] for r in running}
    for order in _rotations(running, UPLOAD_ROUNDS + 1):
        for r in order:
            c = clients[r.daemon.label]
            t0 = time.perf_counter()
            info = c.post("/api/files", body, content_type)
            elapsed = time.perf_counter() - t0
            if info.get("size") != UPLOAD_MIB * MIB:
                raise RuntimeError(f"{r.daemon.label}: upload answered {info}")
            speeds[r.daemon.label].append(UPLOAD_MIB / elapsed)
    print(f"\n  multipart upload of {UPLOAD_MIB} MiB (median of {UPLOAD_ROUNDS}, after one warm-up)")
    base = statistics.median(speeds[go.daemon.label][1:]) if go else None
    for r in running:
        speed = statistics.median(speeds[r.daemon.label][1:])
        note = _ratio_note(speed, base, 0.8, True) if r is not go else ""
        print(f"    {r.daemon.label:<38} {speed:7.0f} MiB/s{note}")

    print("\n  daemon memory after all of the above (MiB)")
    for r in running:
        m = memory(r.proc.pid)
        print(f"    {r.daemon.label:<38} PSS {m['pss']:6.1f}  RSS {m['rss']:6.1f}  USS {m['uss']:6.1f}")
    for c in clients.values():
        c.close()
