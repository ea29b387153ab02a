"""The producer flush before every offset commit waits until each buffered record is delivered
(worker/delivering_producer.py), on the real broker: on a busy event loop, where faust's own flush
returns early, and when the broker cannot take the records, where the flush must fail."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import faust
import pytest

from tests.worker_process import prepare_topics, worker_settings
from worker.app import build_app
from worker.delivering_producer import DeliveringApp, DeliveringProducer
from worker.embedded_broker import EmbeddedBroker

pytestmark = pytest.mark.broker

RECORDS = 300


async def undelivered_after_flush(app: faust.App, topic: faust.TopicT) -> int:
    """Buffer RECORDS records, flush while another task blocks the loop 0.15 s at a time (a long
    learning batch does), and count the records not yet acknowledged when the flush returns."""
    await app.producer.start()
    try:
        await topic.maybe_declare()
        futures = [topic.send_soon(key=b"user-%d" % i, value=b"state", partition=i % 2) for i in range(RECORDS)]
        busy = True

        async def hog_the_loop() -> None:
            while busy:
                time.sleep(0.15)
                await asyncio.sleep(0.01)

        hog = asyncio.create_task(hog_the_loop())
        try:
            await app.producer.flush()
            undelivered = sum(not fut.done() for fut in futures)
        finally:
            busy = False
            await hog
        await asyncio.gather(*futures)
        return undelivered
    finally:
        await app.producer.stop()


async def test_the_workers_flush_waits_for_every_record_on_a_busy_loop(broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = worker_settings(broker.bootstrap, tmp_path, tmp_path)
    await prepare_topics(settings)
    app, topics, _ = build_app(settings, web_enabled=False)  # inside the loop: faust binds its queues to it
    assert isinstance(app.producer, DeliveringProducer)
    assert await undelivered_after_flush(app, topics.wakeups) == 0


async def test_fausts_own_flush_returns_before_delivery_on_a_busy_loop(broker: EmbeddedBroker, unique_name: Callable[[str], str]) -> None:
    """Why the fix exists: if this fails, faust fixed its flush and worker/delivering_producer.py can go."""
    app = faust.App(unique_name("app"), broker=f"kafka://{broker.bootstrap}", producer_max_batch_size=1, web_enabled=False, loghandlers=[])
    topic = app.topic(unique_name("t"), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=2)
    assert await undelivered_after_flush(app, topic) > RECORDS // 2


async def test_flush_fails_when_the_broker_does_not_take_the_records(tmp_path: Path) -> None:
    """A frozen broker (its own, so the suite's is not stopped) past the request timeout: the flush
    raises, so faust commits nothing past the records."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as frozen:
        app = DeliveringApp("flush-fails", broker=f"kafka://{frozen.bootstrap}", producer_request_timeout=2.0, web_enabled=False, loghandlers=[])
        topic = app.topic("flush-fails", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=1)

        await app.producer.start()
        try:
            await topic.maybe_declare()
            await (await topic.send(key=b"user", value=b"state"))  # metadata known, connection open
            frozen.pause()
            try:
                for _ in range(5):
                    topic.send_soon(key=b"user", value=b"state")
                with pytest.raises(faust.exceptions.ProducerSendError, match="buffered records were not delivered"):
                    await app.producer.flush()
            finally:
                frozen.resume()
        finally:
            await app.producer.stop()
