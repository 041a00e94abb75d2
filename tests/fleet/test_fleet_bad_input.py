"""Bad input at the centre: malformed, replayed, out-of-order and forged batches, on the real broker and database.

A site may publish only under its own prefix (the broker's ACL refuses the rest, and nothing is stored); a
malformed batch is counted and stored never; a replayed one counted and stored once; batches out of order
are committed as they come and acknowledged by the contiguous watermark.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import asyncpg
import paho.mqtt.client as paho

from service.config import DatabaseConfig
from service.fleet import wire
from service.model import Quality, Sample
from service.storage.database import connect_pool
from tests.fleet.conftest import FleetBroker
from tests.support import wait_until

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def batch(site: str, seq: int, n: int = 50, *, epoch: int = 77, base: int = 1) -> bytes:
    """A well-formed batch message: n samples of its own, distinct per seq."""
    samples = [Sample(f"hp1.p{i % 5}", float(i), Quality.GOOD, T0 + timedelta(seconds=seq * 1000 + i), T0)
               for i in range(n)]
    return wire.encode_message(site, epoch, seq, base, T0, 0, 0, wire.encode_samples(samples))


def reason_of_publish(broker: FleetBroker, user: str, topic: str, payload: bytes) -> int:
    """The broker's PUBACK reason code for one QoS 1 publish by `user` (MQTT 5)."""
    done, codes = threading.Event(), []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{user}", protocol=paho.MQTTv5)
    c.username_pw_set(user, broker.passwords[user])
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.on_publish = lambda _c, _u, _mid, rc, _p: (codes.append(rc.value), done.set())
    c.connect("127.0.0.1", broker.server.port)
    c.loop_start()
    try:
        assert connected.wait(10)
        c.publish(topic, payload, qos=1)
        assert done.wait(10)
    finally:
        c.disconnect()
        c.loop_stop()
    return codes[0]


async def test_forged_malformed_replayed_and_reordered_batches(fleet_broker: FleetBroker, database: DatabaseConfig,
                                                               start_central: Any) -> None:
    central = start_central("central-bad")
    pool: asyncpg.Pool = await connect_pool(database, max_size=2)
    try:
        await wait_until(lambda: central.sites(), 30, "central API up")
        await wait_until(lambda: _equals(pool.fetchval("SELECT to_regclass('fleet_sites') IS NOT NULL"), True), 30,
                         "central database migrated")
        # Subscribed (this test publishes each message once: one sent before would reach no one).
        await wait_until(lambda: "taking batches from" in central.log.read_text(), 30, "central subscribed")

        async def committed() -> int:
            return int(await pool.fetchval("SELECT count(*) FROM readings WHERE site = 'site-a'") or 0)

        # A site publishing under another's prefix: the broker refuses it.
        assert reason_of_publish(fleet_broker, "site-a", wire.batch_topic("site-b"), batch("site-b", 1)) == 135
        async with aiomqtt.Client("127.0.0.1", fleet_broker.server.port, username="site-a",
                                  password=fleet_broker.passwords["site-a"],
                                  protocol=aiomqtt.ProtocolVersion.V5) as site:
            topic = wire.batch_topic("site-a")
            await site.subscribe(wire.ack_topic("site-a"), qos=1)
            await site.publish(topic, b"not a batch at all", qos=1)
            await site.publish(topic, batch("site-b", 1), qos=1)       # another site's name on a's topic
            await site.publish(topic, batch("site-a", 1), qos=1)
            await wait_until(lambda: _equals(committed(), 50), 30, "batch 1 stored")
            await site.publish(topic, batch("site-a", 1), qos=1)       # replayed
            await site.publish(topic, batch("site-a", 3), qos=1)       # ahead of 2
            await wait_until(lambda: _equals(committed(), 100), 30, "batch 3 stored")
            assert await pool.fetchval("SELECT watermark FROM fleet_sites WHERE site = 'site-a'") == 1
            await site.publish(topic, batch("site-a", 2), qos=1)
            await wait_until(lambda: _equals(pool.fetchval("SELECT watermark FROM fleet_sites "
                                                           "WHERE site = 'site-a'"), 3), 30, "watermark 3")
            # The last acknowledgement says 3: what a restarted site reads back (retained) as its watermark.
            async for message in site.messages:
                doc = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                if doc["watermark"] == 3:
                    break
        assert await committed() == 150
        assert await pool.fetchval("SELECT count(*) FROM readings WHERE site = 'site-b'") == 0
        assert await pool.fetchval("SELECT replayed_batches FROM fleet_sites WHERE site = 'site-a'") == 1
        text = await central.metrics()

        def metric(outcome: str) -> float:
            m = re.search(rf'heatrec_fleet_batches_total{{outcome="{outcome}",site="site-a"}} (\S+)', text)
            return float(m.group(1)) if m else 0.0

        assert (metric("malformed"), metric("replayed"), metric("stored")) == (2.0, 1.0, 3.0)

        async def watermark_shown() -> bool:  # the per-site figures are read from the database every refresh_s
            return 'heatrec_fleet_site_watermark{site="site-a"} 3.0' in await central.metrics()
        await wait_until(watermark_shown, 10, "watermark 3 in /metrics")
        assert (await central.sites())["site-a"]["last_acked_batch"] == 3
        promtool = shutil.which("promtool")
        assert promtool, "promtool missing: run 'make setup' (it installs Debian's prometheus package)"
        proc = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate((await central.metrics()).encode()), 30)
        assert proc.returncode == 0, out.decode()
        # Logged once each, not per batch.
        log = central.log.read_text()
        assert log.count("malformed batch") == 1 and log.count("replayed batch") == 1
    finally:
        await pool.close()


async def _equals(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def test_lost_batches_are_skipped_and_a_new_epoch_stores_nothing_twice(
        fleet_broker: FleetBroker, database: DatabaseConfig, start_central: Any) -> None:
    """A site whose outbox bound deleted batch 2 says so (base 3); a site whose outbox was lost starts a new epoch."""
    central = start_central("central-epochs")
    pool: asyncpg.Pool = await connect_pool(database, max_size=2)
    try:
        await wait_until(lambda: _equals(pool.fetchval("SELECT to_regclass('fleet_sites') IS NOT NULL"), True), 30,
                         "central database migrated")
        # Subscribed (this test publishes each message once: one sent before would reach no one).
        await wait_until(lambda: "taking batches from" in central.log.read_text(), 30, "central subscribed")

        async def site_row() -> tuple[int, int, int]:
            r = await pool.fetchrow("SELECT epoch, watermark, lost_batches FROM fleet_sites WHERE site = 'site-b'")
            return (r["epoch"], r["watermark"], r["lost_batches"]) if r else (0, 0, 0)

        async def stored() -> int:
            return int(await pool.fetchval("SELECT count(*) FROM readings WHERE site = 'site-b'"))

        async with aiomqtt.Client("127.0.0.1", fleet_broker.server.port, username="site-b",
                                  password=fleet_broker.passwords["site-b"],
                                  protocol=aiomqtt.ProtocolVersion.V5) as site:
            topic = wire.batch_topic("site-b")
            await site.publish(topic, batch("site-b", 1), qos=1)
            await wait_until(lambda: _equals(site_row(), (77, 1, 0)), 30, "batch 1")
            await site.publish(topic, batch("site-b", 4, base=3), qos=1)  # 2 was lost at the site; 3 comes later
            await wait_until(lambda: _equals(site_row(), (77, 2, 1)), 30, "batch 2 skipped as lost")
            await site.publish(topic, batch("site-b", 3, base=3), qos=1)
            await wait_until(lambda: _equals(site_row(), (77, 4, 1)), 30, "watermark over 3 and 4")
            assert await stored() == 150
            # The outbox lost: epoch 78 numbers from 1 again, and its batch 1 holds readings already stored.
            await site.publish(topic, batch("site-b", 1, epoch=78), qos=1)
            await wait_until(lambda: _equals(site_row(), (78, 1, 1)), 30, "the new epoch's batch 1")
            await site.publish(topic, batch("site-b", 2, epoch=78), qos=1)  # new readings
            await wait_until(lambda: _equals(site_row(), (78, 2, 1)), 30, "the new epoch's batch 2")
        assert await stored() == 200  # batch 1 of epoch 78 stored nothing twice; batch 2 its own 50
        assert await pool.fetchval("SELECT count(*) - count(DISTINCT (site, point, time)) FROM readings") == 0
    finally:
        await pool.close()
