"""The `protocol = "mbus"` device and point models: what a plant file may say, and the errors it gets."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import ConfigError, parse_config


def device(**keys: Any) -> dict[str, Any]:
    point = {"id": "energy", "record": "energy", "unit": "GJ", "kind": "counter"} | keys.pop("point", {})
    return {"id": "meter1", "protocol": "mbus", "endpoint": "10.0.0.5:10001", "primary_address": 1,
            "points": [point]} | keys


def test_a_gateway_meter_and_a_serial_meter() -> None:
    cfg = parse_config({"devices": [device(), device(id="meter2", endpoint="/dev/ttyUSB0", primary_address=None,
                                                     secondary_address="7123****", parity="none")]})
    gateway, serial = cfg.devices
    assert gateway.protocol == "mbus" and serial.protocol == "mbus"
    assert (gateway.serial_port, gateway.baudrate, gateway.parity) == (None, 2400, "even")
    assert (serial.serial_port, serial.address_text) == ("/dev/ttyUSB0", "secondary 7123****")


@pytest.mark.parametrize(("keys", "message"), [
    ({"secondary_address": "71234567"}, "primary_address or its secondary_address"),
    ({"primary_address": None}, "primary_address or its secondary_address"),
    ({"primary_address": 251}, "devices[0].mbus.primary_address"),
    ({"secondary_address": "7123456", "primary_address": None}, "secondary_address"),
    ({"endpoint": "gateway"}, "nor a serial device"),
    ({"point": {"unit": "degC"}}, "unit 'degC' does not fit record 'energy'"),
    ({"point": {"record": "flow_temperature", "unit": "K"}}, "one of: 'degC'"),
    ({"point": {"writable": True, "min": 0.0, "max": 1.0}}, "read-only"),
    ({"point": {"record": "enthalpy"}}, "devices[0].mbus.points[0].record"),
    ({"baudrate": 2401}, "baudrate"),
])
def test_mistakes_are_named(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^plant\.toml: ") as err:
        parse_config({"devices": [device(**keys)]}, "plant.toml")
    assert message in str(err.value)
