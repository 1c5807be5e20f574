from __future__ import annotations

import mesh


def test_all_is_unique_and_importable() -> None:
    # The order itself is kept by ruff (RUF022, isort-style).
    assert len(set(mesh.__all__)) == len(mesh.__all__)
    for name in mesh.__all__:
        assert hasattr(mesh, name), name


def test_public_names_are_defined_in_private_modules() -> None:
    for name in mesh.__all__:
        value = getattr(mesh, name)
        module = getattr(value, "__module__", "mesh")
        assert module.startswith("mesh"), (name, module)
