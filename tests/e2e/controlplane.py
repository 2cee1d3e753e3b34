"""A real Kubernetes control plane on 127.0.0.1 for the end-to-end tests: etcd, kube-apiserver
with RBAC, and kube-controller-manager with only the controllers that need no nodes (garbage
collection, namespaces, service accounts and their tokens, the root CA ConfigMap).

Everything is made per run in a directory of the test's: a CA, the API server's serving
certificate, client certificates (an admin in `system:masters`, the controller manager), a
service-account signing key and kubeconfigs. Processes start in sessions of their own and are
stopped by PID (SIGTERM, then SIGKILL) when the block ends. The binaries come from
`tests.e2e.build_control_plane`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"
SERVICE_RANGE = "127.96.0.0/16"  # data only: nothing routes service IPs here
ISSUER = "https://kubernetes.default.svc.cluster.local"
NODE_LESS_CONTROLLERS = ("garbage-collector-controller,namespace-controller,"
                         "serviceaccount-controller,serviceaccount-token-controller,"
                         "root-ca-certificate-publisher-controller")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# -- certificates ------------------------------------------------------------------------------

def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name,
          issuer_key: rsa.RSAPrivateKey, *, ca: bool = False, server: bool = False,
          sans: list[x509.GeneralName] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = [x509.ExtendedKeyUsageOID.SERVER_AUTH] if server else \
            [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                    critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


class Pki:
    """A CA, the API server's serving pair, client pairs by name, a service-account key."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = _key()
        self.ca_name = _name("kernelcube-e2e-ca")
        self.ca_cert = _cert(self.ca_name, self.ca_key, self.ca_name, self.ca_key, ca=True)
        self.ca = self._write("ca.crt", self.ca_cert.public_bytes(serialization.Encoding.PEM))
        key = _key()
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(next(ipaddress.ip_network(SERVICE_RANGE).hosts()))]
        self.server = self._pair("apiserver", _cert(_name("kube-apiserver"), key, self.ca_name,
                                                    self.ca_key, server=True, sans=sans), key)
        sa_key = _key()
        self.sa_key = self._write("sa.key", _pem_key(sa_key))
        self.sa_pub = self._write("sa.pub", sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def _pair(self, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey
              ) -> tuple[Path, Path]:
        return (self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{name}.key", _pem_key(key)))

    def client(self, name: str, cn: str, org: str | None = None) -> tuple[Path, Path]:
        key = _key()
        return self._pair(name, _cert(_name(cn, org), key, self.ca_name, self.ca_key), key)


# -- processes ---------------------------------------------------------------------------------

class Process:
    """A child in a session of its own, logging to a file; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def write_kubeconfig(path: Path, server: str, ca: Path, *, cert: tuple[Path, Path] | None = None,
                     token: str | None = None, namespace: str = "default") -> Path:
    user: dict[str, Any] = {}
    if cert is not None:
        user = {"client-certificate": str(cert[0]), "client-key": str(cert[1])}
    if token is not None:
        user = {"token": token}
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "e2e",
              "clusters": [{"name": "e2e", "cluster": {"server": server,
                                                       "certificate-authority": str(ca)}}],
              "users": [{"name": "e2e", "user": user}],
              "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e",
                                                       "namespace": namespace}}]}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControlPlane:
    """`with ControlPlane(directory, bin_dir) as cp:` etcd and kube-apiserver are up and ready;
    call `start_controller_manager()` once the CRDs are installed (it discovers kinds late)."""

    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.dir = Path(directory)
        self.bin = Path(bin_dir)
        self.processes: list[Process] = []
        self.port = free_port()
        self.url = f"https://{HOST}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        self.pki = Pki(self.dir / "pki")
        self.admin_cert = self.pki.client("admin", "kernelcube-e2e-admin", "system:masters")
        self.admin_kubeconfig = write_kubeconfig(self.dir / "admin.kubeconfig", self.url,
                                                 self.pki.ca, cert=self.admin_cert)
        self.session = requests.Session()
        self.session.cert = (str(self.admin_cert[0]), str(self.admin_cert[1]))
        self.session.verify = str(self.pki.ca)
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override our CA
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://{HOST}:{etcd_port}"
        self._spawn("etcd", [
            str(self.bin / "etcd"), "--name", "e2e", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://{HOST}:{peer_port}",
            "--initial-advertise-peer-urls", f"http://{HOST}:{peer_port}",
            "--initial-cluster", f"e2e=http://{HOST}:{peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn"])
        self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"), "--etcd-servers", etcd_url,
            "--bind-address", HOST, "--advertise-address", HOST, "--secure-port", str(self.port),
            "--service-cluster-ip-range", SERVICE_RANGE, "--endpoint-reconciler-type", "none",
            "--authorization-mode", "RBAC", "--client-ca-file", str(self.pki.ca),
            "--tls-cert-file", str(self.pki.server[0]),
            "--tls-private-key-file", str(self.pki.server[1]),
            "--service-account-issuer", ISSUER,
            "--service-account-key-file", str(self.pki.sa_pub),
            "--service-account-signing-key-file", str(self.pki.sa_key),
            "--cert-dir", str(self.dir / "apiserver-certs"), "--allow-privileged=true",
            "--enable-priority-and-fairness=false", "--v=1"])
        self.wait_ready(60)
        self.startup_seconds = time.monotonic() - started

    def start_controller_manager(self) -> None:
        cert = self.pki.client("kcm", "system:kube-controller-manager")
        kubeconfig = write_kubeconfig(self.dir / "kcm.kubeconfig", self.url, self.pki.ca,
                                      cert=cert)
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), "--kubeconfig", str(kubeconfig),
            "--authentication-kubeconfig", str(kubeconfig),
            "--authorization-kubeconfig", str(kubeconfig),
            "--bind-address", HOST, "--secure-port", str(free_port()),
            "--controllers", NODE_LESS_CONTROLLERS, "--leader-elect=false",
            "--service-account-private-key-file", str(self.pki.sa_key),
            "--root-ca-file", str(self.pki.ca), "--use-service-account-credentials=true",
            "--concurrent-gc-syncs", "5", "--v=1"])

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def _spawn(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.dir)
        self.processes.append(process)
        return process

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
            try:
                response = self.session.get(self.url + "/readyz", timeout=2)
                if response.status_code == 200:
                    return
                last = response.text
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s: {last[-800:]}")

    # -- admin access (synchronous: setup and assertions) -------------------------------------

    def api(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (),
            content_type: str = "application/json", params: dict | None = None) -> Any:
        response = self.session.request(method, self.url + path, params=params,
                                        data=None if body is None else json.dumps(body),
                                        headers={"Content-Type": content_type}, timeout=30)
        if response.status_code >= 400 and response.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:800]}")
        return response.json() if response.content else None

    def resource_path(self, api_version: str, kind: str, namespace: str | None) -> str:
        """The collection URL of a kind, from discovery."""
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        for res in self.api("GET", base)["resources"]:
            if res["kind"] == kind and "/" not in res["name"]:
                if res["namespaced"]:
                    return f"{base}/namespaces/{namespace or 'default'}/{res['name']}"
                return f"{base}/{res['name']}"
        raise KeyError(f"{api_version} {kind} is not served")

    def apply(self, obj: dict, namespace: str | None = None) -> dict:
        """Create an object, or replace it if it exists."""
        ns = obj["metadata"].get("namespace") or namespace
        path = self.resource_path(obj["apiVersion"], obj["kind"], ns)
        created = self.api("POST", path, obj, ok=(409,))
        if created.get("kind") == "Status":
            current = self.api("GET", f"{path}/{obj['metadata']['name']}")
            obj = dict(obj, metadata=dict(obj["metadata"], resourceVersion=current["metadata"][
                "resourceVersion"]))
            return self.api("PUT", f"{path}/{obj['metadata']['name']}", obj)
        return created

    def service_account_token(self, namespace: str, name: str, seconds: int = 7200) -> str:
        result = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": seconds}})
        return result["status"]["token"]

    def kubeconfig_for(self, namespace: str, service_account: str) -> Path:
        """A kubeconfig acting as a ServiceAccount (its token), for components run locally."""
        token = self.service_account_token(namespace, service_account)
        return write_kubeconfig(self.dir / f"{service_account}.kubeconfig", self.url, self.pki.ca,
                                token=token, namespace=namespace)

    def wait_crds_established(self, names: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                crd = self.api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                      f"{name}")
                if any(c["type"] == "Established" and c["status"] == "True"
                       for c in (crd.get("status") or {}).get("conditions") or ()):
                    pending.discard(name)
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"CRDs not established after {timeout}s: {sorted(pending)}")
