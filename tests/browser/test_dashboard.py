"""The dashboard at /ui in chromium, against a real `mesh up` with a fog module and an agent.

Every page renders with no console error; no token gives the sign-in page; the
read token `mesh ui` mints shows no admin action; a migration triggered with
`mesh placements pin` appears on the module page within 2 s of being recorded
(the page is at most a second behind); a killed agent turns red within its
MQTT keepalive. Each page is saved as a screenshot (see conftest).

The tests share one mesh and run in file order: the last one kills the agent.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.support.browser import Dashboard, console_errors, sign_in, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

#: The agent's MQTT keepalive (edge_agent's default): the broker declares it gone within 1.5 x.
AGENT_KEEPALIVE_S = 30.0


def _page(driver: Any) -> str:
    return str(driver.execute_script("return document.body.dataset.page"))


def _has(driver: Any, css: str) -> bool:
    return bool(driver.execute_script("return !!document.querySelector(arguments[0])", css))


# The page re-renders each second, so an element found now may be gone at the next call:
# read text and attributes in one script, never through a held element.
def _text(driver: Any, css: str) -> str:
    return str(
        driver.execute_script("return document.querySelector(arguments[0])?.innerText ?? ''", css)
    )


def _attr(driver: Any, css: str, name: str) -> str | None:
    found = driver.execute_script(
        "return document.querySelector(arguments[0])?.getAttribute(arguments[1]) ?? null",
        css,
        name,
    )
    return None if found is None else str(found)


def test_no_token_shows_the_sign_in_page(driver: Any, dashboard: Dashboard) -> None:
    driver.get(dashboard.url + "#/overview")
    wait_for(driver, lambda d: _page(d) == "signin", 30, "the sign-in page")
    assert _has(driver, "#signin-form input#token")
    assert not _has(driver, "table"), "no data shown before signing in"
    shown = "return getComputedStyle(document.querySelector(arguments[0])).display !== 'none'"
    assert not driver.execute_script(shown, "#top"), "no navigation or sign-out before signing in"
    assert console_errors(driver) == []
    dashboard.screenshot(driver, "0-sign-in")

    driver.find_element("css selector", "#token").send_keys("mesh_not-a-token")
    driver.find_element("css selector", "#signin-submit").click()
    wait_for(
        driver,
        lambda d: "refused" in _text(d, "#signin-error"),
        30,
        "the refusal of a bad token",
    )
    assert _page(driver) == "signin"

    driver.find_element("css selector", "#token").clear()
    driver.find_element("css selector", "#token").send_keys(dashboard.admin_token)
    driver.find_element("css selector", "#signin-submit").click()
    wait_for(driver, lambda d: _has(d, 'tr[data-module="chaos-fog"]'), 60, "the overview")


def test_every_page_renders_without_console_errors(driver: Any, dashboard: Dashboard) -> None:
    from selenium.webdriver.support.ui import Select

    mesh = dashboard.mesh
    sign_in(driver, dashboard, dashboard.admin_token)
    wait_for(
        driver,
        lambda d: (
            _has(d, f'tr[data-module="{mesh.FOG}"]')
            and _has(d, f'tr[data-agent="{mesh.AGENT}"][data-health="online"]')
        ),
        60,
        "both modules and the agent online on the overview",
    )
    assert len(driver.find_elements("css selector", "tr[data-node]")) == 3  # cloud + 2 fog
    dashboard.screenshot(driver, "1-overview")

    driver.execute_script("location.hash = arguments[0]", f"#/module/{mesh.FOG}")
    # The chart draws once the module has had traffic sampled on a node.
    wait_for(driver, lambda d: _has(d, ".chart svg path"), 60, "the module's latency chart")
    assert mesh.FOG in _text(driver, "h1")
    assert _has(driver, "#placement-history")
    wait_for(driver, lambda d: "production" in d.page_source, 30, "the model's versions")
    dashboard.screenshot(driver, "2-module")

    driver.execute_script("location.hash = arguments[0]", f"#/agent/{mesh.AGENT}")
    wait_for(driver, lambda d: _page(d) == "agent" and _has(d, "h1[data-agent]"), 30, "agent")
    text = _text(driver, "main")
    assert mesh.EDGE in text and "Installed models" in text and "Last heartbeats" in text
    dashboard.screenshot(driver, "3-agent")

    driver.execute_script("location.hash = '#/runs'")
    wait_for(driver, lambda d: _has(d, "tr[data-run]"), 30, "the run of collect_counts")
    assert "collect_counts" in _text(driver, "main")
    Select(driver.find_element("css selector", "#f-status")).select_by_value("failed")
    wait_for(driver, lambda d: not _has(d, "tr[data-run]"), 30, "the status filter")
    Select(driver.find_element("css selector", "#f-status")).select_by_value("succeeded")
    wait_for(driver, lambda d: _has(d, "tr[data-run]"), 30, "the filter undone")
    dashboard.screenshot(driver, "4-runs")
    assert console_errors(driver) == []


def test_a_read_token_shows_no_admin_actions(driver: Any, dashboard: Dashboard) -> None:
    mesh = dashboard.mesh
    driver.get(dashboard.read_url)  # what `mesh ui` printed
    wait_for(driver, lambda d: _has(d, f'tr[data-module="{mesh.FOG}"]'), 60, "the overview")
    assert "#token=" not in driver.current_url, "the token is cleared from the address bar"
    assert "read" in _text(driver, "#who")
    driver.execute_script("location.hash = arguments[0]", f"#/module/{mesh.FOG}")
    wait_for(driver, lambda d: _has(d, "#placement-history"), 30, "the module page")
    assert not _has(driver, ".admin-actions") and not _has(driver, "#pin")
    dashboard.screenshot(driver, "5-module-read-only")
    assert console_errors(driver) == []

    # The same page with an admin token offers the pin.
    sign_in(driver, dashboard, dashboard.admin_token, f"module/{mesh.FOG}")
    wait_for(driver, lambda d: _has(d, ".admin-actions #pin"), 30, "the admin's pin button")


def test_a_migration_appears_on_the_module_page_within_2_s(
    driver: Any, dashboard: Dashboard
) -> None:
    mesh = dashboard.mesh
    sign_in(driver, dashboard, dashboard.admin_token, f"module/{mesh.FOG}")
    wait_for(driver, lambda d: _has(d, "#placement-history"), 30, "the module page")
    before = {m["id"] for m in dashboard.api(f"/v1/placements/history?module={mesh.FOG}")}
    placement = next(
        m for m in dashboard.api("/v1/placements")["modules"] if m["module"] == mesh.FOG
    )
    fog = [n for n in dashboard.api("/v1/dashboard/snapshot")["nodes"] if n["tier"] == "fog"]
    target = next(n["name"] for n in fog if n["name"] != placement["node"])

    mesh.cli("placements", "pin", mesh.FOG, "--node", target)
    recorded = None
    for _ in range(600):  # the controller's next round records it (every 0.25 s)
        new = [
            m
            for m in dashboard.api(f"/v1/placements/history?module={mesh.FOG}")
            if m["id"] not in before
        ]
        if new:
            recorded = new[0]
            break
        time.sleep(0.1)
    assert recorded is not None, "the pin started no migration within 60 s"
    seen_after_s = time.monotonic()
    row = f'#placement-history tr[data-migration="{recorded["id"]}"]'
    wait_for(driver, lambda d: _has(d, row), 2.0, "the migration on the module page within 2 s")
    print(f"migration {recorded['id']} on the page {time.monotonic() - seen_after_s:.2f} s "
          "after the API listed it")  # fmt: skip
    assert target[:8] in _text(driver, row)

    wait_for(
        driver,
        lambda d: (
            _attr(d, row + " [data-health]", "data-health") in ("done", "failed", "rolled_back")
        ),
        180,
        "the migration to finish",
    )
    assert _attr(driver, row + " [data-health]", "data-health") == "done"
    dashboard.screenshot(driver, "6-module-after-migration")
    assert console_errors(driver) == []


def test_a_killed_agent_turns_red_within_its_keepalive(driver: Any, dashboard: Dashboard) -> None:
    mesh = dashboard.mesh
    sign_in(driver, dashboard, dashboard.admin_token)
    agent = f'tr[data-agent="{mesh.AGENT}"]'
    wait_for(driver, lambda d: _has(d, agent + '[data-health="online"]'), 60, "the agent online")
    pid = mesh.agent_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        driver,
        lambda d: _has(d, agent + " .pill.bad"),
        1.5 * AGENT_KEEPALIVE_S + 5,
        "the killed agent red within 1.5 x its keepalive",
    )
    print(f"agent red {time.monotonic() - killed:.1f} s after kill -9")
    health = _attr(driver, agent, "data-health")
    assert health == "offline"
    fault = f'#faults tr[data-fault="agent:{mesh.AGENT}"]'
    wait_for(driver, lambda d: _has(d, fault), 5, "the agent's fault listed on the overview")
    assert "offline" in _text(driver, fault)
    dashboard.screenshot(driver, "7-overview-agent-killed")
    driver.execute_script("location.hash = arguments[0]", f"#/agent/{mesh.AGENT}")
    wait_for(driver, lambda d: _has(d, "h1 .pill.bad"), 10, "the agent page red")
    dashboard.screenshot(driver, "8-agent-killed")
    assert console_errors(driver) == []
