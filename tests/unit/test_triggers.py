"""Triggers: the policies on a fake clock, the engine on the fake backend, deploy checks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mesh import Mesh, SpecError
from mesh.cli import app as cli
from mesh.compute._runner import Runner
from mesh.compute._runs import RunRecord, RunStatus, SQLiteStore
from mesh.compute._scheduler import TriggerEngine
from mesh.compute._triggers import CronTimes, Debounce, admit, schedule_decision
from mesh.scenario._decls import TriggerDecl
from mesh.scenario._live_triggers import LiveTriggers, is_start_trigger
from mesh.sdk._triggers import check_triggers
from tests.support.docs import blocks_for

from .fakes import FakeBackend

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # a Thursday, 00:00 UTC


class FakeClock:
    def __init__(self, at: float = T0) -> None:
        self.at = at

    def now(self) -> float:
        return self.at


# -- policies -----------------------------------------------------------------------


def test_cron_times_are_utc_and_strictly_after() -> None:
    times = CronTimes("*/15 * * * *")
    assert times.next_after(T0) == T0 + 900
    assert times.next_after(T0 + 1) == T0 + 900
    assert CronTimes("@hourly").next_after(T0) == T0 + 3600


def test_a_firing_on_time_fires_once_even_when_the_look_is_late() -> None:
    times = CronTimes("* * * * *")
    # Looked at 150 s after the cursor: firings at 60 and 120 s are within 60 s grace?
    # 60 s is 90 s old (missed), 120 s is 30 s old (on time): one run, for 120 s.
    d = schedule_decision(times, cursor=T0, now=T0 + 150, grace_s=60, missed="skip")
    assert (d.fire_at, d.missed, d.cursor) == (T0 + 120, 1, T0 + 120)
    again = schedule_decision(times, cursor=d.cursor, now=T0 + 150, grace_s=60, missed="skip")
    assert again.fire_at is None and again.missed == 0


def test_missed_firings_are_skipped_or_caught_up_once() -> None:
    times = CronTimes("0 * * * *")
    # Down from 00:00 to 05:30: firings at 01..05 are all later than grace.
    now = T0 + 5.5 * 3600
    skip = schedule_decision(times, cursor=T0, now=now, grace_s=60, missed="skip")
    assert (skip.fire_at, skip.missed, skip.cursor) == (None, 5, T0 + 5 * 3600)
    catch = schedule_decision(times, cursor=T0, now=now, grace_s=60, missed="catch_up_once")
    assert (catch.fire_at, catch.missed) == (T0 + 5 * 3600, 5)
    # And the next look fires nothing until 06:00.
    after = schedule_decision(times, cursor=catch.cursor, now=now + 60, grace_s=60, missed="skip")
    assert after.fire_at is None


def test_concurrency_policies_are_cronjobs() -> None:
    assert [admit(p, 0) for p in ("forbid", "allow", "replace")] == ["start"] * 3
    assert [admit(p, 2) for p in ("forbid", "allow", "replace")] == ["skip", "start", "replace"]


def test_a_burst_fires_once_after_it_goes_quiet_and_a_stream_is_not_starved() -> None:
    d = Debounce(quiet_s=1.0)
    for i in range(5):
        d.message(T0 + 0.2 * i, i)
    assert d.due(T0 + 1.5) is None
    assert d.due(T0 + 1.8) == 4
    assert d.due(T0 + 10) is None  # once
    for i in range(100):  # a message every 0.5 s never pauses for 1 s
        d.message(T0 + 20 + 0.5 * i, i)
        if d.due(T0 + 20 + 0.5 * i) is not None:
            assert i >= 20  # after max_wait_s (10 quiet periods), not before
            break
    else:
        pytest.fail("a stream without pauses never fired")


# -- declarations and deploy checks ---------------------------------------------------


def _app() -> Mesh:
    app = Mesh("t")
    gate = threading.Event()
    gate.set()
    app.gate = gate  # type: ignore[attr-defined]

    @app.trigger(schedule="*/5 * * * *", missed="catch_up_once")
    @app.function()
    def tick() -> str:
        gate.wait(30)
        return "ticked"

    @app.trigger(topic="site/+/counts", debounce_s=2.0)
    @app.function()
    def on_counts(event: dict[str, Any]) -> dict[str, Any]:
        return event

    @app.function()
    def refit(upstream: Any, scale: int = 1) -> Any:
        return {"refit_of": upstream, "scale": scale}

    @app.function()
    def alarm(upstream: str) -> str:
        return upstream

    @app.function()
    def boom() -> None:
        raise ValueError("boom")

    app.add_trigger("refit", after="tick", args={"scale": 2})
    app.add_trigger("alarm", after="boom", on="failure")
    return app


def test_options_are_checked_at_declaration() -> None:
    app = Mesh("t")

    @app.function()
    def f() -> None: ...

    with pytest.raises(SpecError, match="schedule: invalid cron schedule '61 \\* \\* \\* \\*'"):
        app.add_trigger("f", schedule="61 * * * *")
    with pytest.raises(SpecError, match="expected exactly one of schedule="):
        app.add_trigger("f", schedule="@hourly", topic="a/b")
    with pytest.raises(SpecError, match="concurrency"):
        app.add_trigger("f", schedule="@hourly", concurrency="sometimes")
    with pytest.raises(SpecError, match="above a registered function"):

        @app.trigger(schedule="@daily")
        def loose() -> None: ...

    app.add_trigger("f", schedule="@daily")
    with pytest.raises(SpecError, match="declared twice"):
        app.add_trigger("f", schedule="@hourly")


def test_deploy_refuses_a_missing_function_a_missing_parameter_and_a_cycle() -> None:
    app = _app()
    check_triggers(app.triggers.values(), app.functions, source="f.py")  # the good ones pass
    bad = Mesh("b")

    @bad.function()
    def refit(x: int) -> None: ...

    bad.add_trigger("refti", schedule="@daily")
    with pytest.raises(SpecError) as exc:
        check_triggers(bad.triggers.values(), bad.functions, source="f.py")
    assert str(exc.value) == (
        "f.py: trigger 'refti-schedule': function: expected a function of this file (refit), "
        "got 'refti'; did you mean 'refit'?"
    )
    no_param = Mesh("p")
    no_param.add_function(refit)
    no_param.add_trigger("refit", topic="a/#")
    with pytest.raises(SpecError, match="pass_as: expected a parameter of refit\\(x\\)"):
        check_triggers(no_param.triggers.values(), no_param.functions, source="f.py")
    loop = Mesh("l")

    def a(upstream: Any) -> None: ...

    def b(upstream: Any) -> None: ...

    loop.add_function(a)
    loop.add_function(b)
    loop.add_trigger("a", after="b")
    loop.add_trigger("b", after="a")
    with pytest.raises(SpecError, match="without a cycle, got a -> b -> a"):
        check_triggers(loop.triggers.values(), loop.functions, source="f.py")


# -- the engine -------------------------------------------------------------------------


def _engine(app: Mesh, clock: FakeClock) -> tuple[TriggerEngine, SQLiteStore]:
    store = SQLiteStore(":memory:")
    runner = Runner([app], backend=FakeBackend(), store=store)
    engine = TriggerEngine(runner, clock=clock, history=store)
    engine.set_triggers(app.triggers.values())
    return engine, store


def _step_until(engine: TriggerEngine, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30  # the fake backend's threads finish within ms
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        engine.step()
        time.sleep(0.005)


def _runs(store: SQLiteStore, function: str) -> list[RunRecord]:
    return store.list_runs(function=function)


def test_a_schedule_fires_on_time_and_its_run_names_the_trigger() -> None:
    clock = FakeClock(T0 + 10)
    engine, store = _engine(_app(), clock)
    assert engine.next_firing("tick-schedule") == T0 + 300
    assert engine.step() == []
    clock.at = T0 + 301
    [firing] = [f for f in engine.step() if f.trigger == "tick-schedule"]
    assert firing.run_id is not None
    [run] = _runs(store, "tick")
    assert run.trigger == "tick-schedule"
    assert store.list_runs(trigger="tick-schedule")[0].id == run.id
    assert engine.next_firing("tick-schedule") == T0 + 600


def test_forbid_skips_a_firing_while_the_last_run_runs_and_replace_cancels_it() -> None:
    app = _app()
    app.gate.clear()  # type: ignore[attr-defined]
    clock = FakeClock(T0)
    engine, store = _engine(app, clock)
    clock.at = T0 + 300
    engine.step()
    clock.at = T0 + 600
    [skipped] = [f for f in engine.step() if f.trigger == "tick-schedule"]
    assert skipped.skipped == "a run still running"
    assert len(_runs(store, "tick")) == 1
    assert engine.counts("tick-schedule") == {"fired": 1, "missed": 0, "skipped": 1}
    # The same trigger with replace: the running one is cancelled, a new one starts.
    replace = Mesh("r")
    replace.add_function(app.functions["tick"].fn)
    replace.add_trigger("tick", schedule="*/5 * * * *", concurrency="replace")
    engine.set_triggers(
        replace.triggers.values(), Runner([replace], backend=FakeBackend(), store=store)
    )
    clock.at = T0 + 900
    [started] = [f for f in engine.step() if f.trigger == "tick-schedule"]
    assert started.run_id is not None
    _step_until(engine, lambda: _runs(store, "tick")[-1].status is RunStatus.CANCELLED)
    app.gate.set()  # type: ignore[attr-defined]
    _step_until(engine, lambda: _runs(store, "tick")[0].status is RunStatus.SUCCEEDED)
    assert _runs(store, "tick")[0].id == started.run_id


def _fired_at_five_past_midnight() -> SQLiteStore:
    store = SQLiteStore(":memory:")
    last = RunRecord(
        "r1",
        "tick",
        "t",
        "function",
        "",
        "{}",
        "cloud",
        RunStatus.RUNNING,
        T0 + 300,
        trigger="tick-schedule",
    )
    store.start_run(last)
    store.finish_run("r1", status=RunStatus.SUCCEEDED, duration_s=1.0)
    return store


def test_a_restart_catches_up_once_from_the_last_recorded_firing() -> None:
    store = _fired_at_five_past_midnight()
    # A new engine (a restarted control plane) an hour later: 11 firings missed.
    clock = FakeClock(T0 + 3600 + 200)
    engine = TriggerEngine(
        Runner([_app()], backend=FakeBackend(), store=store), clock=clock, history=store
    )
    engine.set_triggers(_app().triggers.values())
    fired = [f for f in engine.step() if f.trigger == "tick-schedule"]
    assert len(fired) == 1 and fired[0].run_id is not None
    assert engine.counts("tick-schedule")["missed"] == 11


def test_a_restart_with_missed_skip_starts_nothing() -> None:
    store = _fired_at_five_past_midnight()
    skipping = Mesh("s")
    skipping.add_function(_app().functions["tick"].fn)
    skipping.add_trigger("tick", schedule="*/5 * * * *", name="tick-schedule")
    clock = FakeClock(T0 + 3600 + 200)
    engine = TriggerEngine(
        Runner([skipping], backend=FakeBackend(), store=store), clock=clock, history=store
    )
    engine.set_triggers(skipping.triggers.values())
    assert engine.step() == []
    assert engine.counts("tick-schedule")["missed"] == 11
    assert [r.id for r in store.list_runs()] == ["r1"]


def test_a_burst_of_messages_fires_one_run_with_the_last_message() -> None:
    clock = FakeClock(T0)
    engine, store = _engine(_app(), clock)
    assert engine.topics() == {"site/+/counts"}
    for i in range(3):
        engine.message(f"site/j{i}/counts", b'{"count": %d}' % i)
    engine.message("site/j9/other", b"{}")
    assert engine.step() == []
    clock.at = T0 + 2.5
    [firing] = engine.step()
    assert firing.trigger == "on_counts-topic"
    _step_until(engine, lambda: _runs(store, "on_counts")[0].status.finished)
    [run] = _runs(store, "on_counts")
    assert run.result_ref == '{"payload":{"count":2},"topic":"site/j2/counts"}'


def test_a_chain_passes_the_upstream_value_and_failure_chains_fire_on_errors() -> None:
    clock = FakeClock(T0)
    engine, store = _engine(_app(), clock)
    clock.at = T0 + 300
    engine.step()
    _step_until(
        engine, lambda: bool(_runs(store, "refit")) and _runs(store, "refit")[0].status.finished
    )
    [refit] = _runs(store, "refit")
    assert refit.trigger == "refit-after"
    assert refit.result_ref == '{"refit_of":"ticked","scale":2}'
    assert not _runs(store, "alarm")


def test_a_chain_fires_on_a_run_recorded_by_another_process() -> None:
    clock = FakeClock(time.time())
    app = _app()
    engine, store = _engine(app, clock)
    # `mesh invoke boom` in another process: the same store, another runner.
    other = Runner([app], backend=FakeBackend(), store=store)
    with pytest.raises(Exception, match="boom"):
        other.invoke("boom")
    _step_until(
        engine, lambda: bool(_runs(store, "alarm")) and _runs(store, "alarm")[0].status.finished
    )
    [alarm] = _runs(store, "alarm")
    assert "ValueError" in (alarm.result_ref or "") and alarm.trigger == "alarm-after"
    engine.step()
    assert len(_runs(store, "alarm")) == 1  # each upstream run fires once


def test_a_firing_that_cannot_start_is_logged_and_the_loop_goes_on(caplog: Any) -> None:
    app = _app()
    clock = FakeClock(T0)
    store = SQLiteStore(":memory:")
    engine = TriggerEngine(Runner([], backend=FakeBackend(), store=store), clock=clock)
    engine.set_triggers(app.triggers.values())
    clock.at = T0 + 300
    [firing] = engine.step()
    assert firing.run_id is None and "tick" in (firing.skipped or "")
    stop = threading.Event()
    stop.set()
    engine.run(stop)  # returns at once with stop set


def test_every_s_fires_in_the_engines_time_and_a_chain_can_take_no_argument() -> None:
    app = Mesh("sim")

    @app.function()
    def analytics() -> int:
        return 7

    @app.function()
    def refit() -> str:
        return "refit"

    app.add_trigger("analytics", every_s=300, at_s=0)
    app.add_trigger("refit", after="analytics", on="finished", pass_as="")
    assert app.triggers["analytics-schedule"].describe() == "every 300 s from 0 s"
    clock = FakeClock(0.0)  # a scenario's simulated seconds
    engine, store = _engine(app, clock)
    assert engine.next_firing("analytics-schedule") == 0.0
    fired = engine.step()
    assert [f.trigger for f in fired][:1] == ["analytics-schedule"]
    _step_until(engine, lambda: bool(_runs(store, "refit")))
    clock.at = 299.0
    assert [f for f in engine.step() if f.trigger == "analytics-schedule"] == []
    clock.at = 600.5  # 300 is 300.5 s late (past grace_s, missed), 600 on time
    [again] = [f for f in engine.step() if f.trigger == "analytics-schedule"]
    assert again.run_id is not None and engine.counts("analytics-schedule")["missed"] == 1
    assert engine.next_firing("analytics-schedule") == 900.0


def test_readme_example(request: pytest.FixtureRequest) -> None:
    for block in blocks_for(request.node.nodeid):
        namespace: dict[str, object] = {"__name__": "docs_example"}
        exec(compile(block.padded(), block.doc, "exec"), namespace)
        app = namespace["app"]
        assert isinstance(app, Mesh)
        assert sorted(app.triggers) == [
            "demand_analytics-schedule",
            "on_counts-topic",
            "refit_forecaster-after",
        ]
        check_triggers(app.triggers.values(), app.functions, source=block.where)


def test_a_scenarios_timed_and_chained_triggers_fire_in_simulated_time() -> None:
    app = Mesh("scenario")

    @app.function()
    def analytics(out: str) -> str:
        return out

    @app.function()
    def refit() -> str:
        return "refit"

    decls = [
        TriggerDecl(name="start", function="m:analytics", at_s=0, args={"out": "x"}),
        TriggerDecl(name="every", function="m:analytics", every_s=300, args={"out": "{out}/a"}),
        TriggerDecl(name="chain", function="m:refit", after="every"),
    ]
    assert [is_start_trigger(d) for d in decls] == [True, False, False]
    store = SQLiteStore(":memory:")
    sim = {"t": 0.0}
    live = LiveTriggers(
        decls,
        Runner([app], backend=FakeBackend(), store=store),
        lambda _wall: sim["t"],
        {"out": "/tmp/run"},
    )
    assert [s.name for s in live.specs] == ["every", "chain"]  # the start one ran before
    live.start()
    try:
        sim["t"] = 301.0
        deadline = time.monotonic() + 30  # the engine's thread steps every 0.2 s
        while (
            not store.list_runs(function="refit")
            or not store.list_runs(function="refit")[0].status.finished
        ):
            assert time.monotonic() < deadline, "the chain never ran"
            time.sleep(0.05)
    finally:
        notes = live.stop()
    [every] = store.list_runs(function="analytics")
    assert (every.trigger, every.result_ref) == ("every", '"/tmp/run/a"')
    assert store.list_runs(function="refit")[0].trigger == "chain"
    assert notes[0] == "trigger every (every 300 s): 1 run(s), 0 missed, 0 skipped"


# -- the CLI ----------------------------------------------------------------------------

_GOOD = """
from mesh import Mesh

app = Mesh("cli-triggers")


@app.trigger(schedule="@hourly", missed="catch_up_once")
@app.function()
def hourly() -> int:
    return 1
"""


def test_deploy_refuses_a_trigger_of_a_missing_function_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "data"))
    bad = tmp_path / "bad_triggers.py"
    bad.write_text(_GOOD + '\napp.add_trigger("hourli", after="hourly")\n')
    result = CliRunner().invoke(cli, ["deploy", str(bad)])
    assert result.exit_code == 1
    assert (
        f"{bad}: trigger 'hourli-after': function: expected a function of this file (hourly), "
        "got 'hourli'; did you mean 'hourly'?"
    ) in " ".join(result.output.split())
    assert "no functions deployed" in CliRunner().invoke(cli, ["functions"]).output
    bad_cron = tmp_path / "bad_cron.py"
    bad_cron.write_text(_GOOD.replace("@hourly", "0 25 * * *"))
    result = CliRunner().invoke(cli, ["deploy", str(bad_cron)])
    assert result.exit_code == 1
    assert "schedule: invalid cron schedule '0 25 * * *': hour field '25'" in " ".join(
        result.output.split()
    )


def test_mesh_triggers_lists_the_next_firing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "data"))
    assert "no triggers deployed" in CliRunner().invoke(cli, ["triggers"]).output
    good = tmp_path / "good_triggers.py"
    good.write_text(_GOOD)
    deployed = CliRunner().invoke(cli, ["deploy", str(good)])
    assert deployed.exit_code == 0 and "hourly-schedule" in deployed.output
    result = CliRunner().invoke(cli, ["triggers", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert (row["name"], row["function"], row["missed"]) == (
        "hourly-schedule",
        "hourly",
        "catch_up_once",
    )
    assert row["next_at"] % 3600 == 0 and 0 < row["next_at"] - time.time() <= 3600
    assert row["last_run"] is None
    table = CliRunner().invoke(cli, ["triggers"]).output
    assert "hourly" in table


def test_a_new_file_fires_once_after_it_settled(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "old").mkdir(parents=True)
    (inbox / "old" / "before.csv").write_text("there before the watch")
    app = Mesh("files")

    @app.function()
    def ingest(path: str) -> str:
        return Path(path).name

    app.add_trigger("ingest", path=str(inbox / "**" / "*.csv"), debounce_s=2.0)
    clock = FakeClock(T0)
    engine, store = _engine(app, clock)
    new = inbox / "old" / "counts-1.csv"
    new.write_text("a,b\n")
    assert engine.step() == []  # seen, not settled
    clock.at = T0 + 1
    new.write_text("a,b\n1,2\n")  # still being written: the settle time starts again
    clock.at = T0 + 2.5
    assert engine.step() == []
    (inbox / "skip.txt").write_text("not a csv")
    clock.at = T0 + 5
    [firing] = engine.step()
    assert firing.trigger == "ingest-path"
    _step_until(engine, lambda: _runs(store, "ingest")[0].status.finished)
    [run] = _runs(store, "ingest")
    assert (run.result_ref, run.trigger) == ('"counts-1.csv"', "ingest-path")
    clock.at = T0 + 50
    assert [f for f in engine.step() if f.trigger == "ingest-path"] == []  # once
