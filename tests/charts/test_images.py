"""The Dockerfiles, checked without building them (no image can be built here): every file
they COPY exists in the repository and is not excluded from the build context; what they RUN
installs things the repository has (setup.cfg, sandbox-requirements.txt); their entrypoints are
console scripts of setup.cfg and their default arguments parse with those programs' parsers;
they run as a non-root user; the sandbox image's requirements cover every third-party import
of PicoD; the ports match the chart."""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from tests.charts.conftest import CHART, ROOT, one

IMAGES = {"Dockerfile": "kernelcube", "sandbox.Dockerfile": "picod"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    assert not current, f"{path.name}: a continuation line ends the file"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), "use the exec form (a JSON list)"
    return value


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(relative: str) -> bool:
    parts = Path(relative).parts
    for pattern in dockerignore():
        pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(part, pattern) for part in parts) or \
                fnmatch.fnmatch(relative, pattern):
            return True
    return False


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def console_scripts() -> dict[str, str]:
    text = setup_cfg()["options.entry_points"]["console_scripts"]
    pairs = [ln.split("=", 1) for ln in text.strip().splitlines()]
    return {name.strip(): target.strip() for name, target in pairs}


def packages() -> list[str]:
    text = setup_cfg()["options.packages.find"]["include"]
    return [p.strip().rstrip("*") for p in text.split() if p.strip()]


def copies(steps) -> dict[str, str]:
    """Destination in the image -> source in the repository, for COPY from the context."""
    out = {}
    for word, args in steps:
        if word != "COPY" or args.startswith("--from="):
            continue
        *sources, dest = shlex.split(args)
        for source in sources:
            out[dest.rstrip("/") + "/" + Path(source).name if dest.endswith("/") else dest] = \
                source
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_copied_files_exist_and_are_in_the_build_context(name):
    steps = instructions(ROOT / name)
    sources = list(copies(steps).values())
    assert sources
    for source in sources:
        if source == ".":
            continue
        assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file"
        assert not ignored(source), f"{name}: COPY {source}: excluded by .dockerignore"


def test_the_build_context_keeps_what_pip_install_dot_needs():
    needed = ["setup.cfg", "pyproject.toml", "README.md", "sandbox-requirements.txt",
              *packages()]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not ignored(path), f"{path} is excluded by .dockerignore"
    # ...and leaves out what is not the product.
    for path in (".venv", ".sandbox-venv", "tests", ".git", "charts"):
        assert ignored(path), path


@pytest.mark.parametrize("name", IMAGES)
def test_run_steps_install_what_the_repository_has(name):
    steps = instructions(ROOT / name)
    copied = copies(steps)
    runs = [args for word, args in steps if word == "RUN"]
    assert runs
    installs = []
    for run in runs:
        for command in re.split(r"&&|;", run):
            argv = shlex.split(command)
            if argv[:2] != ["pip", "install"] and argv[:2] != ["pip", "wheel"]:
                continue
            installs.append(argv)
            if "-r" in argv:
                target = argv[argv.index("-r") + 1]
                assert target in copied, f"{name}: pip -r {target} was not copied"
                assert (ROOT / copied[target]).is_file()
            for arg in argv[2:]:
                if arg in ("/src", "."):
                    assert copied.get("/src") == "." or arg == ".", f"{name}: {arg}"
    assert installs, f"{name}: installs nothing"


@pytest.mark.parametrize("name, script", IMAGES.items())
def test_entrypoint_is_a_console_script_and_cmd_parses(name, script):
    steps = dict(instructions(ROOT / name))
    entrypoint, cmd = exec_form(steps["ENTRYPOINT"]), exec_form(steps["CMD"])
    assert entrypoint[0] == script
    module, _, function = console_scripts()[script].partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    if script == "picod":
        from picod_kernel.app import build_parser

        args = build_parser().parse_args(entrypoint[1:] + cmd)
        assert args.port == yaml.safe_load((CHART / "values.yaml").read_text())["sandbox"]["port"]
        assert args.workspace == "/workspace"
    else:
        from kernel_gateway_ext.app import KernelCubeApp

        app = KernelCubeApp()
        app.parse_command_line(cmd)
        assert app.config.KernelCubeApp.backend == "kubernetes"


@pytest.mark.parametrize("name", IMAGES)
def test_images_run_as_a_non_root_user(name):
    users = [args for word, args in instructions(ROOT / name) if word == "USER"]
    assert users, f"{name}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]} (numeric, not root)"


def test_gateway_image_user_matches_the_chart():
    users = [a for w, a in instructions(ROOT / "Dockerfile") if w == "USER"]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    uid = users[-1].split(":")[0]
    assert f"runAsUser: {uid}" in helpers


def test_sandbox_requirements_cover_picods_imports():
    """PicoD runs in the sandbox image with only sandbox-requirements.txt installed."""
    names = set()
    for path in (ROOT / "picod_kernel").glob("*.py"):
        for m in re.finditer(r"^\s*(?:from|import) ([A-Za-z_][\w]*)", path.read_text(), re.M):
            names.add(m.group(1))
    third_party = {n for n in names if n not in sys.stdlib_module_names
                   and n not in ("picod_kernel", "__future__")}
    assert third_party
    distributions = {"jwt": "pyjwt", "zmq": "pyzmq"}
    requirements = (ROOT / "sandbox-requirements.txt").read_text().lower()
    listed = {re.split(r"[<>=\[; ]", ln.strip())[0] for ln in requirements.splitlines()
              if ln.strip() and not ln.startswith("#")}
    for module in third_party:
        dist = distributions.get(module, module).lower().replace("_", "-")
        assert dist in {x.replace("_", "-") for x in listed}, module
    # What users of a code interpreter expect, as the issue says.
    assert {"ipykernel", "numpy", "pandas", "matplotlib"} <= listed


def test_sandbox_image_exposes_the_code_interpreter_port():
    exposed = [a for w, a in instructions(ROOT / "sandbox.Dockerfile") if w == "EXPOSE"]
    assert exposed == ["8080"]


def test_the_parser_catches_what_it_should(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM x\nRUN pip install \\\n")
    with pytest.raises(AssertionError):
        instructions(bad)
    bad.write_text('FROM x\nENTRYPOINT picod --port 1\n')
    with pytest.raises(json.JSONDecodeError):
        exec_form(dict(instructions(bad))["ENTRYPOINT"])
    assert ignored(".venv/bin/python") and not ignored("picod_kernel/app.py")


def test_sandbox_pods_preload_what_the_default_template_does(render):
    """As the chart's CodeInterpreter runs the image: its `args` replace the image's CMD whole,
    so the preload must survive them (it is in the ENTRYPOINT)."""
    from kernel_gateway_ext.templates import DEFAULT_PRELOAD_CODE, DEFAULT_PRELOAD_MODULES
    from picod_kernel.app import build_parser

    entrypoint = exec_form(dict(instructions(ROOT / "sandbox.Dockerfile"))["ENTRYPOINT"])
    code_interpreter = one(render(), "CodeInterpreter")
    args = build_parser().parse_args(entrypoint[1:] + code_interpreter["spec"]["template"]["args"])
    assert args.preload == [",".join(DEFAULT_PRELOAD_MODULES)] and args.preload_code == DEFAULT_PRELOAD_CODE
