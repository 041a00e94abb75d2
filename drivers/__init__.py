"""Protocol drivers (OPC UA, Modbus TCP, MQTT) driven by declarative point maps.

`create_driver` is imported lazily so that `drivers.codec` and friends do not pull in every
protocol library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers.factory import create_driver

__all__ = ["create_driver"]


def __getattr__(name: str) -> Any:
    if name == "create_driver":
        from drivers.factory import create_driver

        return create_driver
    raise AttributeError(f"module 'drivers' has no attribute {name!r}")
