"""The console in a real browser: Debian's chromium driven by Selenium, against the running service and simulators.

The demo plant on free ports (OPC UA, Modbus TCP and MQTT simulators, PostgreSQL, Mosquitto), with
the heat pump made faster as in the control end-to-end test. One browser session walks the pages as
a viewer and then an operator would, and saves a screenshot of each page into docs/ui/ (docs/UI.md
shows them). Selenium's calls block, so they run in a thread: the service shares this event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.auth import create_token
from service.config import load_config
from service.storage.database import connect_pool
from simulators.runner import Simulation
from simulators.scenario import FaultSpec
from tests.support import running_service, wait_until
from tests.test_control_end_to_end import faster_plant, read_setpoint_register

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "ui"
TRIP = "hp1.status:trip"
T = TypeVar("T")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Debian chromium through Debian's chromedriver (nothing is downloaded)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver come with `make setup` (deploy/local/bootstrap.sh)"
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a browser or driver online
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--lang=en"):
        opts.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    d = webdriver.Chrome(options=opts, service=ChromeService(executable_path=driver))
    d.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    d.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.quit()


async def run(fn: Callable[..., T], *args: Any) -> T:
    """A blocking browser step, off the event loop the service runs on."""
    return await asyncio.to_thread(fn, *args)


# Form controls with no accessible name (label, aria-label or text), and the landmarks present.
UNLABELLED_JS = """
const bad = Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button'))
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
  .map(e => e.outerHTML);
return [bad, !!document.querySelector('main'), !!document.querySelector('a.skip[href="#main"]')];
"""


def shot(d: WebDriver, name: str) -> None:
    """A screenshot for docs/UI.md, of a page whose every control is labelled for screen readers."""
    unlabelled, main, skip = d.execute_script(UNLABELLED_JS)
    assert unlabelled == [] and main and skip, (name, unlabelled, main, skip)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert d.save_screenshot(str(SHOTS / f"{name}.png"))


def sign_in(d: WebDriver, base: str, token: str) -> None:
    """Paste the token on the sign-in page, as a person would."""
    d.get(f"{base}/ui/login")
    field = d.find_element(By.ID, "token")
    field.send_keys(token)
    field.submit()
    try:
        WebDriverWait(d, 10).until(lambda d: d.current_url == f"{base}/ui")
    except TimeoutException as err:
        raise AssertionError(f"not signed in: {d.current_url}: {d.find_element(By.TAG_NAME, 'main').text}") from err


def values(d: WebDriver) -> list[str]:
    """The overview's value cells as shown."""
    return list(d.execute_script(
        "return Array.from(document.querySelectorAll('tr[data-point] .value')).map(e => e.textContent)"))


def viewer_steps(d: WebDriver, base: str, token: str) -> dict[str, Any]:
    """Sign in, see values change live, find control disabled, sign out."""
    d.get(f"{base}/ui/login")
    shot(d, "login")
    sign_in(d, base, token)
    WebDriverWait(d, 10).until(lambda d: "connected" in d.find_element(By.ID, "stream-state").text)
    first = values(d)
    WebDriverWait(d, 5).until(lambda d: values(d) != first)  # a live value changed within 5 s
    shot(d, "overview")
    d.find_element(By.LINK_TEXT, "Control").click()
    disabled = {name: not d.find_element(By.ID, name).is_enabled()
                for name in ("mode", "target", "manual_setpoint", "hold_h", "review")}
    note = d.find_element(By.ID, "viewer-note").text
    d.find_element(By.XPATH, "//button[text()='Sign out']").click()
    WebDriverWait(d, 5).until(lambda d: d.current_url.endswith("/ui/login"))
    return {"disabled": disabled, "note": note}


def raise_target(d: WebDriver, base: str, token: str, target: float) -> str:
    """As the operator: ask for a new target, confirm it; the message the page shows."""
    sign_in(d, base, token)
    d.find_element(By.LINK_TEXT, "Control").click()
    d.find_element(By.ID, "target").send_keys(f"{target:.1f}")
    d.find_element(By.ID, "review").click()
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.ID, "confirm"))
    shot(d, "control-confirm")
    d.find_element(By.ID, "confirm").click()
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".flash"))
    shot(d, "control")
    return str(d.find_element(By.CSS_SELECTOR, ".flash").text)


def audit_text(d: WebDriver, base: str) -> str:
    """The audit page's table as shown."""
    d.get(f"{base}/ui/audit")
    shot(d, "audit")
    return str(d.find_element(By.CSS_SELECTOR, "table.audit").text)


def session_cookie(d: WebDriver) -> str:
    """The browser's session cookie (for the forged request)."""
    cookie = d.get_cookie("heatrec_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    return str(cookie["value"])


def alarm_steps(d: WebDriver, base: str) -> list[str]:
    """Acknowledge the trip alarm, then shelve it with a reason; the states the page showed."""
    d.get(f"{base}/ui/alarms")
    row = f"tr[data-alarm='{TRIP}']"
    WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, row) or d.refresh())
    seen = [d.find_element(By.CSS_SELECTOR, f"{row} .state").text]
    d.find_element(By.CSS_SELECTOR, f"{row} button[name='ack']").click()
    WebDriverWait(d, 5).until(lambda d: "acknowledged" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    seen.append(d.find_element(By.CSS_SELECTOR, f"{row} .state").text)
    shot(d, "alarms")
    d.find_element(By.CSS_SELECTOR, f"{row} input[name='reason']").send_keys("heat pump service visit")
    Select(d.find_element(By.CSS_SELECTOR, f"{row} select[name='minutes']")).select_by_visible_text("4 h")
    d.find_element(By.CSS_SELECTOR, f"{row} button[name='shelve']").click()
    WebDriverWait(d, 5).until(lambda d: "shelved" in d.find_element(By.CSS_SELECTOR, ".flash").text)
    seen.append(d.find_element(By.CSS_SELECTOR, f"{row} .state").text)
    return seen


def settlement_csv(d: WebDriver, base: str, period: str) -> tuple[list[str], str]:
    """Close the period's open settlement, correct it, download the CSV; the messages and the file's text."""
    d.get(f"{base}/ui/settlements?period={period}")
    row = "tr[data-contract='demo_supply']"
    said = []
    # The demo plant started this month: last month's data is incomplete, so closing needs a reason.
    d.find_element(By.CSS_SELECTOR, f"{row} input[name='incomplete_reason']").send_keys("plant commissioned later")
    d.find_element(By.CSS_SELECTOR, f"{row} button").click()
    WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".flash"))
    said.append(d.find_element(By.CSS_SELECTOR, ".flash").text)
    d.find_element(By.CSS_SELECTOR, f"{row} input[name='reason']").send_keys("meter read on site")
    d.find_element(By.CSS_SELECTOR, f"{row} button").click()
    WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".flash"))
    said.append(d.find_element(By.CSS_SELECTOR, ".flash").text)
    said.append(d.find_element(By.CSS_SELECTOR, f"{row} .status").text)
    shot(d, "settlements")
    d.find_element(By.ID, "csv").click()
    target = d.downloads / f"settlements-{period}.csv"  # type: ignore[attr-defined]
    WebDriverWait(d, 10).until(lambda d: target.exists() and target.stat().st_size > 0)
    return said, target.read_text()


def late_pages(d: WebDriver, base: str) -> str:
    """A trend (with the raised target's step in it by now), zoomed; health; the overview at a tablet's width."""
    d.get(f"{base}/ui")
    d.find_element(By.CSS_SELECTOR, "tr[data-point='hp1.supply_setpoint'] a").click()
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg#trend polyline"))
    d.find_element(By.LINK_TEXT, "5m").click()
    WebDriverWait(d, 5).until(lambda d: "range=5m" in d.current_url
                              and d.find_elements(By.CSS_SELECTOR, "svg#trend polyline"))
    assert d.find_element(By.CSS_SELECTOR, "svg#trend polyline").get_attribute("points")
    shot(d, "trend")
    d.get(f"{base}/ui/health")
    shot(d, "health")
    overall = str(d.find_element(By.ID, "overall").text)
    d.set_window_size(820, 1180)
    d.get(f"{base}/ui")
    WebDriverWait(d, 10).until(lambda d: "connected" in d.find_element(By.ID, "stream-state").text)
    shot(d, "overview-tablet")
    d.get("about:blank")  # closes the live stream, so the service stops without waiting for it
    return overall


def without_scada(path: Path) -> None:
    """No SCADA server: the console does not use it, and its OPC UA security setup is most of the service's start."""
    text, n = re.subn(r"(?ms)^\[scada\]\n.*?(?=^# --- Alarms)", "", path.read_text(), count=1)
    assert n == 1
    path.write_text(text)


async def test_console_in_chromium_live_values_control_alarms_audit_and_settlements(
        plant_config_file: Path, browser: WebDriver) -> None:
    faster_plant(plant_config_file)
    without_scada(plant_config_file)
    cfg = load_config(plant_config_file)
    assert cfg.simulation is not None and cfg.control is not None
    hp_port = int(cfg.simulation.heat_pumps[0].endpoint.rsplit(":", 1)[1])
    async with Simulation(cfg.simulation, tick_s=0.2) as sim, running_service(cfg) as svc:
        pool = await connect_pool(cfg.database)
        async with pool.acquire() as conn:
            viewer = await create_token(conn, "viewer", "ui-viewer")
            operator = await create_token(conn, "operator", "ui-operator")
        await pool.close()
        base = f"http://127.0.0.1:{svc.api_port}"
        assert svc.control is not None and svc.alarms is not None

        seen = await run(viewer_steps, browser, base, viewer)
        assert all(seen["disabled"].values()), seen
        assert "needs the operator role" in seen["note"]

        await wait_until(lambda: svc.control is not None and svc.control.status().supply_temperature_target
                         is not None, 30, "control running with a target")
        before = svc.control.status()
        wire_before = await read_setpoint_register(hp_port)
        raised = round((before.supply_temperature_target or 0) + 3, 1)
        message = await run(raise_target, browser, base, operator, raised)
        assert message.startswith("applied") and svc.control.status().override == raised, message

        async def wire_followed() -> bool:
            return await read_setpoint_register(hp_port) > wire_before + 1.0

        await wait_until(wire_followed, 30, "the heat pump's setpoint register raised")
        entries = await run(audit_text, browser, base)
        assert "ui-operator" in entries and "control.supply_temperature_target" in entries, entries

        # A forged write: the operator's own cookie, but no CSRF token (a foreign page cannot know it).
        cookie = await run(session_cookie, browser)
        async with httpx.AsyncClient(base_url=base, timeout=10, cookies={"heatrec_session": cookie}) as http:
            r = await http.post("/ui/control", data={"target": "60.0", "confirm": "yes"})
            assert r.status_code == 403 and "CSRF" in r.text, r.text
            assert svc.control.status().override == raised

            fault = await sim.inject(FaultSpec(device="hp1", kind="trip"))
            states = await run(alarm_steps, browser, base)
            assert states[0] == "unack_active" and states[1].startswith("acked_active"), states
            assert states[2].startswith("shelved until"), states
            assert svc.alarms.engine.alarms[TRIP].state.value == "shelved"
            await sim.clear_fault(fault.id)

            tz = ZoneInfo(cfg.plant.timezone)
            period = f"{datetime.now(tz).date().replace(day=1) - timedelta(days=1):%Y-%m}"
            said, downloaded = await run(settlement_csv, browser, base, period)
            assert said == [f"demo_supply {period}: version 1 stored", f"demo_supply {period}: version 2 stored",
                            "closed"], said
            api = await http.get("/api/v1/settlements", params={"period": period, "format": "csv"},
                                 headers={"Authorization": f"Bearer {operator}"})
            assert api.status_code == 200 and downloaded == api.text and "demo_supply" in downloaded

        assert await run(late_pages, browser, base) in ("ok", "degraded")
