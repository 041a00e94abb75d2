"""The console on the running service whose PostgreSQL is away: live pages and control work, history pages say why.

The demo plant with its simulators and the session's Mosquitto, but its database on a port where
nothing listens: the service starts without it (docs/ARCHITECTURE.md). The operator's token is in the
plant's local token store, as it would be after the first mirror, so signing in needs no database.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from service.config import load_config
from service.localservers import free_port
from service.token_store import TokenStore
from simulators.runner import Simulation
from tests.support import running_service, wait_until
from tests.ui.test_console import hidden_csrf, sign_in
from tests.ui.test_console_browser import without_scada

pytestmark = pytest.mark.integration


def database_away(path: Path) -> None:
    """The plant's database on a free port, where nothing listens; the service waits half a second for it."""
    text, n = re.subn(r"(?m)^(\[database\]\n(?:.+\n)*?)port = \d+\n",
                      rf"\g<1>port = {free_port()}\nconnect_timeout_s = 0.5\n", path.read_text(), count=1)
    assert n == 1
    path.write_text(text)


async def test_with_the_database_away_live_pages_and_control_work_and_history_pages_say_why(
        plant_config_file: Path) -> None:
    database_away(plant_config_file)
    without_scada(plant_config_file)
    cfg = load_config(plant_config_file)
    assert cfg.simulation is not None and cfg.control is not None
    operator = TokenStore(Path(cfg.api.token_store)).create("operator", "outage-operator")[1]
    async with Simulation(cfg.simulation, tick_s=0.2), running_service(cfg) as svc:
        assert svc.database is not None and not svc.database.up
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=10) as http:
            r = await sign_in(http, operator)
            assert r.status_code == 303 and r.headers["location"] == "/ui", r.text

            async def live() -> bool:
                page = await http.get("/ui")
                return page.status_code == 200 and 'data-point="hp1.supply_temperature"' in page.text and \
                    re.search(r'data-point="hp1.supply_temperature">.*?q-good', page.text, re.S) is not None

            await wait_until(live, 20, "the overview showing live, good values")
            health = await http.get("/ui/health")
            assert health.status_code == 200 and 'id="db-state">unavailable' in health.text

            # Control works: the request goes to the arbiter, its audit entry to the journal.
            await wait_until(lambda: svc.control is not None
                             and svc.control.status().supply_temperature_target is not None, 20, "a target")
            assert svc.control is not None
            target = round((svc.control.status().supply_temperature_target or 0) + 2, 1)
            csrf = hidden_csrf((await http.get("/ui/control")).text)
            r = await http.post("/ui/control", data={"csrf": csrf, "target": str(target), "confirm": "yes"})
            assert r.status_code == 303
            page = await http.get("/ui/control")
            assert "applied: supply_temperature_target" in page.text, page.text
            assert svc.control.status().override == target

            alarms = await http.get("/ui/alarms")
            assert alarms.status_code == 200 and "needs the database, which is unavailable since" in alarms.text
            for path in ("/ui/audit", "/ui/points/hp1.supply_temperature", "/ui/settlements"):
                r = await http.get(path)
                assert r.status_code == 503, (path, r.status_code)
                assert "needs the database, which is unavailable since" in r.text, (path, r.text)
                assert "Live values, control, current alarms and health work without it" in r.text
