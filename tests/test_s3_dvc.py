"""DVC with an S3 remote on a real S3 server (SeaweedFS, see tests/s3server.py).

A throwaway git+DVC repo in tmp_path: `dvc add` a data folder (with a cropped
copy of a BAM micrograph) and `dvc repro` a one-stage pipeline, then push to the
S3 remote (endpoint and keys only in .dvc/config.local), pull into a fresh
clone and compare bytes. A push while the server is down fails with a clear
error, and re-running it after the restart completes.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nanoseg import processes

BAM = Path(os.environ.get("NANOSEG_BAM_DIR",
                          Path(__file__).resolve().parents[2] / "shared/datasets/bam-tio2"))
BAM_IMAGE = BAM / "Electron Microscopy Images" / "SEM" / "1908248.tif"
DVC = processes.tool("dvc") if Path(processes.tool("dvc")).is_file() else shutil.which("dvc")

STATS = """\
import hashlib, pathlib
out = pathlib.Path("out"); out.mkdir(exist_ok=True)
lines = [f"{p.as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}"
         for p in sorted(pathlib.Path("data").rglob("*")) if p.is_file()]
(out / "sums.txt").write_text("\\n".join(lines) + "\\n")
(out / "big.bin").write_bytes(hashlib.sha256(b"seed").digest() * 4096)
"""
DVC_YAML = f"""\
stages:
  sums:
    cmd: {sys.executable} stats.py
    deps: [data, stats.py]
    outs: [out]
"""

pytestmark = pytest.mark.skipif(DVC is None, reason="dvc executable not found")


def _run(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=processes.child_env(base=env), capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _configure_remote(repo, server, env):
    for opt, value in [("endpointurl", server.endpoint_url), ("access_key_id", server.access_key),
                       ("secret_access_key", server.secret_key)]:
        _run([DVC, "remote", "modify", "--local", "store", opt, value], repo, env)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for sub in ("data", "out") for p in sorted((root / sub).rglob("*")) if p.is_file()}


@pytest.fixture
def dvc_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    env.update(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    return env  # no AWS_* variables: the credentials come from .dvc/config.local only


def _make_repo(repo, env):
    repo.mkdir()
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run([DVC, "init", "-q"], repo, env)
    data = repo / "data"
    (data / "tables").mkdir(parents=True)
    (data / "notes.txt").write_text("TiO2 SEM crops for the S3 remote test\n")
    (data / "tables" / "sizes.csv").write_text("id,ecd_nm\n1,41.2\n2,57.9\n")
    if BAM_IMAGE.is_file():
        crop = tifffile.imread(BAM_IMAGE)[:96, :128]
    else:  # the dataset is optional here: any small image exercises the same path
        crop = np.random.default_rng(0).integers(0, 255, (96, 128), dtype=np.uint8)
    tifffile.imwrite(data / "sem_crop.tif", np.ascontiguousarray(crop))
    (repo / "stats.py").write_text(STATS)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    _run([DVC, "add", "-q", "data"], repo, env)
    _run([DVC, "repro", "-q"], repo, env)
    assert (repo / "out" / "sums.txt").read_text().count("data/") == 3


def test_dvc_push_pull_roundtrip_via_s3(tmp_path, weed_factory, dvc_env):
    server = weed_factory()
    server.client().create_bucket(Bucket="dvc")
    repo = tmp_path / "repo"
    _make_repo(repo, dvc_env)
    _run([DVC, "remote", "add", "-d", "store", "s3://dvc/store"], repo, dvc_env)
    _configure_remote(repo, server, dvc_env)
    _run(["git", "add", "-A"], repo, dvc_env)
    _run(["git", "commit", "-q", "-m", "data and stage"], repo, dvc_env)

    # Nothing secret in git: endpoint and keys live in the git-ignored config.local.
    tracked = _run(["git", "ls-files"], repo, dvc_env).stdout.split()
    assert ".dvc/config" in tracked and ".dvc/config.local" not in tracked
    assert "data/notes.txt" not in tracked and "data.dvc" in tracked
    for name in tracked:
        text = (repo / name).read_bytes()
        assert server.secret_key.encode() not in text and server.access_key.encode() not in text

    server.kill()  # the server goes away: the push fails and says why
    failed = _run([DVC, "push"], repo, dvc_env, check=False)
    assert failed.returncode != 0
    assert f"Could not connect to the endpoint URL: \"{server.endpoint_url}" in failed.stderr
    server.start()
    pushed = _run([DVC, "push"], repo, dvc_env)  # the re-run completes
    assert "pushed" in pushed.stdout
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket="dvc")["Contents"]]
    assert len(keys) >= 7 and all(k.startswith("store/files/md5/") for k in keys)

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, dvc_env)
    assert not (clone / "data").exists() and not (clone / ".dvc" / "config.local").exists()
    _configure_remote(clone, server, dvc_env)
    _run([DVC, "pull"], clone, dvc_env)
    assert _files(clone) == _files(repo)
    assert "up to date" in _run([DVC, "status"], clone, dvc_env).stdout.lower()
