"""faust 0.15.3 fix: the producer flush that precedes every offset commit waits for delivery.

faust commits a source offset right after `producer.flush()`, counting on it to have delivered every
record sent while the events up to that offset were handled: the tables' changelog writes and our
`send_soon` records (worker/user_updates.py). Its ProducerBuffer.flush gives up as soon as 0.1 s pass
without one buffered record being handed to aiokafka, whatever is left in the buffer. On a busy
event loop (a learning batch holds it longer than that) the flush returns early and the offsets are
committed past changelog records that are still in the buffer. Measured here: with the loop blocked
0.15 s at a time, faust's flush returned after 0.15 s with 299 of 300 records undelivered. After a
SIGKILL at such a moment the restart restores the users' older changelog values over the newer local
ones and resumes after the committed offset: their events in between are lost for good (measured: 6
users of 300 behind the replay in tests/test_crash_safety.py, SIGKILL scenario, beside a busy core).

DeliveringProducer.flush waits for every record given to send_soon before the call until the broker
has acknowledged it, and raises (so nothing is committed) if one was not delivered.
"""
from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.exceptions import ProducerSendError
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer
from faust.types import FutureMessage

if faust.__version__ != "0.15.3":  # pragma: no cover - guards an upgrade
    raise ImportError(f"worker/delivering_producer.py patches faust 0.15.3; re-check it against faust {faust.__version__}")


class DeliveringProducer(AIOKafkaProducer):
    """faust's aiokafka producer whose flush() returns only once every record sent before it is delivered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._undelivered: set[FutureMessage] = set()

    def send_soon(self, fut: FutureMessage) -> None:
        self._undelivered.add(fut)
        fut.add_done_callback(self._undelivered.discard)
        super().send_soon(fut)

    async def flush(self) -> None:
        waiting = list(self._undelivered)
        await super().flush()
        if waiting:
            await asyncio.wait(waiting)
        failed = [fut for fut in waiting if fut.cancelled() or fut.exception() is not None]
        if failed:
            first = "cancelled" if failed[0].cancelled() else repr(failed[0].exception())
            raise ProducerSendError(f"{len(failed)} of {len(waiting)} buffered records were not delivered (first: {first})")


class DeliveringApp(faust.App):
    """A faust App whose producer is a DeliveringProducer (its brokers must be kafka:// URLs)."""

    def _new_producer(self) -> DeliveringProducer:
        return DeliveringProducer(self.transport, loop=self.loop, beacon=self.beacon)
