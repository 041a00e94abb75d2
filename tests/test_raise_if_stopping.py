"""A reconnect loop whose client turns a cancellation into its own error on the way out still stops."""

from __future__ import annotations

import asyncio

from service.tasks import raise_if_stopping


class ClientError(Exception):
    """Stands for aiomqtt.MqttError."""


class Client:
    """Like aiomqtt's client with the broker gone: leaving the block on a cancel times out with its own error."""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        raise ClientError("Operation timed out")


async def reconnect_loop(attempts: list[int], *, guarded: bool) -> None:
    while len(attempts) < 50:  # bounded, so the unguarded case ends on its own
        attempts.append(1)
        try:
            async with Client():
                await asyncio.sleep(3600)
        except ClientError as err:
            if guarded:
                raise_if_stopping(err)
        await asyncio.sleep(0)


async def test_the_guarded_loop_stops_on_cancel() -> None:
    attempts: list[int] = []
    task = asyncio.create_task(reconnect_loop(attempts, guarded=True))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert len(attempts) == 1


async def test_without_the_guard_the_cancel_is_lost_and_the_loop_reconnects() -> None:
    attempts: list[int] = []
    task = asyncio.create_task(reconnect_loop(attempts, guarded=False))
    await asyncio.sleep(0)
    task.cancel()
    for _ in range(100):
        await asyncio.sleep(0)
        if len(attempts) > 1:
            break
    assert not task.done() and len(attempts) > 1  # the bug raise_if_stopping exists for
    while not task.done():  # clean up: a cancel that lands outside the client's block ends it
        task.cancel()
        await asyncio.sleep(0)


def test_outside_a_cancellation_it_does_nothing() -> None:
    async def main() -> None:
        raise_if_stopping(ClientError("x"))

    asyncio.run(main())
