"""The embedded broker's port: a fallback port is kept across restarts (agents were told it)."""

from __future__ import annotations

from pathlib import Path

from mesh.runtime._broker_port import ports_to_try, remember


def test_a_fallback_port_is_tried_first_on_the_next_start(tmp_path: Path) -> None:
    record = tmp_path / "mqtt" / "broker-port.json"
    assert ports_to_try(37593, record) == [37593]
    remember(record, asked=37593, used=42935)  # 37593 was taken: agents were told 42935
    # Restarted with 37593 free again, it must not move the broker away from its agents.
    assert ports_to_try(37593, record) == [42935, 37593]


def test_a_new_port_asked_for_or_the_same_one_used_changes_nothing(tmp_path: Path) -> None:
    record = tmp_path / "broker-port.json"
    remember(record, asked=1883, used=42935)
    assert ports_to_try(1884, record) == [1884]  # the operator asked for another port
    remember(record, asked=1883, used=1883)
    assert ports_to_try(1883, record) == [1883]
    assert ports_to_try(0, record) == [0]


def test_a_damaged_record_is_ignored(tmp_path: Path) -> None:
    record = tmp_path / "broker-port.json"
    for text in ("", "{", '{"asked": 1883}', '{"asked": 1883, "used": "x"}', "[]",
                 '{"asked": 1883, "used": 99999}'):  # fmt: skip
        record.write_text(text)
        assert ports_to_try(1883, record) == [1883], text
