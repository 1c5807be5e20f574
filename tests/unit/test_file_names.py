"""The registry refuses model names that are paths, through the shared file-name check.

(The registry's own name pattern refused these before the check existed, so this
is a guard, not a security test: see tests/security/test_paths.py for those.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.models._registry import InvalidRegistrationError, ModelRegistry


@pytest.mark.parametrize("name", ["../evil", "a\x00b", "x" * 200, "/abs"])
def test_the_registry_refuses_a_path_as_a_model_name(tmp_path: Path, name: str) -> None:
    from mesh.core._settings import MeshSettings
    from tests.support.agent_fixtures import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny.onnx")
    registry = ModelRegistry.open(MeshSettings(data_dir=tmp_path / "data"))
    try:
        with pytest.raises(InvalidRegistrationError) as info:
            registry.register(name, model, code_version="1")
        assert 400 <= info.value.http_status < 500
        assert "invalid model name" in str(info.value)
    finally:
        registry.close()
    assert not (tmp_path / "evil").exists()
