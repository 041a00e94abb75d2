"""Control through the real service: API and SCADA requests go to the arbiter, the heat pump follows on the wire.

The demo plant on free ports (simulators speaking OPC UA, Modbus TCP and MQTT, PostgreSQL, Mosquitto),
with the simulated heat pump made faster (5 s lag instead of 60 s) so the closed loop settles in
seconds, not minutes. An operator raises the target 3 K; the heat pump's setpoint register changes
(read on the Modbus wire by a separate client) and the measured network supply follows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from asyncua import Client, ua
from prometheus_client.parser import text_string_to_metric_families
from pymodbus.client import AsyncModbusTcpClient

from service.auth import create_token
from service.config import load_config
from service.storage.database import connect_pool
from simulators.runner import Simulation
from tests.support import running_service, scada_operator_client, wait_until

SCADA_PASSWORD = "scada-test-secret"


def faster_plant(path: Path) -> None:
    """Heat pump lag 5 s and a quick target ramp, so the test runs in seconds of real time."""
    text = path.read_text()
    text = text.replace("capacity_kw = 1200.0\ncompressor_power_kw",
                        "capacity_kw = 1200.0\ntime_constant_s = 5.0\ncompressor_power_kw", 1)
    text = text.replace("target_ramp_k_per_min = 3.0", "target_ramp_k_per_min = 60.0", 1)
    text = text.replace("feedforward_lead_s = 70.0", "feedforward_lead_s = 6.0", 1)
    text = text.replace("ti_s = 60.0", "ti_s = 10.0", 1)
    assert "time_constant_s = 5.0" in text and "target_ramp_k_per_min = 60.0" in text
    path.write_text(text)


async def read_setpoint_register(port: int) -> float:
    """The heat pump's remote setpoint as the Modbus wire carries it (holding register 0, 0.1 °C)."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
    await client.connect()
    try:
        rr = await client.read_holding_registers(0, count=1, device_id=1)
        assert not rr.isError(), rr
        raw = rr.registers[0]
        return (raw - 65536 if raw >= 32768 else raw) / 10
    finally:
        client.close()


async def test_operator_and_scada_control_reach_the_heat_pump(plant_config_file: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    faster_plant(plant_config_file)
    monkeypatch.setenv("HEATREC_SCADA_PASSWORD", SCADA_PASSWORD)
    cfg = load_config(plant_config_file)
    assert cfg.simulation is not None and cfg.control is not None and cfg.scada is not None
    hp_port = int(cfg.simulation.heat_pumps[0].endpoint.rsplit(":", 1)[1])
    async with Simulation(cfg.simulation, tick_s=0.2):
        async with running_service(cfg) as svc:
            pool = await connect_pool(cfg.database)
            async with pool.acquire() as conn:
                viewer = await create_token(conn, "viewer", "e2e-viewer")
                operator = await create_token(conn, "operator", "e2e-operator")
            await pool.close()
            base = f"http://127.0.0.1:{svc.api_port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                def auth(token: str) -> dict[str, str]:
                    return {"Authorization": f"Bearer {token}"}

                async def status() -> dict[str, Any]:
                    r = await http.get("/api/v1/control", headers=auth(viewer))
                    assert r.status_code == 200, r.text
                    return dict(r.json())

                async def settled_on_curve() -> bool:
                    st = await status()
                    return (st["mode"] == "auto" and st["target_source"] == "curve" and not st["safe_state"]
                            and st["supply_temperature"] is not None and st["supply_temperature_target"] is not None
                            and abs(st["supply_temperature"] - st["supply_temperature_target"]) < 1.0)

                await wait_until(settled_on_curve, 90, "network supply settled on the curve's target")
                before = await status()
                # The components and the metrics are for token holders (or [api] monitoring_networks).
                health = (await http.get("/api/v1/health", headers=auth(viewer))).json()
                assert health["components"]["control"]["status"] == "ok", health
                metrics = {f.name: f for f in text_string_to_metric_families(
                    (await http.get("/metrics", headers=auth(viewer))).text)}
                assert metrics["heatrec_control_cycles"].samples[0].value >= 1
                assert metrics["heatrec_control_safe_state"].samples[0].value == 0
                wire_before = await read_setpoint_register(hp_port)

                # Role checks on the write endpoint.
                body = {"supply_temperature_target": before["supply_temperature_target"] + 3}
                assert (await http.put("/api/v1/control", json=body)).status_code == 401
                assert (await http.put("/api/v1/control", json=body, headers=auth(viewer))).status_code == 403
                # Bad values: JSON 4xx with a message, and nothing changes.
                for bad in ({"supply_temperature_target": True}, {"supply_temperature_target": "70"},
                            {"supply_temperature_target": 500.0}, {"mode": "turbo"}, {"target": 70},
                            {"heat_pump_setpoint": 70.0}, {}):
                    r = await http.put("/api/v1/control", json=bad, headers=auth(operator))
                    assert 400 <= r.status_code < 500 and r.json()["error"], (bad, r.status_code, r.text)
                assert (await status())["target_source"] == "curve"

                raised = before["supply_temperature_target"] + 3
                r = await http.put("/api/v1/control", json={"supply_temperature_target": raised},
                                   headers=auth(operator))
                assert r.status_code == 200, r.text
                assert r.json()["target_source"] == "override"

                async def followed() -> bool:
                    st = await status()
                    return st["supply_temperature"] is not None and abs(st["supply_temperature"] - raised) < 1.0

                await wait_until(followed, 120, "measured supply within 1 K of the raised target")
                wire_after = await read_setpoint_register(hp_port)
                assert wire_after > wire_before + 1.0, (wire_before, wire_after, before, await status())

                r = await http.get("/api/v1/audit", params={"target": "control.supply_temperature_target"},
                                   headers=auth(viewer))
                assert r.status_code == 200, r.text
                entry = r.json()["entries"][0]
                assert entry["principal"] == "e2e-operator" and entry["outcome"] == "accepted"
                assert entry["applied"] == raised and f"new={raised:g}" in entry["detail"].replace(".0 ", " ")

                # SCADA: an anonymous session may read but not write; the operator user may write.
                scada_url = svc.scada.endpoint if svc.scada else ""
                async with Client(scada_url, timeout=10) as anon:
                    ns = await anon.get_namespace_index("urn:heatrec:scada")
                    mode = anon.get_node(ua.NodeId("control.Mode", ns))
                    assert await mode.read_value() == "auto"
                    with pytest.raises(ua.UaStatusCodeError):
                        await mode.write_value(ua.Variant("manual", ua.VariantType.String))
                assert (await status())["mode"] == "auto"
                # The operator logs in over a signed and encrypted channel from a trusted client (the demo's).
                op = await scada_operator_client(cfg.scada, scada_url, "scada", SCADA_PASSWORD)
                async with op:
                    target = op.get_node(ua.NodeId("control.SupplyTemperatureTarget", ns))
                    with pytest.raises(ua.UaStatusCodeError):  # outside target_min..target_max: refused
                        await target.write_value(ua.Variant(500.0, ua.VariantType.Double))
                    await target.write_value(ua.Variant(math.nan, ua.VariantType.Double))  # clear the override
                st = await status()
                assert st["target_source"] == "curve"
                r = await http.get("/api/v1/audit", params={"limit": 5}, headers=auth(viewer))
                assert [e["principal"] for e in r.json()["entries"][:2]] == ["scada:scada", "scada:scada"]
                assert [e["outcome"] for e in r.json()["entries"][:2]] == ["accepted", "refused"]

                # An override from SCADA ends: ExpiresInS shows the default hold; writing it sets a new end.
                async with op:
                    target = op.get_node(ua.NodeId("control.SupplyTemperatureTarget", ns))
                    expires = op.get_node(ua.NodeId("control.ExpiresInS", ns))
                    await target.write_value(ua.Variant(74.0, ua.VariantType.Double))
                    left = await expires.read_value()
                    assert 28_700 < left <= 28_800, left  # request_expiry_default_s, one shift
                    await expires.write_value(ua.Variant(600.0, ua.VariantType.Double))
                    assert 590 < await expires.read_value() <= 600
                    st = await status()
                    assert st["override"] == 74.0 and st["override_expires_at"] is not None
                    await target.write_value(ua.Variant(math.nan, ua.VariantType.Double))
                    assert math.isnan(await expires.read_value())
