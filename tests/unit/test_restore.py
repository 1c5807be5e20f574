"""Restoring recorded deployments after a restart: retries, states, durable records.

The :class:`Restorer` on a fake deploy; the controller's route listener and
``restore`` on the real serving manager with the fakes of ``test_gateway_serving``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mesh.control._restore import Restorer, RetryPolicy
from mesh.control._store import DeploymentRecord
from mesh.serving._manager import ServingManager
from mesh.serving._routes import RouteTable
from tests.unit.test_gateway_serving import FakeLauncher, FakeProbe, Registryless, spec
from tests.unit.test_placement_controller import AGENT, Installer, world

FAST = RetryPolicy(attempts=3, first_delay_s=0.0, max_delay_s=0.0)


def record(module: str = "counter", *, agent: str | None = None) -> DeploymentRecord:
    return DeploymentRecord(
        module=module,
        spec_json=spec(name=module).model_dump_json(),
        version="v1",
        tier="edge" if agent else "fog",
        site=None,
        agent=agent,
    )


class FlakyDeploy:
    """Fails the first ``failures`` tries of each module; remembers the states it saw."""

    def __init__(self, restorer: Restorer, failures: int) -> None:
        self.restorer = restorer
        self.failures = failures
        self.tries: dict[str, int] = {}
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, r: DeploymentRecord) -> None:
        for s in self.restorer.statuses():
            if s.module == r.module:
                self.seen.append((s.module, s.label, s.attempts))
        self.tries[r.module] = self.tries.get(r.module, 0) + 1
        if self.tries[r.module] <= self.failures:
            raise KeyError("pydantic.v1")  # what the start-up race raised


def test_expected_modules_are_restoring_before_the_first_try() -> None:
    restorer = Restorer(FAST)
    restorer.expect([record("a"), record("b", agent=AGENT)])
    assert [(s.module, s.label, s.tier, s.agent) for s in restorer.statuses()] == [
        ("a", "restoring", "fog", None),
        ("b", "restoring", "edge", AGENT),
    ]
    assert [s.module for s in restorer.unserved(lambda m: m == "a")] == ["b"]


def test_a_failed_try_is_retried_until_it_serves() -> None:
    restorer = Restorer(FAST)
    deploy = FlakyDeploy(restorer, failures=2)

    assert restorer.run([record()], deploy, stop=threading.Event()) == ["counter"]

    assert deploy.tries == {"counter": 3}
    # Between tries it stays restoring, with the tries so far.
    assert deploy.seen == [("counter", "restoring", n) for n in range(3)]
    [status] = restorer.statuses()
    assert (status.label, status.attempts, status.error) == ("serving", 3, None)
    assert restorer.unserved(lambda m: False) == []


def test_a_module_whose_tries_all_fail_is_failed_with_the_reason() -> None:
    restorer = Restorer(FAST)
    deploy = FlakyDeploy(restorer, failures=99)

    assert restorer.run([record("a"), record("b")], deploy, stop=threading.Event()) == []

    assert deploy.tries == {"a": 3, "b": 3}  # bounded: policy.attempts each
    labels = {s.module: s.label for s in restorer.statuses()}
    assert labels == {
        "a": "failed: KeyError: 'pydantic.v1'",
        "b": "failed: KeyError: 'pydantic.v1'",
    }
    assert restorer.counts() == {"restoring": 0, "serving": 0, "failed": 2}
    [a, _] = restorer.unserved(lambda m: False)
    assert a.to_dict()["status"] == "failed: KeyError: 'pydantic.v1'"
    assert a.to_dict()["restore_attempts"] == 3


def test_one_failing_module_does_not_hold_up_another() -> None:
    restorer = Restorer(FAST)
    ok = []

    def deploy(r: DeploymentRecord) -> None:
        if r.module == "bad":
            raise RuntimeError("agent cam-9 did not install it")
        ok.append(r.module)

    assert restorer.run([record("bad"), record("good")], deploy, stop=threading.Event()) == ["good"]
    assert {s.module: s.state for s in restorer.statuses()} == {"bad": "failed", "good": "serving"}
    assert restorer.counts() == {"restoring": 0, "serving": 1, "failed": 1}


def test_stop_ends_the_wait_between_tries() -> None:
    restorer = Restorer(RetryPolicy(attempts=5, first_delay_s=3600.0, max_delay_s=3600.0))
    stop = threading.Event()

    def deploy(r: DeploymentRecord) -> None:
        stop.set()  # shut down while the first try fails
        raise RuntimeError("no fog node yet")

    done = threading.Thread(target=restorer.run, args=([record()], deploy), kwargs={"stop": stop})
    done.start()
    done.join(60)  # an hour's backoff otherwise
    assert not done.is_alive()
    [status] = restorer.statuses()
    assert (status.state, status.attempts) == ("restoring", 1)


def test_backoff_doubles_up_to_its_ceiling_and_bad_policies_are_refused() -> None:
    policy = RetryPolicy(attempts=6, first_delay_s=1.0, max_delay_s=5.0)
    assert [policy.delay_after(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="first_delay_s <= max_delay_s"):
        RetryPolicy(first_delay_s=2.0, max_delay_s=1.0)


def test_a_deploy_is_recorded_when_its_route_switches_not_a_round_later() -> None:
    w = world()  # deployed "counter" on the agent; no round has run
    assert w.store.deployments() == []  # what a kill -9 right after a deploy lost
    w.manager.record_placements(w.controller)

    w.manager.deploy_to_agent(spec(), AGENT, w.manager.deployments()[0].artifact)

    [r] = w.store.deployments()
    assert (r.module, r.version, r.tier, r.agent) == ("counter", "v1", "edge", AGENT)


def test_an_undeploy_forgets_the_record_but_a_shutdown_keeps_it() -> None:
    w = world()
    w.manager.record_placements(w.controller)
    art = w.manager.deployments()[0].artifact
    w.manager.deploy_to_agent(spec(), AGENT, art)
    w.manager.undeploy("counter")
    assert w.store.deployments() == []

    w.manager.deploy_to_agent(spec(), AGENT, art)
    w.controller.close()  # the control plane stops: the controller first, then serving
    w.manager.close()
    assert [r.module for r in w.store.deployments()] == ["counter"]


def test_restore_retries_a_failing_deploy_and_the_state_says_so() -> None:
    before = world()
    before.store.put_deployment(record(agent=AGENT))
    fresh = ServingManager(RouteTable(), FakeLauncher(), probe=FakeProbe(), installer=Installer())
    calls: list[int] = []

    class Flaky(Registryless):
        def deploy_to_agent(self, s: Any, agent: str, version: str, **kw: Any) -> Any:
            calls.append(1)
            if len(calls) < 3:
                raise TimeoutError(f"agent {agent} did not answer")
            return super().deploy_to_agent(s, agent, version, **kw)

    before.controller.restorer.policy = FAST
    assert before.controller.restore(Flaky(fresh)) == ["counter"]
    assert len(calls) == 3 and fresh.routes.get("counter") is not None
    [status] = before.controller.restorer.statuses()
    assert (status.label, status.attempts) == ("serving", 3)


def test_forget_drops_a_failed_module_and_its_record() -> None:
    w = world()
    w.store.put_deployment(record("ghost", agent="gone"))
    w.controller.restorer.expect(w.store.deployments())
    assert w.controller.forget("ghost")
    assert [r.module for r in w.store.deployments()] == []
    assert not w.controller.forget("ghost")
