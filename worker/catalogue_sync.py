"""Every worker's copy of the shared catalogue: reads all partitions of the features topic (no
consumer group: each worker needs every item) into its local feature store and in-memory catalogue.

The positions read are committed in the same SQLite transaction as the items, so a restart resumes
exactly where the store left off; the topic is the source of truth, the store a durable cache.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from mmrec.extraction import feature_shapes
from mmrec.features import ItemFeatures
from mmrec.item_codec import CorruptRecord, decode_item
from worker.dead_letters import DeadLetters
from worker.kafka_client import client_kwargs
from worker.runtime import Runtime

log = logging.getLogger(__name__)

NewMediaListener = Callable[[list[str]], Awaitable[None]]


class CatalogueSync:
    def __init__(self, runtime: Runtime, dead: DeadLetters, listeners: Sequence[NewMediaListener]) -> None:
        self.runtime = runtime
        self.dead = dead
        self.listeners = list(listeners)
        self.topic = runtime.settings.topic_features
        self.shapes = feature_shapes(runtime.settings)  # what records of our feature version must hold
        self.caught_up = False  # read up to the end offsets seen at start (or a poll came back empty)
        self.ready = asyncio.Event()  # set with caught_up: the learning agents wait for it

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.runtime.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            ends = await self._assign(consumer)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=512)
                records = [record for batch in batches.values() for record in batch]
                if records:
                    await self.ingest(records)
                if not self.caught_up and (not records or await self._reached(consumer, ends)):
                    self.mark_caught_up()
        finally:
            await consumer.stop()

    def mark_caught_up(self) -> None:
        self.caught_up = True
        self.ready.set()
        log.info("catalogue sync: caught up with %d items", len(self.runtime.catalogue))

    async def _assign(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Assigns every partition at its checkpoint; returns the end offsets at this moment."""
        await consumer.topics()  # loads metadata without creating anything
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise RuntimeError(f"features topic {self.topic!r} does not exist (create the topics first)")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        checkpoints = await self.runtime.on_store_thread(self.runtime.store.checkpoints)
        for tp in tps:
            position = checkpoints.get(f"{tp.topic}/{tp.partition}")
            if position is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, position)
        log.info("catalogue sync: %d items held, reading %s from %s", len(self.runtime.catalogue), self.topic, checkpoints or "the start")
        return await consumer.end_offsets(tps)

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return False
        return True

    async def ingest(self, records: list[ConsumerRecord]) -> None:
        """Store a batch of feature records, add ours to the catalogue, tell the listeners."""
        ours, rejected = await self.runtime.on_store_thread(self._store, records)
        new_ids = self._add(ours)
        for record, reason, error in rejected:
            await self.dead.send(
                topic=record.topic, partition=record.partition, offset=record.offset, key=record.key, value=record.value, reason=reason, error=error
            )
        self.runtime.metrics.consumed.labels(self.topic).inc(len(records))
        self.runtime.metrics.items.set(len(self.runtime.catalogue))
        if new_ids:
            for listener in self.listeners:
                await listener(new_ids)

    def _store(self, records: list[ConsumerRecord]) -> tuple[list[ItemFeatures], list[tuple[ConsumerRecord, str, str]]]:
        """On the store thread: decode and store with checkpoints; the items of our feature version,
        and the records rejected with their reasons."""
        items, rejected = [], []
        for record in records:
            try:
                item = decode_item(record.value or b"")
            except CorruptRecord as exc:
                rejected.append((record, "corrupt_features", str(exc)))
                continue
            if record.key != item.media_id.encode():
                rejected.append((record, "key_mismatch", f"key {record.key!r} is not the media id {item.media_id!r}"))
                continue
            shapes = tuple(tuple(m.shape) for m in item.maps)
            if item.version == self.runtime.feature_version and shapes != self.shapes:
                rejected.append((record, "feature_shape", f"layer shapes {shapes} are not {self.shapes} of feature version {item.version}"))
                continue
            items.append(item)
        checkpoints = {f"{r.topic}/{r.partition}": r.offset + 1 for r in records}  # records are in order per partition
        self.runtime.store.put_many(items, checkpoints)
        ours = [item for item in items if item.version == self.runtime.feature_version]
        if len(ours) < len(items):
            log.info("stored %d items of another feature version (not scored here)", len(items) - len(ours))
        return ours, rejected

    def _add(self, items: list[ItemFeatures]) -> list[str]:
        """On the event loop's thread, like the online steps that read the catalogue: add the items;
        the ids that are new to it."""
        new_ids = list(dict.fromkeys(item.media_id for item in items if item.media_id not in self.runtime.catalogue))
        self.runtime.catalogue.add(items)
        self.runtime.apply_item_bias(new_ids)
        return new_ids
