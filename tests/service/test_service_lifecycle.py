"""Service.run owns what it opens: a start that fails half-way closes everything opened before, in reverse."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from service.app import Service, bind_api_socket
from service.config import HeatrecConfig, load_config
from service.localservers import free_port
from service.localservers.errors import LocalServerError
from service.storage.spool import spool_path


def _scada_on(path: Path, port: int) -> HeatrecConfig:
    """The plant's config with its SCADA server on `port`."""
    text = re.sub(r'(\[scada\]\nendpoint = "opc\.tcp://127\.0\.0\.1:)\d+', rf"\g<1>{port}", path.read_text(),
                  count=1)
    path.write_text(text)
    return load_config(path)


@pytest.mark.integration
async def test_a_scada_server_that_cannot_start_leaves_nothing_open(plant_config_file: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = _scada_on(plant_config_file, port)
    assert cfg.scada is not None and cfg.scada.endpoint.endswith(f":{port}")
    sock = bind_api_socket("127.0.0.1", free_port())
    svc = Service(cfg)
    try:
        with pytest.raises(LocalServerError, match="SCADA OPC UA server"):
            await svc.run(api_socket=sock)
    finally:
        taken.close()
    assert sock.fileno() == -1, "the API socket is closed"
    spool = spool_path(cfg.storage.spool_dir, cfg.database)
    assert spool.is_dir() and list(spool.iterdir()) == [], "the spool was closed (its empty segment removed)"
    assert svc.scada is not None and svc.scada._server is None, "the half-started SCADA server was stopped"
