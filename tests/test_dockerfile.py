"""The Dockerfile (no Docker engine here): parsed, and its install kept identical to `make install`."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import REPO

dockerfile_parse = pytest.importorskip("dockerfile_parse")


@pytest.fixture(scope="module")
def docker():
    return dockerfile_parse.DockerfileParser(path=str(REPO / "Dockerfile"))


def instructions(docker, name):
    return [i["value"] for i in docker.structure if i["instruction"] == name]


def make_install_commands() -> list[str]:
    """The pip commands of the Makefile's install recipe, with `$(BIN)/python` as plain `python`."""
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^\$\(VENV\)/\.installed:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    cmds = [line.strip().replace("$(BIN)/python", "python") for line in recipe.splitlines() if "pip install" in line]
    assert any("-r requirements.lock" in c for c in cmds) and any("--no-deps -e ." in c for c in cmds)
    return [" ".join(shlex.split(c)) for c in cmds]


def run_commands(docker) -> list[str]:
    return [" ".join(shlex.split(part)) for value in instructions(docker, "RUN") for part in value.split("&&")]


def test_slim_python_311_base(docker):
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", docker.baseimage), docker.baseimage


def test_same_pinned_install_as_make_install(docker):
    runs = run_commands(docker)
    for cmd in make_install_commands():
        assert cmd in runs, f"Dockerfile lacks `{cmd}` (the Makefile's install step)"
    copied = " ".join(instructions(docker, "COPY"))
    assert "requirements.lock" in copied and "pyproject.toml" in copied and "src" in copied


def test_runs_as_non_root_after_installing(docker):
    users = instructions(docker, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    order = [(i["instruction"], i["value"]) for i in docker.structure]
    last_user = max(k for k, (name, _) in enumerate(order) if name == "USER")
    last_install = max(k for k, (name, value) in enumerate(order) if name == "RUN" and "pip install" in value)
    assert last_user > last_install  # installs as root, runs as the user
    user = users[-1].split(":")[0]
    assert any(user in r and ("useradd" in r or "adduser" in r) for r in run_commands(docker))


def test_volumes_port_and_healthcheck(docker):
    volumes = " ".join(instructions(docker, "VOLUME"))
    assert "/work/nanoseg" in volumes  # the project (params, data, mlruns, models) is mounted
    ports = [p.split("/")[0] for v in instructions(docker, "EXPOSE") for p in v.split()]
    assert ports
    health = instructions(docker, "HEALTHCHECK")
    assert health and "CMD" in health[-1]
    assert any(f":{p}/ping" in health[-1] or f":{p}/health" in health[-1] for p in ports)
    if "curl" in health[-1]:
        assert any("apt-get install" in r and "curl" in r for r in run_commands(docker))
    assert instructions(docker, "CMD") or instructions(docker, "ENTRYPOINT")


def test_serve_command_in_the_image_parses(docker):
    """The serve line the Dockerfile documents is a valid `nanoseg serve` call on the exposed port."""
    from nanoseg.cli import build_parser

    port = instructions(docker, "EXPOSE")[0].split()[0].split("/")[0]
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", port])
    assert args.port == int(port) and args.host == "0.0.0.0"
    assert f"nanoseg serve --host 0.0.0.0 --port {port}" in (REPO / "Dockerfile").read_text()


def test_docs_publish_the_server_on_loopback_only():
    """Every documented `docker run` publishes the port on the host's 127.0.0.1 (the server has no auth);
    the docs say to put an authenticating reverse proxy in front."""
    for doc in ("Dockerfile", "README.md", "docs/serving.md"):
        text = (REPO / doc).read_text()
        publishes = re.findall(r"docker run[^\n]*?(-p\s+\S+)", text)
        assert all(p.split()[1].startswith("127.0.0.1:") for p in publishes), (doc, publishes)
        assert "reverse proxy" in text, doc
    assert re.findall(r"docker run[^\n]*-p\s", (REPO / "docs/serving.md").read_text())
