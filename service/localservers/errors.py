"""Errors of the local server managers."""

from service.errors import HeatrecError


class LocalServerError(HeatrecError):
    """A local server could not be set up or started; the message says what to do."""
