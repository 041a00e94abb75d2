"""The drivers' exception tree: library errors are translated into these at the boundary."""

from __future__ import annotations

from service.errors import HeatrecError


class DriverError(HeatrecError):
    """Root of every error a driver raises; callers never see a protocol library's exceptions."""


class DriverConnectionError(DriverError):
    """The connection could not be made, was refused, or was lost."""


class DriverTimeout(DriverError):
    """The device did not answer within the device's `timeout_s`."""


class DeviceException(DriverError):
    """The device answered, but with an error for this request (Modbus exception, OPC UA Bad status)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class WriteRejected(DriverError):
    """A write was refused: outside the point's envelope, not writable, or not representable."""


class DeviceRefused(WriteRejected):
    """The device itself refused a write that was sent (an exception response, a bad status code)."""


class CodecError(DriverError, ValueError):
    """A value cannot be converted to or from its wire representation."""


class MalformedPayload(DriverError, ValueError):
    """A message payload could not be turned into a value (not JSON, path missing, not a number)."""
