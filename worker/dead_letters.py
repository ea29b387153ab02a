"""Every message the worker gives up on goes here: counted, logged and published with its reason."""
from __future__ import annotations

import logging

from faust.types import TopicT

from mmrec.messages import DeadLetter
from worker.metrics import Metrics

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, topic: TopicT, metrics: Metrics, worker: str) -> None:
        self.topic = topic
        self.metrics = metrics
        self.worker = worker

    async def send(self, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str, error: str) -> None:
        letter = DeadLetter.of(
            topic=topic, partition=partition, offset=offset, key=key, value=value, reason=reason, error=error, worker=self.worker
        )
        self.metrics.failed.labels(topic, reason).inc()
        self.metrics.dead_lettered.labels(topic, reason).inc()
        log.warning("dead-letter %s[%d]@%d: %s: %s", topic, partition, offset, reason, error)
        await self.topic.send(key=key, value=letter.to_json())

    async def reject(self, message, reason: str, error: str) -> None:  # noqa: ANN001 - faust Message
        """Dead-letter a consumed faust message."""
        await self.send(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            reason=reason,
            error=error,
        )
