"""Private PostgreSQL + TimescaleDB and Mosquitto servers that heatrec starts itself (demo, tests)."""

from service.localservers.errors import LocalServerError
from service.localservers.mosquitto import MosquittoServer
from service.localservers.ports import check_ports_free, free_port
from service.localservers.postgres import PostgresCluster

__all__ = ["LocalServerError", "MosquittoServer", "PostgresCluster", "check_ports_free", "free_port"]
