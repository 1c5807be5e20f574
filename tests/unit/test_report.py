"""mesh.report(): handed to the reporter a backend installs for a trial, a no-op elsewhere."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import mesh
from mesh.sdk import trial_reporter


def test_report_outside_a_trial_does_nothing() -> None:
    mesh.report(loss=1.0)  # no reporter: nothing to fail


def test_report_goes_to_the_trial_reporter_and_only_inside_its_context() -> None:
    seen: list[Mapping[str, float]] = []
    with trial_reporter(seen.append):
        mesh.report(loss=0.5, acc=0.9)
        mesh.report(loss=0.25)
    mesh.report(loss=0.0)
    assert seen == [{"loss": 0.5, "acc": 0.9}, {"loss": 0.25}]


def test_trials_on_two_threads_report_to_their_own_reporter() -> None:
    seen: dict[str, list[Mapping[str, float]]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def trial(name: str, value: float) -> None:
        with trial_reporter(seen[name].append):
            barrier.wait(timeout=5)  # both contexts open at once
            mesh.report(x=value)

    threads = [threading.Thread(target=trial, args=args) for args in (("a", 1.0), ("b", 2.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert seen == {"a": [{"x": 1.0}], "b": [{"x": 2.0}]}
