"""One exception tree: every layer's errors grow from HeatrecError and carry what they mean to an API client."""

from __future__ import annotations

import pytest

from drivers.errors import DriverConnectionError, DriverError
from service.accounting.engine import AccountingError
from service.accounting.rules import RuleError
from service.accounting.store import SettlementConflict
from service.alarms.engine import AlarmError, UnknownAlarm
from service.alarms.store import UnknownCursor
from service.config import ConfigError
from service.control.model import ControlRequestError
from service.errors import HeatrecError, StorageUnavailable, StorageValueError
from service.localservers.errors import LocalServerError
from service.storage.database import DatabaseUnavailable
from service.storage.history import HistoryError, UnknownPoint
from simulators.errors import SimulatorError


@pytest.mark.parametrize(("error", "status"), [
    (ConfigError("x"), 500), (DatabaseUnavailable("x"), 503), (StorageUnavailable("x"), 503),
    (StorageValueError("x"), 422), (HistoryError("x"), 422), (UnknownPoint("x"), 404),
    (UnknownCursor("x"), 404), (AlarmError("x"), 409), (UnknownAlarm("x"), 404),
    (AccountingError("x"), 422), (RuleError("x"), 409), (SettlementConflict("x"), 409),
    (ControlRequestError("x"), 422), (ControlRequestError("x", conflict=True), 409),
    (LocalServerError("x"), 500), (SimulatorError("x"), 500), (DriverConnectionError("x"), 500),
])
def test_every_layer_error_is_a_heatrec_error_with_its_http_status(error: HeatrecError, status: int) -> None:
    assert isinstance(error, HeatrecError) and error.http_status == status
    assert issubclass(DriverConnectionError, DriverError)


async def test_asyncpg_errors_are_translated_in_storage() -> None:
    import asyncpg

    from service.storage.database import translated

    with pytest.raises(StorageValueError, match="out of range"):
        async with translated():
            raise asyncpg.DataError("value out of range for type integer")
    with pytest.raises(StorageUnavailable) as err:
        async with translated():
            raise ConnectionResetError("peer went away")
    assert err.value.retry_after_s >= 1
    with pytest.raises(UnknownPoint):  # heatrec's own errors pass through untouched
        async with translated():
            raise UnknownPoint("no point 'x'")
