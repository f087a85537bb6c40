"""``nanoseg batch`` on a real Spark (local[2], pyspark's own JVM): same numbers as ``nanoseg predict``,
error rows with ``nanoseg info``'s message, reruns that skip what is done, Ctrl-C that keeps finished
partitions, S3 prefixes on a real S3 server. Plus the bookkeeping without Spark (inputs, the output folder,
how part rows become the batch's tables)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nanoseg import cli
from nanoseg.errors import NanosegError
from tests.conftest import REPO, write_small_dataset
from tests.synthetic_bam import IMAGES
from tests.tiny_model import champion_store

slow = pytest.mark.slow


def _java_present() -> None:
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.fail("nanoseg batch needs a Java runtime and none is installed: `make java` (or .ci/run, as root) "
                    "installs Debian's default-jre-headless. The batch tests are never skipped.")


@pytest.fixture(scope="module")
def images(tmp_path_factory, bam_dir) -> list[Path]:
    """8 small TIFFs (256 x 320, pixel size as TIFF resolution) cut from the BAM(-layout) images."""
    data = write_small_dataset(bam_dir, tmp_path_factory.mktemp("batch-images"), n=8)
    return sorted((data / IMAGES).glob("*.tif"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tmp MLflow store with a tiny model registered as nanoseg@champion (batch's default model)."""
    _java_present()
    with champion_store(tmp_path_factory.mktemp("batch-store")) as store:
        return store


def _info_message(path: Path, capsys) -> str:
    """The one-line message ``nanoseg info PATH`` prints for a file it cannot read."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["info", str(path)])
    return capsys.readouterr().err.strip().removeprefix("nanoseg: error: ")


def _parts(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "parts").iterdir() if not p.name.startswith("."))


def _part_rows(out: Path, names) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(out / "parts" / n / "images.parquet") for n in names], ignore_index=True)


def _predict_counts(model, paths, out: Path) -> tuple[pd.DataFrame, dict]:
    assert cli.main(["predict", *map(str, paths), "--model", str(model), "--out", str(out)]) == 0
    return pd.read_csv(out / "particles.csv"), json.loads((out / "summary.json").read_text())


@slow
def test_batch_equals_predict_with_error_rows_and_reruns(store, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    src = tmp_path / "in"
    src.mkdir()
    for path in images[:4]:
        shutil.copy(path, src)
    corrupt = src / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)  # a TIFF header, then garbage
    gone = src / "gone.tif"
    gone.symlink_to(tmp_path / "nowhere.tif")  # a file that cannot be read at all
    out = tmp_path / "batch"
    command = ["batch", str(src), "--out", str(out), "--master", "local[2]", "--masks"]  # default model: @champion

    assert cli.main(command) == 1  # two files could not be analysed; the others were
    table = pd.read_parquet(out / "images.parquet")
    particles = pd.read_parquet(out / "particles.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(table["image"]) == sorted([p.name for p in images[:4]] + ["corrupt.tif", "gone.tif"])

    # one error row per bad file, with the message `nanoseg info` gives for it
    errors = table[table["status"] == "error"].set_index("image")
    assert sorted(errors.index) == ["corrupt.tif", "gone.tif"]
    for name in ("corrupt.tif", "gone.tif"):
        assert errors.loc[name, "message"] == _info_message(src / name, capsys)
        assert errors.loc[name, "path"] == str(src / name)
    assert summary["n_failed"] == 2 and {f["image"] for f in summary["failed"]} == {"corrupt.tif", "gone.tif"}

    # the same particles as `nanoseg predict` with the same model, image by image
    csv, predicted = _predict_counts(store["folder"], sorted(src.glob("[!cg]*.tif")), tmp_path / "predict")
    ok = table[table["status"] == "ok"].set_index("image")
    assert len(ok) == 4
    assert ok["n_particles"].to_dict() == csv.groupby("image").size().to_dict()
    assert ok["n_particles"].sum() == len(particles) == summary["n_particles"] > 0
    for name, rows in particles.groupby("image"):
        mine = csv[csv["image"] == name]
        np.testing.assert_allclose(np.sort(rows["ecd_nm"]), np.sort(mine["ecd_nm"]), rtol=1e-6)
        assert set(rows["sha256"]) == {ok.loc[name, "sha256"]}
    assert set(csv.columns) | {"sha256"} == set(particles.columns)
    assert ok["pixel_size_source"].str.startswith("TIFF resolution").all()
    assert ok["median_ecd"].notna().all() and ok["unit"].eq("nm").all()
    # the pooled size distribution of the batch is predict's for the same images
    for key in ("count", "median", "gsd", "median_ci_low", "median_ci_high"):
        assert summary["ecd_distribution"][key] == pytest.approx(predicted["ecd_distribution"][key])
    assert (out / "psd.png").stat().st_size > 0
    assert len(list((out / "masks").glob("*_mask.png"))) == 4

    # the same command again: nothing is analysed, nothing is added, the tables stay
    parts = _parts(out)
    capsys.readouterr()
    assert cli.main(command) == 1
    assert "this run: 0 analysed, 6 already done" in capsys.readouterr().out
    assert _parts(out) == parts
    pd.testing.assert_frame_equal(pd.read_parquet(out / "images.parquet"), table)

    # a new image and a copy of one already done: only the new one is analysed, the copy is a duplicate
    shutil.copy(images[4], src)
    shutil.copy(src / images[0].name, src / "copy_of_first.tif")
    assert cli.main(command) == 1
    new = _part_rows(out, sorted(set(_parts(out)) - set(parts)))
    assert sorted(new.loc[new["status"] == "ok", "image"]) == [images[4].name]
    assert list(new.loc[new["status"] == "duplicate", "image"]) == ["copy_of_first.tif"]
    table = pd.read_parquet(out / "images.parquet")
    assert (table["status"] == "ok").sum() == 5 and len(table) == 7  # the copy is counted once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["duplicates"] == [{"path": str(src / "copy_of_first.tif"),
                                      "same_content_as": str(src / images[0].name)}]


@slow
def test_ctrl_c_keeps_finished_partitions_and_a_rerun_does_the_rest(store, images, tmp_path):
    out, log = tmp_path / "batch", tmp_path / "batch.log"
    src = images[0].parent
    cmd = [sys.executable, "-m", "nanoseg", "batch", str(src), "--out", str(out), "--model", str(store["folder"]),
           "--master", "local[2]", "--partitions", str(len(images))]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not ((out / "parts").is_dir() and _parts(out)):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no partition committed in 400 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
        assert proc.wait(180) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = _parts(out)
    done = _part_rows(out, first)
    assert 1 <= len(done) < len(images), f"{len(done)} of {len(images)} finished before Ctrl-C"
    assert set(done["status"]) == {"ok"}
    # what was finished is in the tables already (merged on the way out)
    table = pd.read_parquet(out / "images.parquet")
    assert sorted(table["image"]) == sorted(done["image"])
    assert "interrupted" in log.read_text()
    manifest = json.loads((out / ".nanoseg-batch.json").read_text())
    assert manifest["runs"][-1]["status"] == "interrupted"

    # the rerun analyses only the rest: every image once over both runs
    assert cli.main(cmd[3:]) == 0
    rest = _part_rows(out, sorted(set(_parts(out)) - set(first)))
    assert sorted(rest["image"]) == sorted(set(p.name for p in images) - set(done["image"]))
    table = pd.read_parquet(out / "images.parquet")
    assert sorted(table["image"]) == sorted(p.name for p in images) and set(table["status"]) == {"ok"}


@slow
def test_s3_prefix(store, images, tmp_path, s3_server, s3_client, s3_bucket, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for path in images[:2]:
        s3_client.upload_file(str(path), s3_bucket, f"run7/{path.name}")
    s3_client.put_object(Bucket=s3_bucket, Key="run7/broken.png", Body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    s3_client.put_object(Bucket=s3_bucket, Key="run7/notes.txt", Body=b"not an image: left out of the prefix")
    out = tmp_path / "batch"
    command = ["batch", f"s3://{s3_bucket}/run7/", "--out", str(out), "--model", str(store["folder"]),
               "--master", "local[1]"]
    assert cli.main(command) == 1
    table = pd.read_parquet(out / "images.parquet").set_index("image")
    assert sorted(table.index) == sorted(["broken.png", *(p.name for p in images[:2])])
    assert table.loc["broken.png", "status"] == "error"
    assert table.loc["broken.png", "message"].startswith(f"s3://{s3_bucket}/run7/broken.png: ")
    csv, _ = _predict_counts(store["folder"], images[:2], tmp_path / "predict")
    ok = table[table["status"] == "ok"]
    assert ok["n_particles"].to_dict() == csv.groupby("image").size().to_dict()
    assert set(ok["path"]) == {f"s3://{s3_bucket}/run7/{p.name}" for p in images[:2]}
    parts = _parts(out)
    assert cli.main(command) == 1  # objects are read again to know their content, but nothing is analysed
    assert _parts(out) == parts


# ----------------------------------------------------------------------------- without Spark


def test_inputs_folders_globs_files_and_their_errors(tmp_path):
    from nanoseg.pipeline.batch import list_inputs

    (tmp_path / "a").mkdir()
    for name in ("1.tif", "2.PNG", "notes.txt", "3.jpeg"):
        (tmp_path / "a" / name).write_bytes(b"x")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "4.tif").write_bytes(b"x")
    out = tmp_path / "a" / "results"
    out.mkdir()
    (out / "x_mask.png").write_bytes(b"x")
    names = lambda srcs: [Path(s.display).name for s in srcs]  # noqa: E731
    assert names(list_inputs([tmp_path / "a"], out)) == ["1.tif", "2.PNG", "3.jpeg"]
    assert names(list_inputs([tmp_path / "a"], out, recursive=True)) == ["1.tif", "2.PNG", "3.jpeg", "4.tif"]
    assert names(list_inputs([str(tmp_path / "a" / "*.t*")])) == ["1.tif", "notes.txt"]  # a glob takes what it says
    both = list_inputs([tmp_path / "a" / "1.tif", tmp_path / "a"], out)
    assert names(both) == ["1.tif", "2.PNG", "3.jpeg"]  # each file once
    assert all(s.uri == f"file:{s.display}" and s.size == 1 for s in both)
    with pytest.raises(NanosegError, match="no such file or folder"):
        list_inputs([tmp_path / "missing"])
    with pytest.raises(NanosegError, match="matches no file"):
        list_inputs([str(tmp_path / "*.nef")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanosegError, match=r"no image files .* \(--recursive"):
        list_inputs([tmp_path / "empty"])


def test_out_folder_refusals(tmp_path):
    from nanoseg.pipeline.batch import MANIFEST, check_out

    assert check_out(tmp_path / "new", "f1", "m", False) is None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_bytes(b"x")
    with pytest.raises(NanosegError, match="not a folder written by nanoseg batch"):
        check_out(foreign, "f1", "m", True)
    mine = tmp_path / "mine"
    (mine / "parts").mkdir(parents=True)
    (mine / MANIFEST).write_text(json.dumps({"written_by": "nanoseg batch", "model": "m1",
                                             "model_fingerprint": "f1", "runs": []}))
    assert check_out(mine, "f1", "m1", False)["model"] == "m1"  # the same model: go on
    with pytest.raises(NanosegError, match="results of another model .* --overwrite"):
        check_out(mine, "f2", "m2", False)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(NanosegError, match="did not write .*notes.txt"):
        check_out(mine, "f2", "m2", True)
    (mine / "notes.txt").unlink()
    assert check_out(mine, "f2", "m2", True) is None and not any(mine.iterdir())  # started again


def test_rows_of_all_parts_become_one_row_per_file():
    from nanoseg.pipeline.batch import _choose

    def row(order, path, sha, status="ok", n=1):
        return {"image": path.rsplit("/", 1)[-1], "path": path, "sha256": sha, "status": status,
                "message": None if status != "error" else f"{path}: bad", "n_particles": n,
                "_part": f"p{order}", "_order": order}

    images = pd.DataFrame([
        row(0, "/d/a.tif", "A"), row(0, "/d/b.tif", "B", n=5),
        row(1, "/d/b.tif", "B2", n=7),              # b.tif changed since: its new content counts
        row(1, "/d/c.tif", None, "error"),          # unreadable
        row(2, "/d/a_copy.tif", "A", "duplicate"),  # a copy of a.tif, found in a later run
        row(2, "/d/e.tif", "E"), row(2, "/d/e2.tif", "E"),  # two copies analysed in the same run
        row(3, "/d/x.tif", None, "error"), row(4, "/d/x.tif", "X", "error"),  # readable now, still bad
    ])
    rows, duplicates = _choose(images)
    assert list(rows["path"]) == ["/d/a.tif", "/d/b.tif", "/d/c.tif", "/d/e.tif", "/d/x.tif"]
    assert rows.set_index("path").loc["/d/b.tif", "n_particles"] == 7
    assert rows.set_index("path").loc["/d/x.tif", "sha256"] == "X"
    assert sorted(map(tuple, (d.values() for d in duplicates))) == [("/d/a_copy.tif", "/d/a.tif"),
                                                                  ("/d/e2.tif", "/d/e.tif")]


def test_bad_options_are_refused_before_spark_starts(tmp_path):
    from types import SimpleNamespace

    from nanoseg.cli.batch import batch_command
    from nanoseg.pipeline.batch import local_slots, parse_conf

    args = SimpleNamespace(inputs=[str(tmp_path)], out=str(tmp_path / "o"), model=None, master=None,
                           partitions=0, conf=None)
    with pytest.raises(NanosegError, match="--partitions 0"):
        batch_command(args)
    with pytest.raises(NanosegError, match="KEY=VALUE"):
        parse_conf(["spark.executor.memory"])
    args.partitions, args.out = None, "s3://bucket/out"
    with pytest.raises(NanosegError, match="file system the driver and the executors share"):
        batch_command(args)
    assert local_slots("local[3]") == 3 and local_slots("local[*]") == os.cpu_count()
    assert local_slots("spark://host:7077") is None and local_slots("yarn") is None


def test_without_java_a_clear_message_and_nothing_written(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from nanoseg.cli.batch import batch_command
    from tests.tiny_model import META

    model = tmp_path / "model"
    model.mkdir()
    (model / "nanoseg.json").write_text(json.dumps(META))
    (model / "model.keras").write_bytes(b"weights")
    (tmp_path / "a.tif").write_bytes(b"II*\x00")
    monkeypatch.setenv("PATH", str(tmp_path / "no-java-here"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    args = SimpleNamespace(inputs=[str(tmp_path / "a.tif")], out=str(tmp_path / "out"), model=str(model),
                           master="local[1]", partitions=None, conf=None)
    with pytest.raises(NanosegError, match=r"needs a Java runtime .* default-jre-headless"):
        batch_command(args)
    assert not (tmp_path / "out").exists()
