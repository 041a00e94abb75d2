"""The centre's console in a real browser: Debian's chromium against a real `heatrec central` fed by a site uplink.

A site's registers go through its Uplink and the fleet broker into the central database; the browser
signs in with a pasted viewer token (the cookie HttpOnly and SameSite=Strict, the token never in it),
sees every site with its link and lag and the KPIs, saves docs/ui/fleet.png, and signs out.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from service.config import DatabaseConfig
from service.localservers import free_port
from tests.fleet import conftest as fleet
from tests.fleet.conftest import CentralProcess, FleetBroker, SimulatedSite, central_toml, uplink_config
from tests.fleet.test_fleet_api import SITE_A_KPI, site_a_samples
from tests.support import wait_until
from tests.ui import test_console_browser as console_browser
from tests.ui.test_console_browser import run, shot, sign_in

# The fleet's and the console's fixtures, used here by name (tests/fleet/conftest.py is not this directory's).
fleet_broker = fleet.fleet_broker
simulated_sites = fleet.simulated_sites
browser = console_browser.browser

pytestmark = pytest.mark.integration


@pytest.fixture
def central(shared_tmp_path: Path, database: DatabaseConfig, fleet_broker: FleetBroker) -> Iterator[CentralProcess]:
    """`heatrec central` for three sites, site-a's KPI registers named."""
    port = free_port()
    cfg = central_toml(shared_tmp_path / "central-ui.toml", database, fleet_broker, "central-1", port,
                       site_lines={"site-a": SITE_A_KPI})
    proc = CentralProcess(cfg, port, shared_tmp_path / "central-ui.log")
    proc.start()
    yield proc
    proc.stop()


def fleet_steps(d: WebDriver, base: str, token: str) -> dict[str, object]:
    """Signed out to the sign-in page; sign in; read the fleet page; sign out."""
    d.get(f"{base}/ui")
    assert d.current_url == f"{base}/ui/login"
    sign_in(d, base, token)
    [cookie] = [c for c in d.get_cookies() if c["name"] == "heatrec_session"]
    rows = {tr.get_attribute("data-site"): {
        "link": tr.find_element(By.CSS_SELECTOR, ".link").text, "lag": tr.find_element(By.CSS_SELECTOR, ".lag").text,
        "acked": tr.find_element(By.CSS_SELECTOR, ".acked").text}
        for tr in d.find_elements(By.CSS_SELECTOR, "tr[data-site]")}
    figures = {k: d.find_element(By.ID, k).text for k in ("k-delivered", "k-homes", "k-co2", "k-erf")}
    shot(d, "fleet")
    d.find_element(By.XPATH, "//button[text()='Sign out']").click()
    WebDriverWait(d, 10).until(lambda d: d.current_url == f"{base}/ui/login")
    d.get(f"{base}/ui")
    return {"cookie": cookie, "rows": rows, "figures": figures, "after_logout": d.current_url,
            "title": d.title}


async def test_fleet_page_in_a_browser(central: CentralProcess, fleet_broker: FleetBroker, shared_tmp_path: Path,
                                       simulated_sites: list[SimulatedSite], browser: WebDriver) -> None:
    site = SimulatedSite(uplink_config(fleet_broker, "site-a", shared_tmp_path / "outbox-a"))
    simulated_sites.append(site)
    await wait_until(central.sites, 30, "central API up")
    await site.start_uplink()
    # Within the fleet page's KPI window (the last 30 days): the two hours before now.
    sent = site_a_samples(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3))
    for s in sent:
        site.bus.publish(s)

    async def stored() -> bool:
        a = (await central.sites()).get("site-a", {})
        return a.get("samples") == len(sent) and a.get("link") == "online"
    await wait_until(stored, 30, "site-a's samples stored and its link online")

    seen = await run(fleet_steps, browser, central.url, central.token)
    cookie = seen["cookie"]
    assert isinstance(cookie, dict)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and central.token not in cookie["value"]
    rows = seen["rows"]
    assert isinstance(rows, dict) and set(rows) == {"site-a", "site-b", "site-c"}
    assert rows["site-a"]["link"] == "online" and rows["site-a"]["lag"].endswith((" s", " min"))
    assert int(rows["site-a"]["acked"]) >= 1
    assert rows["site-c"] == {"link": "unknown", "lag": "—", "acked": "0"}
    figures = seen["figures"]
    assert isinstance(figures, dict) and figures["k-delivered"] != "—" and figures["k-erf"] != "—"
    assert seen["after_logout"] == f"{central.url}/ui/login"
