"""tune_counter on a real local Ray cluster: ASHA over lr and width, selected by val_mae."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from mesh import TuneResult

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytest.importorskip("torch")

pytestmark = pytest.mark.ray


def test_tune_counter_selects_by_val_mae_with_asha(ray_backend: RayBackend) -> None:
    from functions.traffic.app import app

    # Tiny trials; the extra keyword arguments override the declared constants.
    tiny = {"train_size": 96, "val_size": 32, "epochs": 3}
    result = ray_backend.submit(app.get("tune_counter"), tiny, run_id="tune-counter").result(400)
    tuned = result.value
    assert isinstance(tuned, TuneResult)
    assert (tuned.metric, tuned.mode) == ("val_mae", "min")
    assert len(tuned.trials) == 4 and not any("error" in t for t in tuned.trials)
    finals = [t["metrics"]["val_mae"] for t in tuned.trials]
    assert tuned.best_value == pytest.approx(min(finals))
    assert tuned.best_config["width"] in (16, 32)
    assert 5e-4 <= tuned.best_config["lr"] <= 5e-3
    assert tuned.best_config["epochs"] == 3
