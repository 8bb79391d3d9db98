"""retrieval/atomic.py: readers see old or new content, never half; failures leave the old file and no temp."""
import os

import pytest

from imgrag.retrieval.atomic import atomic_open, atomic_write_bytes, is_temp_name, temp_name


def test_replace_and_temp_rule(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["a.json"]
    assert is_temp_name(temp_name(p).name)
    assert not is_temp_name("a.json") and not is_temp_name(".a.json")


def test_failure_keeps_old_and_removes_temp(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]
