"""The Dockerfile (no Docker engine here): parsed, and the commands it documents run here as in the image.

The image runs the Makefile's targets, as CI does (`make install` at build time, `make run` / `make serve`
in the mounted checkout). The image's state is stood in for by a folder here: the venv path the Dockerfile
sets, its install stamp, the environment it sets after the install; the documented `make` commands run
against it (dry for the ones that would train or serve), and must neither reinstall nor write into the
checkout.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import REPO

dockerfile_parse = pytest.importorskip("dockerfile_parse")
DOCS = ("Dockerfile", "README.md", "docs/serving.md")
INSTALL_FILES = ("Makefile", "requirements.lock", "pyproject.toml")


@pytest.fixture(scope="module")
def docker():
    return dockerfile_parse.DockerfileParser(path=str(REPO / "Dockerfile"))


def instructions(docker, name):
    return [i["value"] for i in docker.structure if i["instruction"] == name]


def run_commands(docker) -> list[str]:
    return [" ".join(shlex.split(part)) for value in instructions(docker, "RUN") for part in value.split("&&")]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def documented_runs() -> list[tuple[str, list[str], list[str]]]:
    """Every documented `docker run ... nanoseg CMD`: (document, docker options, the command in the image)."""
    found = []
    for doc in DOCS:
        for line in (REPO / doc).read_text().splitlines():
            if "docker run" not in line:
                continue
            words = shlex.split(line[line.index("docker run"):])
            image = words.index("nanoseg")  # the image's name; what follows is the command
            found.append((doc, words[2:image], words[image + 1:]))
    return found


def image_venv(docker) -> str:
    [venv] = re.findall(r"make install VENV=(\S+)", " ".join(run_commands(docker)))
    return venv


def test_slim_python_311_base(docker):
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", docker.baseimage), docker.baseimage


def test_the_image_installs_with_make_install(docker):
    """`make install` (the recipe CI's `make test` runs) into a venv inside the image, first on PATH; the
    build context holds what it needs."""
    venv = image_venv(docker)
    assert venv.startswith("/") and not venv.startswith("/work")  # in the image, not in a mounted checkout
    assert docker.envs["VENV"] == venv and docker.envs["PATH"].startswith(f"{venv}/bin:")
    copied = " ".join(instructions(docker, "COPY")).split()
    assert set(INSTALL_FILES) <= set(copied) and "src" in copied
    assert not any("pip install" in r for r in run_commands(docker))  # no second copy of the recipe
    allowed = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert {*INSTALL_FILES, "README.md", "src"} <= allowed  # the context is only what is copied


def test_runs_as_non_root_after_installing(docker):
    users = instructions(docker, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    order = [(i["instruction"], i["value"]) for i in docker.structure]
    last_user = max(k for k, (name, _) in enumerate(order) if name == "USER")
    last_install = max(k for k, (name, value) in enumerate(order) if name == "RUN" and "make install" in value)
    frozen = max(k for k, (name, value) in enumerate(order) if name == "ENV" and "NANOSEG_FROZEN_VENV=1" in value)
    assert last_user > last_install and frozen > last_install  # installs as root, then the venv is fixed
    user = users[-1].split(":")[0]
    assert any(user in r and ("useradd" in r or "adduser" in r) for r in run_commands(docker))
    home = docker.envs["HOME"]
    assert any(f"install -d -m 1777 {home}" in r for r in run_commands(docker))  # writable for any --user


def test_port_and_healthcheck(docker):
    ports = [p.split("/")[0] for v in instructions(docker, "EXPOSE") for p in v.split()]
    serve_port = re.search(r"^SERVE_PORT \?= (\d+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert ports == [serve_port]  # what `make serve` listens on
    health = instructions(docker, "HEALTHCHECK")
    assert health and "CMD" in health[-1] and f":{serve_port}/ping" in health[-1]
    if "curl" in health[-1]:
        assert any("apt-get install" in r and "curl" in r for r in run_commands(docker))
    assert any("apt-get install" in r and "make" in r.split() for r in run_commands(docker))
    assert instructions(docker, "CMD") or instructions(docker, "ENTRYPOINT")


def test_documented_commands_are_make_targets():
    """Train and serve as documented: `make run` and `make serve` in the checkout mounted at its own path,
    run as its owner, in the Dockerfile, the README and docs/serving.md alike."""
    runs = documented_runs()
    assert {doc for doc, _, _ in runs} == set(DOCS)
    commands = {" ".join(cmd) for _, _, cmd in runs}
    assert {"make run", "make serve SERVE_HOST=0.0.0.0"} <= commands
    for doc, options, cmd in runs:
        assert cmd[0] == "make" and cmd[1] in make_targets(), (doc, cmd)
        flags = list(zip(options, options[1:]))
        assert ("-v", "$PWD:$PWD") in flags and ("-w", "$PWD") in flags, (doc, options)
        assert ("--user", "$(id -u):$(id -g)") in flags, (doc, options)
        if cmd[1] == "run":
            # the dataset at ../shared of the checkout (params.yaml data.source), read-only
            assert any(a == "-v" and b.endswith(":$(dirname $PWD)/shared:ro") for a, b in flags), (doc, options)


def test_docs_publish_the_server_on_loopback_only():
    """Every documented `docker run` publishes the port on the host's 127.0.0.1 (the server has no auth);
    the docs say to put an authenticating reverse proxy in front."""
    for doc in DOCS:
        text = (REPO / doc).read_text()
        publishes = re.findall(r"docker run[^\n]*?(-p\s+\S+)", text)
        assert all(p.split()[1].startswith("127.0.0.1:") for p in publishes), (doc, publishes)
        assert "reverse proxy" in text, doc
    assert re.findall(r"docker run[^\n]*-p\s", (REPO / "docs/serving.md").read_text())


def _make(*args, cwd, env):
    """``make`` as a user's shell runs it: not a sub-make of the ``make test`` that may be running this test
    (which would prefix its messages with ``make[1]:`` and hand it the parent's flags)."""
    env = {k: v for k, v in env.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_image_commands_against_a_stand_in_image(docker, tmp_path):
    """The image's install, then the documented commands in a mounted checkout with newer file dates:
    no reinstall, nothing written into the checkout, the checkout's src/ and the image's venv used; a
    checkout with other pins is told to rebuild the image instead of reinstalling."""
    from nanoseg.cli import build_parser

    build, checkout, venv = tmp_path / "opt-nanoseg", tmp_path / "checkout", tmp_path / "opt-venv"
    for folder in (build, checkout):
        folder.mkdir()
        for name in INSTALL_FILES:
            shutil.copy2(REPO / name, folder / name)
    base = {k: v for k, v in os.environ.items() if k not in ("VENV", "NANOSEG_FROZEN_VENV", "PYTHONPATH", "MAKEFLAGS")}

    # docker build: RUN make install VENV=... (-t: as if its recipe ran; the recipe's last line makes the stamp)
    (venv / "bin").mkdir(parents=True)
    planned = _make("-n", "install", f"VENV={venv}", cwd=build, env=base).stdout.strip().splitlines()
    assert planned[-1].startswith(f"touch {venv}/.installed-")
    assert _make("-t", "install", f"VENV={venv}", cwd=build, env=base).returncode == 0
    assert [p.name for p in venv.iterdir() if p.is_file()] == [planned[-1].split("/")[-1]]

    # docker run -w $PWD: the image's environment after the install, the checkout's files newer
    env = {**base, "VENV": str(venv), "NANOSEG_FROZEN_VENV": docker.envs["NANOSEG_FROZEN_VENV"]}
    for name in INSTALL_FILES:
        os.utime(checkout / name)
    before = sorted(p.name for p in checkout.iterdir())
    assert _make("-n", "install", cwd=checkout, env=env).stdout.strip().startswith("make: Nothing to be done")
    assert _make("-n", "run", cwd=checkout, env=env).stdout.split("\n")[:2] == ["nanoseg data", "dvc repro"]
    serve = _make("-n", "serve", "SERVE_HOST=0.0.0.0", cwd=checkout, env=env).stdout.strip().splitlines()
    assert serve == [f"nanoseg serve --host 0.0.0.0 --port {instructions(docker, 'EXPOSE')[0]}"]
    args = build_parser().parse_args(shlex.split(serve[0])[1:])
    assert (args.host, args.port) == ("0.0.0.0", int(instructions(docker, "EXPOSE")[0]))
    seen = _make("-s", "--eval", "_env: ; @echo \"$$PATH|$$PYTHONPATH\"", "_env", cwd=checkout, env=env).stdout
    path, pythonpath = seen.strip().split("|")
    assert path.startswith(f"{venv}/bin:") and pythonpath == str(checkout / "src")
    assert sorted(p.name for p in checkout.iterdir()) == before  # nothing installed into the checkout

    # other pins in the checkout: a clear message, nothing installed
    with (checkout / "requirements.lock").open("a") as f:
        f.write("# another pin\n")
    refused = _make("install", cwd=checkout, env=env)
    assert refused.returncode != 0 and "rebuild the image (docker build -t nanoseg .)" in refused.stderr
    assert "pip" not in refused.stdout and sorted(p.name for p in checkout.iterdir()) == before
    assert len([p for p in venv.iterdir() if p.is_file()]) == 1
    host = {**env, "NANOSEG_FROZEN_VENV": ""}  # on a host the same change reinstalls (`make install`)
    assert "pip install -q -r requirements.lock" in _make("-n", "install", cwd=checkout, env=host).stdout
