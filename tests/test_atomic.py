"""Atomic writes: a destination is either the old file or the complete new one, never half of it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nanoseg.atomic import atomic_path, file_mode, write_bytes, write_json, write_text, write_with


def test_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and target.read_text().endswith("\n")
    write_text(target, "second\n")
    assert target.read_text() == "second\n"
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "summary.json"]
    assert (target.stat().st_mode & 0o777) == file_mode()  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "particles.csv"
    target.write_text("old\n")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with(target, half_then_fail)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["particles.csv"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["particles.csv"]


def test_the_temporary_keeps_the_suffix_for_writers_that_choose_the_format_by_name(tmp_path):
    import tifffile

    seen = []
    with atomic_path(tmp_path / "labels.tif") as tmp:
        seen.append(tmp)
        tifffile.imwrite(tmp, np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".labels.tif.") and seen[0].suffix == ".tif"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), np.arange(12).reshape(3, 4))
    with atomic_path(tmp_path / "probs.npz") as tmp:
        np.savez_compressed(tmp, a=np.ones(3))
    assert np.load(tmp_path / "probs.npz")["a"].sum() == 3 and len(os.listdir(tmp_path)) == 2


def test_copy_file(tmp_path):
    from nanoseg.atomic import copy_file

    (tmp_path / "a.csv").write_text("epoch,loss\n1,0.5\n")
    (tmp_path / "b.csv").write_text("old")
    assert copy_file(tmp_path / "a.csv", tmp_path / "b.csv") == tmp_path / "b.csv"
    assert (tmp_path / "b.csv").read_text() == "epoch,loss\n1,0.5\n" and len(os.listdir(tmp_path)) == 2
