"""The one atomic-write helper (edge_agent._files), shared by the agent and the mesh."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_agent._files import atomic_path, atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    f = tmp_path / "d" / "state.json"
    atomic_write(f, b"one")
    atomic_write(f, b"two")
    assert f.read_bytes() == b"two"
    assert [p.name for p in f.parent.iterdir()] == ["state.json"]
    assert _mode(f) == 0o644


def test_atomic_write_sets_the_mode_asked(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    atomic_write(f, b"k", mode=0o600)
    assert _mode(f) == 0o600


def test_atomic_write_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "state.json"
    atomic_write(f, b"old")

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(f, b"new")
    assert f.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_path_takes_what_any_writer_wrote(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("by name")  # e.g. torch.onnx.export(..., str(tmp))
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text() == "by name"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_atomic_path_error_leaves_the_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"checked")
    with pytest.raises(ValueError, match="parity"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("parity failed")
    assert target.read_bytes() == b"checked"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
