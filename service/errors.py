"""heatrec's exception tree: one root, a subtree per layer, each error knowing what it means to an API client.

Library errors are translated once, where they arise (asyncpg's in service/storage, pymodbus' and asyncua's in
drivers/); the API maps the tree to JSON in one handler (status from `http_status`), the CLI catches the root and
prints its message as one line. A bare Exception escaping is a bug, never a user's error.
"""

from __future__ import annotations


class HeatrecError(Exception):
    """The root; the message says what happened and what to do."""

    http_status = 500


class InvalidRequest(HeatrecError):
    """The request itself is wrong (a value, a combination): the client must change it."""

    http_status = 422


class NotFound(HeatrecError, LookupError):
    """The request names something that does not exist."""

    http_status = 404


class Conflict(HeatrecError):
    """A valid request that does not apply in the current state."""

    http_status = 409


class StorageError(HeatrecError):
    """The database could not do what was asked."""

    http_status = 503


class StorageUnavailable(StorageError):
    """The database is not reachable or failed: try again later (API: 503 with Retry-After)."""

    retry_after_s = 5


class StorageValueError(StorageError, InvalidRequest):
    """A value the database cannot hold or compute with (out of range): the request's fault (API: 422)."""

    http_status = 422
