"""Errors of the local server managers."""


class LocalServerError(Exception):
    """A local server could not be set up or started; the message says what to do."""
