import json
import os

import pytest

from tlxcore.atomic import atomic_write, is_partial, tmp_name, write_json_atomic


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["a.bin"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_temp_name_is_per_process_and_recognisable(tmp_path):
    t = tmp_name(tmp_path / "x.json")
    assert t.name == f"x.json.partial-{os.getpid()}" and is_partial(t) and not is_partial(tmp_path / "x.json")


def test_json_spelling(tmp_path):
    write_json_atomic({"b": 1, "a": [1, 2]}, tmp_path / "c.json", sort_keys=True)
    text = (tmp_path / "c.json").read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"') and json.loads(text) == {"a": [1, 2], "b": 1}


def test_bad_mode():
    with pytest.raises(ValueError, match="'wb' or 'w'"):
        with atomic_write("x", "a"):
            pass
