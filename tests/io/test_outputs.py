"""Which output folders nanoseg may replace and which answers `nanoseg request --out` may overwrite."""

from __future__ import annotations

import json

import pytest

from nanoseg.errors import NanosegError
from nanoseg.io.outputs import MARKER, answer_files, check_answer_files, check_replaceable, replace_folder, write_marker


def _nanoseg_output(folder):
    folder.mkdir()
    (folder / "a_mask.png").write_bytes(b"png")
    (folder / "summary.json").write_text("{}")
    write_marker(folder, "nanoseg predict", "0.test")
    return folder


def test_marker_lists_the_files(tmp_path):
    out = _nanoseg_output(tmp_path / "out")
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "nanoseg predict" and marker["files"] == ["a_mask.png", "summary.json"]


@pytest.mark.parametrize(("setup", "overwrite", "message"), [
    (lambda out: None, False, None),  # new folder
    (lambda out: out.mkdir(), False, "already exists; pass --overwrite"),
    (lambda out: out.mkdir(), True, None),  # empty: nothing to lose
    (lambda out: _nanoseg_output(out), True, None),
    (lambda out: out.write_text("x"), True, "exists and is not a folder"),
    (lambda out: (out.mkdir(), (out / "keep.txt").write_text("x")), True, "not a folder written by nanoseg predict"),
    (lambda out: (_nanoseg_output(out), (out / "keep.txt").write_text("x")), True, r"did not write \(keep.txt\)"),
    (lambda out: (_nanoseg_output(out), (out / MARKER).write_text("garbage")), True, "no valid .nanoseg-output"),
])
def test_check_replaceable(tmp_path, setup, overwrite, message):
    out = tmp_path / "out"
    setup(out)
    if message is None:
        check_replaceable(out, [], overwrite)
    else:
        with pytest.raises(NanosegError, match=message):
            check_replaceable(out, [], overwrite)


def test_inputs_symlinks_and_the_working_folder_are_never_replaced(tmp_path, monkeypatch):
    out = _nanoseg_output(tmp_path / "out")
    with pytest.raises(NanosegError, match="holds the input image"):
        check_replaceable(out, [out / "a_mask.png"], True)
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(NanosegError, match="symbolic link"):
        check_replaceable(tmp_path / "link", [], True)
    monkeypatch.chdir(out)
    with pytest.raises(NanosegError, match="working folder"):
        check_replaceable(out, [], True)


def test_replace_folder(tmp_path):
    out = _nanoseg_output(tmp_path / "out")
    new = tmp_path / ".out.tmp-1"
    new.mkdir()
    (new / "b.csv").write_text("new")
    replace_folder(new, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["b.csv"]


def test_answer_files_refuse_collisions_and_existing_answers(tmp_path):
    assert answer_files(["x/a.tif"]) == ["a_mask.png", "a_labels.tif", "particles.csv"]
    with pytest.raises(NanosegError, match=r"several images are named \['a'\]"):
        check_answer_files(tmp_path / "out", ["one/a.tif", "two/a.png"], overwrite=True)
    check_answer_files(tmp_path / "out", ["a.tif", "b.tif"])  # a new folder
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b_labels.tif").write_bytes(b"old")
    with pytest.raises(NanosegError, match=r"out: already holds b_labels.tif; pass --overwrite"):
        check_answer_files(tmp_path / "out", ["a.tif", "b.tif"])
    check_answer_files(tmp_path / "out", ["a.tif", "b.tif"], overwrite=True)
