from __future__ import annotations

import pytest

from mesh import InvalidArgumentsError, Mesh


def _registered() -> object:
    app = Mesh("t")

    @app.function()
    def train(epochs: int, lr: float = 1e-3, tags: list[str] | None = None) -> None: ...

    return app.get("train")


def test_lax_conversion_of_cli_strings() -> None:
    fn = _registered()
    assert fn.bind({"epochs": "3", "lr": "0.5"}) == {"epochs": 3, "lr": 0.5}  # type: ignore[attr-defined]


def test_every_problem_is_named_with_the_signature() -> None:
    fn = _registered()
    with pytest.raises(InvalidArgumentsError) as info:
        fn.bind({"lr": "fast", "epoch": 3})  # type: ignore[attr-defined]
    message = str(info.value)
    assert "missing required argument 'epochs'" in message
    assert "lr='fast' is not a valid float" in message
    assert "unexpected argument(s) 'epoch' (accepted: epochs, lr, tags)" in message
    assert "train(epochs: int, lr: float = 0.001, tags: list[str] | None = None)" in message
    assert len(info.value.problems) == 3


def test_wrong_container_type() -> None:
    fn = _registered()
    with pytest.raises(InvalidArgumentsError, match="tags=5 is not a valid"):
        fn.bind({"epochs": 1, "tags": 5})  # type: ignore[attr-defined]
