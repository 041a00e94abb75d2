"""The edge node's MQTT connection: the drivers' paho link with the NDEATH will and a clean session.

One link is one MQTT session (Sparkplug ties a session to its bdSeq, carried by the will), so a new link is
made for every connection. Publishing is paho's thread-safe `publish` from the event loop; what arrives
(STATE, NCMD, DCMD) is handed to the loop as (topic, payload) in arrival order.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from drivers.mqtt_link import PahoLink

SparkplugLink = PahoLink[tuple[str, bytes]]


def sparkplug_link(*, host: str, port: int, client_id: str, username: str | None, password: str | None,
                   tls: ssl.SSLContext | None, keepalive: int, timeout_s: float, will: tuple[str, bytes],
                   on_message: Callable[[str, bytes], None]) -> SparkplugLink:
    """A link for one session; call `open()` on it. Sparkplug 3.0: MQTT 3.1.1, clean session, NDEATH as will."""

    def deliver(batch: list[tuple[str, bytes]]) -> None:
        for topic, payload in batch:
            on_message(topic, payload)

    return PahoLink(name="sparkplug", host=host, port=port, client_id=client_id, persistent=False,
                    username=username, password=password, tls=tls, keepalive=keepalive, timeout_s=timeout_s,
                    decode=lambda topic, payload: (topic, bytes(payload)), deliver=deliver, will=will,
                    publisher=True)
