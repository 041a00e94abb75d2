"""In-process sample bus: drivers publish, consumers subscribe with bounded queues."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from service.model import Sample

log = logging.getLogger(__name__)


class SampleSink(Protocol):
    """Where a driver hands its samples; publishing never blocks the driver."""

    def publish(self, sample: Sample) -> None:
        """Accept one sample."""


class Subscription:
    """One consumer's bounded queue; overflow drops the sample and counts it."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._warned = False

    def offer(self, sample: Sample) -> None:
        """Enqueue without waiting; a full queue is a counted drop, logged once."""
        try:
            self.queue.put_nowait(sample)
            self._warned = False
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._warned:
                log.warning("subscriber %s is not keeping up: dropping samples (queue of %d full)",
                            self.name, self.queue.maxsize)
                self._warned = True

    async def __aiter__(self) -> AsyncIterator[Sample]:
        while True:
            yield await self.queue.get()

    def drain(self, limit: int) -> list[Sample]:
        """Take up to `limit` queued samples without waiting."""
        out: list[Sample] = []
        q = self.queue
        while len(out) < limit and not q.empty():
            out.append(q.get_nowait())
        return out


class SampleBus:
    """Fan-out of samples to every subscriber; the latest sample per point is kept too."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.latest: dict[str, Sample] = {}
        self.published = 0

    def subscribe(self, name: str, maxsize: int = 100_000) -> Subscription:
        """Register a consumer; it receives every sample published from now on."""
        sub = Subscription(name, maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to a consumer."""
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The current subscribers (for metrics)."""
        return tuple(self._subs)

    def publish(self, sample: Sample) -> None:
        """Deliver a sample to every subscriber and remember it as the point's latest."""
        self.published += 1
        self.latest[sample.point] = sample
        for sub in self._subs:
            sub.offer(sample)
