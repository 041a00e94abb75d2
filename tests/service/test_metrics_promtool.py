"""/metrics of the real running service passes `promtool check metrics` (names, units, help, _total)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import load_config
from service.localservers import MosquittoServer
from tests.support import running_service, wait_until

pytestmark = pytest.mark.integration  # the running service, and promtool as a child process


async def test_metrics_pass_promtool_lint(plant_config_file: Path, mosquitto: MosquittoServer) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run 'make setup' (it installs Debian's prometheus package)"
    with plant_config_file.open("a") as f:  # the alarm publisher's metrics are linted too
        f.write(f'\n[alarms.mqtt]\nurl = "{mosquitto.url}"\nusername = "{mosquitto.username}"\n'
                'password = "${HEATREC_MQTT_PASSWORD}"\ntopic_prefix = "promtool/alarms"\n')
    cfg = load_config(plant_config_file)
    async with running_service(cfg) as svc:
        assert svc.alarm_publisher is not None
        publisher = svc.alarm_publisher
        await wait_until(lambda: publisher.stats.published > 0, 15, "alarm snapshot published")
        assert svc.tokens is not None
        _, token = svc.tokens.create("viewer", "prometheus")  # Prometheus scrapes with a token (docs/API.md)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.api_port}", timeout=10) as client:
            await client.get("/api/v1/health")  # so the latency histogram has a series
            await client.get("/api/v1/points")  # and a 401 one
            r = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        text = r.text
    families = {f.name for f in text_string_to_metric_families(text)}
    # Every part of the service is in the scrape, so the lint covers all of it.
    assert {"heatrec_driver_state", "heatrec_storage_rows_written", "heatrec_storage_spool_bytes",
            "heatrec_api_request_duration_seconds", "heatrec_bus_dropped", "heatrec_alarms",
            "heatrec_alarm_mqtt_dropped"} <= families
    proc = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0 and not out.strip(), out.decode()


def test_promtool_catches_a_counter_without_total() -> None:
    # The lint above is only worth something if promtool really complains about a bad exposition.
    promtool = shutil.which("promtool")
    assert promtool
    bad = "# HELP foo_bytes Bytes\n# TYPE foo_bytes counter\nfoo_bytes 1\n"
    r = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "_total" in r.stdout + r.stderr
