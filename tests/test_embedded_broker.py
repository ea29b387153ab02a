"""The embedded Tansu broker and topic admin, against real Kafka clients (aiokafka and librdkafka)."""
from __future__ import annotations

import asyncio
import os
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer

from worker import kafka_admin
from worker.embedded_broker import EmbeddedBroker
from worker.kafka_admin import TopicMismatchError, TopicSpec

pytestmark = pytest.mark.broker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


def test_start_stop_leaves_no_process(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        pid = broker.pid
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) != 9092
        assert _alive(pid) and broker.ping()
    assert not _alive(pid)
    assert "listening on: tcp://127.0.0.1:" in (tmp_path / "tansu.log").read_text()

    # An exception inside the block still stops it, and so does stopping a paused broker.
    broker = EmbeddedBroker()
    with pytest.raises(RuntimeError, match="boom"):
        with broker:
            pid = broker.pid
            broker.pause()
            raise RuntimeError("boom")
    assert not _alive(pid) and not broker.running


def test_pause_stalls_and_resume_recovers(broker):
    with broker.paused():
        assert not broker.ping(timeout=0.3)
    assert broker.ping(timeout=2.0)


async def test_aiokafka_round_trip_in_consumer_group(broker, unique_name, group_timings):
    topic = unique_name("events")
    await kafka_admin.ensure_topics(broker.bootstrap, [TopicSpec(topic, partitions=2)])
    sent = [(f"user-{i % 5}".encode(), f"v{i}".encode()) for i in range(20)]
    await _produce(broker.bootstrap, topic, sent)

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=unique_name("group"),
                                auto_offset_reset="earliest", enable_auto_commit=False, **group_timings)
    await consumer.start()
    try:
        received = []
        async with asyncio.timeout(15):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                received += [(r.key, r.value) for records in batch.values() for r in records]
        await consumer.commit()
        assert len(consumer.assignment()) == 2
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(sent)
    # Same key, same partition, in order.
    per_key = {}
    for key, value in received:
        per_key.setdefault(key, []).append(value)
    for key, values in per_key.items():
        assert values == [v for k, v in sent if k == key]


def test_confluent_kafka_consumer_reads_aiokafka_records(broker, unique_name):
    topic = unique_name("events")
    sent = [(f"k{i}".encode(), f"value-{i}".encode()) for i in range(10)]

    async def setup() -> None:
        await kafka_admin.ensure_topics(broker.bootstrap, [TopicSpec(topic, partitions=2)])
        await _produce(broker.bootstrap, topic, sent)

    asyncio.run(setup())
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": unique_name("group"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 300,
    })
    received = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 15
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)


async def test_kafka_admin_creates_topics_idempotently(broker, unique_name):
    a, b, missing = unique_name("a"), unique_name("b"), unique_name("missing")
    specs = [TopicSpec(a, partitions=4), TopicSpec(b, partitions=1, configs={"cleanup.policy": "compact"})]

    assert await kafka_admin.ensure_topics(broker.bootstrap, specs) == {a: True, b: True}
    assert await kafka_admin.ensure_topics(broker.bootstrap, specs) == {a: False, b: False}
    assert await kafka_admin.partition_counts(broker.bootstrap, [a, b, missing]) == {a: 4, b: 1}
    assert {a, b} <= set(await kafka_admin.list_topics(broker.bootstrap))

    described = {t["topic"]: t for t in await kafka_admin.describe_topics(broker.bootstrap, [a, missing])}
    assert sorted(p["partition"] for p in described[a]["partitions"]) == [0, 1, 2, 3]
    assert described[missing]["error_code"] == 3  # unknown topic, and describing did not create it
    assert missing not in await kafka_admin.list_topics(broker.bootstrap)

    with pytest.raises(TopicMismatchError):
        await kafka_admin.ensure_topics(broker.bootstrap, [TopicSpec(a, partitions=2)])
